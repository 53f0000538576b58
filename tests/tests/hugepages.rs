//! Hugepage backing: a region is a pre-faulted MFD_HUGETLB memfd when huge
//! pages are reserved, falls back to normal pages (said once) when not, and
//! a SIGKILLed client leaves no huge page behind. One test function: huge
//! page counters are machine-wide, so nothing else in this binary runs beside it.

use integration_tests::Engine;
use rdma_client::{AttachOptions, Client};
use shm_layout::header::backing;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines().find_map(|line| line.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Restores the machine's huge page reservation when the test ends.
struct Reservation {
    previous: u64,
}

impl Reservation {
    fn add(pages: u64) -> Option<Reservation> {
        let previous: u64 = std::fs::read_to_string(NR_HUGEPAGES).ok()?.trim().parse().ok()?;
        std::fs::write(NR_HUGEPAGES, (previous + pages).to_string()).ok()?;
        let reserved: u64 = std::fs::read_to_string(NR_HUGEPAGES).ok()?.trim().parse().ok()?;
        if reserved < previous + pages {
            let _ = std::fs::write(NR_HUGEPAGES, previous.to_string());
            return None;
        }
        Some(Reservation { previous })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.previous.to_string());
    }
}

fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn hugetlb_regions_are_prefaulted_reclaimed_and_fall_back_loudly() {
    // Fallback first, with whatever the machine has: ask for more than is free.
    let free_before = meminfo("HugePages_Free:");
    if free_before < 400 {
        let engine = Engine::start(&["--hugepages", "auto"]);
        let too_big = (free_before + 2) * 2 * 1024 * 1024;
        let options = AttachOptions { buffer_size_bytes: too_big, ..AttachOptions::default() };
        let first = Client::attach(&engine.socket, &options).unwrap();
        let second = Client::attach(&engine.socket, &options).unwrap();
        assert_eq!(first.description().backing, backing::NORMAL_PAGES);
        assert_eq!(second.description().backing, backing::NORMAL_PAGES);
        assert_eq!(engine.log_text().matches("huge pages unavailable").count(), 1, "said once: {}", engine.log_text());
        let refusing = Engine::start(&["--hugepages", "require"]);
        let refused = Client::attach(&refusing.socket, &options).unwrap_err();
        assert!(refused.to_string().contains("huge pages"), "{refused}");
    } else {
        let reason = format!("{free_before} huge pages are free; cannot force a shortage for the fallback part");
        integration_tests::skip_or_fail("hugepages-fallback", &reason);
    }

    let Some(_reservation) = Reservation::add(32) else {
        let reason = format!("cannot reserve huge pages in {NR_HUGEPAGES} (needs root); the hugetlb path is untested");
        integration_tests::skip_or_fail("hugepages", &reason);
        return;
    };
    let engine = Engine::start(&["--hugepages", "require"]);
    let free_reserved = meminfo("HugePages_Free:");
    let args = ["hold".as_ref(), engine.socket.as_os_str()];
    let (mut child, _stdout) = integration_tests::spawn_attached_client(env!("CARGO_BIN_EXE_test-client"), &args);
    // Pre-faulted at attach: the pages are taken now, not on first touch.
    let used = free_reserved - meminfo("HugePages_Free:");
    assert!(used >= 1, "the region took no huge pages");
    let client = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    assert_eq!(client.description().backing, backing::HUGETLB);
    assert_eq!(client.description().page_size_bytes, 2 * 1024 * 1024);
    drop(client);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert!(engine.wait_for_region_count(0, Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(5), || meminfo("HugePages_Free:") == free_reserved),
        "huge pages leaked: {} free, {free_reserved} before",
        meminfo("HugePages_Free:")
    );
    hole_punching_cannot_take_huge_pages_from_under_the_engine(&engine);
}

/// A client holds a writable fd of its hugetlb region. Punching a hole in it frees huge pages
/// under the engine, whose next touch of them faults in new ones, or gets SIGBUS when the pool
/// is empty. Before the region is served the engine refuses a region with holes, untouched.
/// After it, punching is possible (the region is not sealed against writing, so that a new
/// engine can adopt it), and with the pool emptied the engine's guard turns the SIGBUS into
/// a fenced region. Other clients are served throughout, and the engine lives.
fn hole_punching_cannot_take_huge_pages_from_under_the_engine(engine: &Engine) {
    use integration_tests::{attach_request, hostile::attach_unconfirmed};
    use nix::fcntl::{fallocate, FallocateFlags};
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let huge = 2 * 1024 * 1024;
    let bystander = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = bystander.take_queue_pair(0).unwrap();

    // Before it is served: a hole in the data area, then the confirmation.
    let early = attach_unconfirmed(&engine.socket, attach_request(1, 64, 8 << 20));
    assert!(early.hugepages, "the region is not hugetlb");
    fallocate(early.memfd.as_raw_fd(), punch, early.size_bytes as i64 - huge, huge)
        .expect("punching is possible before the seal");
    let refusal = rdma_ipc::control::confirm_mapped(&early.socket, early.region_id).unwrap_err();
    assert!(refusal.to_string().contains("hole punched"), "{refusal}");
    assert!(engine.wait_for_log("refused at sealing", Duration::from_secs(5)), "{}", engine.log_text());
    queue_pair.ping(Duration::from_secs(5)).unwrap();

    // Served, then punched where the engine looks on every pass (the header and the rings),
    // with no huge page free: the page the punch frees leaves the pool (it is surplus).
    let served = attach_unconfirmed(&engine.socket, attach_request(1, 64, 8 << 20));
    rdma_ipc::control::confirm_mapped(&served.socket, served.region_id).unwrap();
    let pool: u64 = std::fs::read_to_string(NR_HUGEPAGES).unwrap().trim().parse().unwrap();
    let in_use = meminfo("HugePages_Total:") - meminfo("HugePages_Free:");
    std::fs::write(NR_HUGEPAGES, (in_use - 1).to_string()).unwrap();
    fallocate(served.memfd.as_raw_fd(), punch, 0, huge).expect("punching a served region");
    let fenced = engine.wait_for_log("pages of the region were freed under the engine", Duration::from_secs(10));
    std::fs::write(NR_HUGEPAGES, pool.to_string()).unwrap();
    assert!(fenced, "the engine did not fence the punched region: {}", engine.log_text());
    assert!(integration_tests::is_running(engine.pid().as_raw() as u32), "the engine died: {}", engine.log_text());
    queue_pair.ping(Duration::from_secs(5)).unwrap();
    drop(served);
    assert!(engine.wait_for_region_count(1, Duration::from_secs(5)), "{}", engine.log_text());
}
