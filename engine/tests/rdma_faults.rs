//! Exporter faults with the exporter in a child process (this test binary run again with
//! `RDMA_TEST_CHILD_EXPORTER` set): killed mid-read and restarted on the same port; stopped
//! (SIGSTOP: alive, connections open, nothing answered) mid-read, then continued.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdma_engine::rdma::export;
use shm_layout::entry::{ErrorCode, NeedleRead};
use volume_format::generate::SizePlan;
use volume_format::volume::LocalVolume;

const CHILD_ROLE: &str = "RDMA_TEST_CHILD_EXPORTER";
/// How long a child exporter lives at most if its parent never kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// Not a test of its own: the child exporter's body (returns at once in the parent).
#[test]
fn child_exporter() {
    let Ok(spec) = std::env::var(CHILD_ROLE) else { return };
    let (dir, port) = spec.split_once('|').unwrap();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse::<u16>().unwrap()));
    let config = export_config(Path::new(dir), listen, tcp());
    let exporter = match export::spawn(config, Arc::new(AtomicBool::new(false))) {
        Ok(exporter) => exporter,
        Err(error) => {
            println!("ERROR={error}");
            return;
        }
    };
    println!("PORT={}", exporter.local_addr().port());
    // Bounded: the parent kills the child; an orphan ends by itself.
    let start = Instant::now();
    while start.elapsed() < CHILD_LIFETIME {
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct ChildExporter {
    child: Child,
    port: u16,
}

impl ChildExporter {
    fn spawn(dir: &Path, port: u16) -> ChildExporter {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_exporter", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROLE, format!("{}|{port}", dir.display()))
            .env("UCX_TCP_CM_REUSEADDR", "y")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("child exited before announcing its port").unwrap();
            assert!(!line.contains("ERROR="), "child exporter: {line}");
            if let Some((_, port)) = line.split_once("PORT=") {
                break port.trim().parse().unwrap();
            }
        };
        ChildExporter { child, port }
    }
}

impl ChildExporter {
    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for ChildExporter {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exporter_killed_mid_read_then_back_on_the_same_port() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 8, 64, SizePlan::Fixed(512 << 10), 3);
    let local = open_local(dir.path(), 8);
    let mut child = ChildExporter::spawn(dir.path(), 0);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
    let mut reader = Reader::new(peer, tcp());
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);

    // 64 reads of 512 KiB in flight, then SIGKILL the exporter.
    let reads = whole_reads(8, &local, |id| cookie_in(&local, id));
    for (token, read) in reads.iter().enumerate() {
        reader.start(token as u64, read).unwrap();
    }
    assert!(!reader.reads.release_buffer_area(AREA_ID), "released with gets in flight");
    child.child.kill().unwrap();
    let killed_at = Instant::now();
    let (succeeded, failed) = drain_checked(&mut reader, &reads, &local, READ_DEADLINE);
    eprintln!("exporter killed: {succeeded} reads done, {failed} failed within {:?}", killed_at.elapsed());
    // While it is down, reads fail at once.
    let results = reader.run(&reads[..1]);
    assert_eq!(results[0], Err((ErrorCode::PEER_UNAVAILABLE, 0)));

    // Back on the same port: reads work again.
    let _child = ChildExporter::spawn(dir.path(), child.port);
    reader.wait_up(peer, READ_DEADLINE);
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);
}

/// Progresses until no read is in flight (at most `deadline`); checks every success against
/// the local volume and returns (succeeded, failed with PEER_UNAVAILABLE).
fn drain_checked(reader: &mut Reader, reads: &[NeedleRead], local: &LocalVolume, deadline: Duration) -> (usize, usize) {
    let start = Instant::now();
    let (mut succeeded, mut failed) = (0, 0);
    while reader.reads.in_flight() > 0 {
        assert!(start.elapsed() < deadline, "reads still in flight after {deadline:?}");
        reader.reads.progress();
        while let Some((token, result)) = reader.reads.poll_completion() {
            let read = &reads[token as usize];
            match result {
                Ok(_) => {
                    let record = local.read_checked(read.needle_id, read.cookie).unwrap();
                    assert_eq!(reader.bytes(read, 0, record.len() as u64), &record[..]);
                    succeeded += 1;
                }
                Err((code, _)) => {
                    assert_eq!(code, ErrorCode::PEER_UNAVAILABLE, "needle {}", read.needle_id);
                    failed += 1;
                }
            }
        }
    }
    (succeeded, failed)
}

/// A hung-but-alive exporter: its process is stopped while reads are in flight. Its TCP
/// connections stay open, so nothing in UCX fails; only the read timeout can. The reads fail
/// with PEER_UNAVAILABLE within about `read_timeout`, reads started meanwhile fail at once, and
/// after SIGCONT the reader reconnects and reads every needle again.
#[test]
fn exporter_stopped_mid_read_fails_within_the_read_timeout_then_recovers() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    // Long enough that 64 reads of 512 KiB never take it on a loaded machine (it runs from a
    // read's first get), short enough for a quick test.
    let read_timeout = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 8, 64, SizePlan::Fixed(512 << 10), 5);
    let local = open_local(dir.path(), 8);
    let child = ChildExporter::spawn(dir.path(), 0);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
    let mut config = remote_config(peer, tcp());
    config.read_timeout = read_timeout;
    config.connect_timeout = Duration::from_millis(500);
    let mut reader = Reader::with_config(config);
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);

    // Half the reads started, the exporter stopped, the other half started: every one of
    // those has its gets in flight at a peer that will not answer.
    let reads = whole_reads(8, &local, |id| cookie_in(&local, id));
    let (before, after) = reads.split_at(reads.len() / 2);
    let first_posted_at = Instant::now();
    for (token, read) in before.iter().enumerate() {
        reader.start(token as u64, read).unwrap();
    }
    child.signal(Signal::SIGSTOP);
    let stopped_at = Instant::now();
    for (token, read) in after.iter().enumerate() {
        reader.start((before.len() + token) as u64, read).unwrap();
    }
    // The bound: the timeout, the 10 ms scan, the forced close (at most 1 s), and slack for a
    // loaded machine. What it took is printed, never asserted closer.
    let (succeeded, failed) = drain_checked(&mut reader, &reads, &local, read_timeout + Duration::from_secs(3));
    eprintln!(
        "exporter stopped: {succeeded} reads done, {failed} failed with PEER_UNAVAILABLE {:?} after the stop",
        stopped_at.elapsed()
    );
    assert!(failed >= after.len(), "reads started after the stop must fail");
    // The timeout runs from the posting of the gets.
    assert!(first_posted_at.elapsed() >= read_timeout, "failed before the read timeout ran out");
    assert!(!reader.reads.peer_is_up(peer));

    // While it is stopped, reads fail at once (its reconnects time out in the background).
    let results = reader.run(&reads[..1]);
    assert_eq!(results[0], Err((ErrorCode::PEER_UNAVAILABLE, 0)));
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        reader.reads.progress();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!reader.reads.peer_is_up(peer), "a stopped exporter came up");

    child.signal(Signal::SIGCONT);
    // UCX 1.13.1 may crash the continued exporter (see `exporter_survives_a_reader_giving_up_on_it`);
    // a supervisor then restarts it, as done here, and the reader must recover either way.
    let _child = match wait_up_or_exit(&mut reader, peer, child) {
        Ok(child) => child,
        Err(port) => {
            eprintln!("the continued exporter crashed (UCX 1.13.1); restarting it on port {port}");
            let child = ChildExporter::spawn(dir.path(), port);
            reader.wait_up(peer, READ_DEADLINE);
            child
        }
    };
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);
}

/// Progresses until the reader is connected to `child` (Ok), or `child` has exited (Err with
/// its port), within READ_DEADLINE.
fn wait_up_or_exit(reader: &mut Reader, peer: SocketAddr, mut child: ChildExporter) -> Result<ChildExporter, u16> {
    let start = Instant::now();
    while !reader.reads.peer_is_up(peer) {
        assert!(start.elapsed() < READ_DEADLINE, "the continued exporter never came back");
        if child.child.try_wait().unwrap().is_some() {
            return Err(child.port);
        }
        reader.reads.progress();
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(child)
}

/// A reader that goes away (dropped: its endpoints are force-closed) while large gets are being
/// served leaves the exporter serving: a second reader reads every needle.
#[test]
fn exporter_survives_a_reader_dropped_mid_read() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 8, 64, SizePlan::Fixed(512 << 10), 9);
    let local = open_local(dir.path(), 8);
    let mut child = ChildExporter::spawn(dir.path(), 0);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
    let mut first = Reader::new(peer, tcp());
    assert_eq!(compare_whole(&mut first, 8, &local), 64);
    let reads = whole_reads(8, &local, |id| cookie_in(&local, id));
    for (token, read) in reads.iter().enumerate() {
        first.start(token as u64, read).unwrap();
    }
    for _ in 0..3 {
        first.reads.progress();
    }
    drop(first);
    let mut second = Reader::new(peer, tcp());
    assert_eq!(compare_whole(&mut second, 8, &local), 64);
    assert!(child.child.try_wait().unwrap().is_none(), "the exporter died when a reader went away");
}

/// The exporter must survive a reader giving up on it while it was stopped: the reader
/// force-closed its endpoint, and on SIGCONT the exporter serves the get requests queued in its
/// socket, to a closed connection. UCX 1.13.1 crashes there (SIGSEGV in
/// `ucp_request_send_state_ff` → `ucp_request_memory_dereg`, purging the pending, partly sent
/// get replies of the failed endpoint): see "Known UCX defects" in `docs/ucx-bindings.md`.
#[test]
#[ignore = "UCX 1.13.1 crashes the exporter here; run with --ignored on a newer UCX"]
fn exporter_survives_a_reader_giving_up_on_it() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 8, 64, SizePlan::Fixed(512 << 10), 5);
    let local = open_local(dir.path(), 8);
    let mut child = ChildExporter::spawn(dir.path(), 0);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
    let mut config = remote_config(peer, tcp());
    config.read_timeout = Duration::from_secs(1);
    let mut reader = Reader::with_config(config);
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);
    child.signal(Signal::SIGSTOP);
    let reads = whole_reads(8, &local, |id| cookie_in(&local, id));
    for (token, read) in reads.iter().enumerate() {
        reader.start(token as u64, read).unwrap();
    }
    drain_checked(&mut reader, &reads, &local, READ_DEADLINE);
    child.signal(Signal::SIGCONT);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        reader.reads.progress();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(child.child.try_wait().unwrap().is_none(), "the exporter crashed after SIGCONT");
    reader.wait_up(peer, READ_DEADLINE);
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);
}
