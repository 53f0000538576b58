//! Clients that attack the region they were given, or the regions of others: the engine and
//! the other clients go on.

use integration_tests::{attach_request, Engine};
use rdma_client::{AttachOptions, Client};
use rdma_ipc::control::{self, Request, Response};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// Attaches below the client library and keeps the region's memfd.
fn attach_keeping_the_fd(engine: &Engine) -> (OwnedFd, OwnedFd, u64) {
    let socket = control::connect_to(&engine.socket).unwrap();
    control::send(&socket, &Request::Attach(attach_request(1, 64, 1 << 20)), &[]).unwrap();
    let (response, mut fds) = control::receive::<Response>(&socket).unwrap();
    let Response::Attached(reply) = response else { panic!("refused: {response:?}") };
    (socket, fds.remove(0), reply.region_size_bytes)
}

/// A client that truncates its region's memfd used to kill the engine with SIGBUS on its
/// next access (exit status 135). The size is sealed now: the truncate fails, and the engine
/// serves everyone as before.
#[test]
fn a_client_cannot_resize_its_region_under_the_engine() {
    let engine = Engine::start(&[]);
    let (_socket, memfd, size) = attach_keeping_the_fd(&engine);
    for new_size in [0, 4096, size as i64 * 2] {
        let error = nix::unistd::ftruncate(&memfd, new_size).expect_err("the region's size is sealed");
        assert_eq!(error, nix::errno::Errno::EPERM, "truncate to {new_size}");
    }
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    assert_eq!(seals & libc::F_SEAL_SEAL, libc::F_SEAL_SEAL, "seals can be lifted: {seals:#x}");
    let other = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = other.take_queue_pair(0).unwrap();
    for _ in 0..3 {
        queue_pair.ping(Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(engine.region_count(), 2);
}

/// `ListRegions` hands out descriptors that can be mapped for reading only.
#[test]
fn listed_regions_cannot_be_written() {
    let engine = Engine::start(&[]);
    let victim = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let size = victim.description().region_size_bytes;
    let connection = control::connect_to(&engine.socket).unwrap();
    control::send(&connection, &Request::ListRegions, &[]).unwrap();
    let (response, fds) = control::receive::<Response>(&connection).unwrap();
    assert!(matches!(response, Response::Regions { ref regions, .. } if regions.len() == 1), "{response:?}");
    let fd = &fds[0];
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    let length = std::num::NonZeroUsize::new(size as usize).unwrap();
    // SAFETY: a fresh mapping request; it must fail, and if it did not it is unmapped below.
    let writable = unsafe {
        nix::sys::mman::mmap(
            None,
            length,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            fd,
            0,
        )
    };
    match writable {
        Err(error) => assert_eq!(error, nix::errno::Errno::EACCES),
        Ok(address) => {
            // SAFETY: the mapping just made, of that length.
            let _ = unsafe { nix::sys::mman::munmap(address, size as usize) };
            panic!("a listed region could be mapped writable");
        }
    }
    assert!(nix::unistd::ftruncate(fd, 0).is_err(), "a listed region could be truncated");
    victim.check_alive().unwrap();
}
