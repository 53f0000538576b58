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

/// A client that asks for the region list again and again and never reads the answers used
/// to block the control thread's replies to everyone (another client's attach took 4.2 s,
/// or forever while the hog held on). Replies do not wait now: the hog is dropped with a log
/// line and the others attach as before.
#[test]
fn a_client_that_does_not_read_its_replies_is_dropped() {
    let engine = Engine::start(&[]);
    let _victims: Vec<Client> =
        (0..4).map(|_| Client::attach(&engine.socket, &AttachOptions::default()).unwrap()).collect();
    let hog = control::connect_to(&engine.socket).unwrap();
    let mut sent = 0;
    // Bounded: 20,000 attempts. The engine drops the hog long before; its sends then fail.
    // (While the engine is busy its queue can be full: the hog waits a moment then.)
    for _ in 0..20_000 {
        match control::send_without_blocking(&hog, &Request::ListRegions, &[]) {
            Ok(()) => sent += 1,
            Err(control::ControlError::Io { source: nix::errno::Errno::EAGAIN, .. }) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => break,
        }
    }
    assert!(engine.wait_for_log("does not read its control replies", Duration::from_secs(20)), "{}", engine.log_text());
    let (attached, receiver) = std::sync::mpsc::channel();
    let socket = engine.socket.clone();
    std::thread::spawn(move || {
        let _ = attached.send(Client::attach(&socket, &AttachOptions::default()).map(|_| ()));
    });
    let result =
        receiver.recv_timeout(Duration::from_secs(20)).expect("attach hung behind a client that does not read");
    result.unwrap();
    assert!(sent > 0);
    drop(hog);
}
