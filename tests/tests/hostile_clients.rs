//! Clients that attack the region they were given, or the regions of others: the engine and
//! the other clients go on.

use integration_tests::hostile::attach_unconfirmed;
use integration_tests::{attach_request, Engine};
use rdma_client::{AttachOptions, Client};
use rdma_ipc::control::{self, Request, Response};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// A client that truncates its region's memfd used to kill the engine with SIGBUS on its
/// next access (exit status 135). The size is sealed now: the truncate fails, and the engine
/// serves everyone as before.
#[test]
fn a_client_cannot_resize_its_region_under_the_engine() {
    let engine = Engine::start(&[]);
    let attached = attach_unconfirmed(&engine.socket, attach_request(1, 64, 1 << 20));
    let (memfd, size) = (&attached.memfd, attached.size_bytes as i64);
    // The size seals are there before the client could use them, whatever the backing.
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    let size_seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    assert_eq!(seals & size_seals, size_seals, "size seals missing before the client mapped: {seals:#x}");
    // Sizes the backing itself accepts (multiples of its page size: 2 MiB covers hugetlbfs,
    // which refuses other sizes with EINVAL before it looks at the seals), so only the seal
    // can refuse them.
    const HUGE_PAGE: i64 = 2 << 20;
    assert_eq!(size % HUGE_PAGE, 0, "regions are whole huge pages");
    for new_size in [0, size - HUGE_PAGE, size + HUGE_PAGE, size * 2] {
        let error = nix::unistd::ftruncate(memfd, new_size).expect_err("the region's size is sealed");
        assert_eq!(error, nix::errno::Errno::EPERM, "truncate to {new_size}");
    }
    control::confirm_mapped(&attached.socket, attached.region_id).unwrap();
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
    let wanted = libc::F_SEAL_SEAL | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    assert_eq!(seals & wanted, wanted, "seals missing or liftable once served: {seals:#x}");
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

/// Once a region is served, its client can neither punch holes in it (through its fd or its
/// mapping) nor map it writable again: the pages the engine uses stay the engine's.
/// (The hugetlb case, where a hole means SIGBUS for the engine, is in `hugepages.rs`.)
#[test]
fn a_served_region_cannot_lose_its_pages() {
    use nix::fcntl::{fallocate, FallocateFlags};
    let engine = Engine::start(&[]);
    let attached = attach_unconfirmed(&engine.socket, attach_request(1, 64, 1 << 20));
    control::confirm_mapped(&attached.socket, attached.region_id).unwrap();
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let tail = attached.size_bytes as i64 - 4096;
    assert_eq!(fallocate(attached.memfd.as_raw_fd(), punch, tail, 4096), Err(nix::errno::Errno::EPERM));
    // SAFETY: the last page of the client's own mapping; MADV_REMOVE must fail.
    let removed = unsafe {
        nix::sys::mman::madvise(
            std::ptr::NonNull::new(attached.mapping.base().as_ptr().add(tail as usize).cast()).unwrap(),
            4096,
            nix::sys::mman::MmapAdvise::MADV_REMOVE,
        )
    };
    assert_eq!(removed, Err(nix::errno::Errno::EPERM));
    let again = rdma_ipc::mapping::Mapping::new(
        &attached.memfd,
        attached.size_bytes,
        rdma_ipc::mapping::Access::ReadWrite,
        false,
    );
    assert!(again.is_err(), "a second writable mapping was allowed");
    let other = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    other.take_queue_pair(0).unwrap().ping(Duration::from_secs(5)).unwrap();
    assert_eq!(engine.region_count(), 2);
}

/// A client that takes its region and never says it mapped it is dropped, and its region
/// with it; it is never served nor listed meanwhile, and others attach as usual.
#[test]
fn a_client_that_never_confirms_its_mapping_is_dropped() {
    let engine = Engine::start(&[]);
    let silent = attach_unconfirmed(&engine.socket, attach_request(1, 64, 1 << 20));
    let other = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    assert_eq!(engine.region_count(), 1, "an unconfirmed region is listed");
    assert!(engine.wait_for_log("did not confirm its mapping", Duration::from_secs(20)), "{}", engine.log_text());
    assert!(matches!(control::receive::<Response>(&silent.socket), Err(control::ControlError::Closed)));
    other.take_queue_pair(0).unwrap().ping(Duration::from_secs(5)).unwrap();
}

/// A confirmation for a region this connection was not given is refused, and the connection
/// closed; the region it named (another client's) is untouched.
#[test]
fn a_confirmation_for_another_region_is_refused() {
    let engine = Engine::start(&[]);
    let victim = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let connection = control::connect_to(&engine.socket).unwrap();
    let error = control::confirm_mapped(&connection, victim.description().region_id).unwrap_err();
    assert!(error.to_string().contains("does not await its mapping"), "{error}");
    victim.take_queue_pair(0).unwrap().ping(Duration::from_secs(5)).unwrap();
    assert_eq!(engine.region_count(), 1);
}
