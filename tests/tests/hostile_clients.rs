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
    let wanted = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    assert_eq!(seals & wanted, wanted, "seals missing or liftable once served: {seals:#x}");
    // Not sealed against writing: a new engine must be able to map it to adopt it.
    assert_eq!(seals & libc::F_SEAL_FUTURE_WRITE, 0, "{seals:#x}");
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

/// A client that punches holes in its served region (normal pages) hurts only itself: the
/// engine reads zeros where its pages were, and serves the others. (Huge pages, where a hole
/// can mean SIGBUS for the engine, are in `hugepages.rs`.)
#[test]
fn a_client_that_punches_its_region_hurts_only_itself() {
    use nix::fcntl::{fallocate, FallocateFlags};
    let engine = Engine::start(&["--hugepages", "off"]);
    let attached = attach_unconfirmed(&engine.socket, attach_request(1, 64, 1 << 20));
    control::confirm_mapped(&attached.socket, attached.region_id).unwrap();
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(attached.memfd.as_raw_fd(), punch, 0, attached.size_bytes as i64).unwrap();
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

/// Sends `Adopt` with `fds`; the engine's refusal reason, or `None` when it took the region.
fn present(engine: &Engine, fds: &[std::os::fd::RawFd]) -> (std::os::fd::OwnedFd, Option<String>) {
    let connection = control::connect_to(&engine.socket).unwrap();
    let request = Request::Adopt(control::AdoptRequest {
        layout_version: shm_layout::LAYOUT_VERSION,
        client_name: "hostile".into(),
    });
    control::send(&connection, &request, fds).unwrap();
    let (response, _) = control::receive::<Response>(&connection).unwrap();
    let refusal = match response {
        Response::Refused { reason } => Some(reason),
        Response::Attached(_) => None,
        other => panic!("unexpected answer {other:?}"),
    };
    (connection, refusal)
}

/// A memfd of `size_bytes` holding `header` at its start, with `seals` added.
fn memfd_region(size_bytes: u64, header: &[u8], seals: libc::c_int) -> std::os::fd::OwnedFd {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let memfd =
        memfd_create(c"hostile-region", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&memfd, size_bytes as i64).unwrap();
    nix::sys::uio::pwrite(&memfd, header, 0).unwrap();
    // SAFETY: F_ADD_SEALS on a descriptor we own.
    assert_eq!(unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
    memfd
}

/// A region presented at re-attach is hostile input: a file that is no memfd, a memfd whose
/// size is not sealed or that is sealed against writing, of the wrong size, with a garbage
/// header or another layout version, another client's region, or no descriptor at all: each
/// is refused with one sentence (logged once), and the engine serves the others, the victim
/// whose region was presented included. A region a client made itself, sealed and described
/// as the engine would, is taken like any other.
#[test]
fn a_presented_region_is_checked_as_hostile_input() {
    use shm_layout::geometry::Geometry;
    use shm_layout::header::RegionDescription;
    use zerocopy::IntoBytes;
    let engine = Engine::start(&["--hugepages", "off"]);
    let victim = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut victim_queue_pair = victim.take_queue_pair(0).unwrap();
    let geometry = Geometry::new(1, 64, 1 << 20).unwrap();
    let size = geometry.region_size_bytes;
    let valid = RegionDescription::new(&geometry);
    let sealed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    let plain_file = tempfile::tempfile().unwrap();
    plain_file.set_len(size).unwrap();
    let other_version = RegionDescription { layout_version: shm_layout::LAYOUT_VERSION + 1, ..valid };
    let victim_memfd = {
        // The victim's region as another process could get hold of it (same uid: through /proc).
        let path = format!("/proc/{}/fd", std::process::id());
        let found = std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .find(|entry| {
                std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.to_string_lossy().contains("memfd:rdma-region"))
            })
            .expect("the victim's memfd");
        std::fs::OpenOptions::new().read(true).write(true).open(found.path()).unwrap()
    };
    let cases: Vec<(&str, Vec<std::os::fd::OwnedFd>, &str)> = vec![
        ("a plain file", vec![plain_file.into()], "not a"),
        ("an unsealed memfd", vec![memfd_region(size, valid.as_bytes(), 0)], "size is not sealed"),
        (
            "a memfd sealed against writing",
            vec![memfd_region(size, valid.as_bytes(), sealed | libc::F_SEAL_FUTURE_WRITE)],
            "sealed against writing",
        ),
        ("a memfd of the wrong size", vec![memfd_region(size + 4096, valid.as_bytes(), sealed)], "multiple of"),
        ("a garbage header", vec![memfd_region(size, &[0xa5; 4096], sealed)], "header is not valid"),
        ("another layout version", vec![memfd_region(size, other_version.as_bytes(), sealed)], "layout version"),
        ("another client's region", vec![victim_memfd.into()], "already served"),
        ("no descriptor", vec![], "one descriptor"),
    ];
    for (what, fds, expected) in &cases {
        let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let (_connection, refusal) = present(&engine, &raw);
        let reason = refusal.unwrap_or_else(|| panic!("{what} was taken over"));
        assert!(reason.contains(expected), "{what}: {reason}");
        assert!(engine.wait_for_log(&reason, Duration::from_secs(5)), "{what}: not logged");
        assert_eq!(engine.log_text().matches(&reason).count(), 1, "{what}: logged once");
        victim_queue_pair.ping(Duration::from_secs(5)).unwrap();
    }
    // A region of the client's own making, sealed and described as the engine would.
    let own = memfd_region(size, valid.as_bytes(), sealed);
    let (connection, refusal) = present(&engine, &[own.as_raw_fd()]);
    assert_eq!(refusal, None, "a well-formed region was refused");
    let region_id = engine.region_count() as u64 + 100; // not this region's id: refused, connection closed
    assert!(control::confirm_mapped(&connection, region_id).is_err());
    victim_queue_pair.ping(Duration::from_secs(5)).unwrap();
    assert!(engine.wait_for_region_count(1, Duration::from_secs(5)), "only the victim is served");
}
