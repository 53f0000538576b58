//! Exporter and reader in two processes over TCP. The test binary runs itself as the child
//! exporter (selected by an environment variable), with `UCX_TLS=tcp` set in the child's
//! environment, the way a deployment configures UCX.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::scenarios::DEAD_PEER_TIMEOUT;
use common::*;
use ucx::{ErrorMode, GetStarted, MemoryRegion};

/// Set in the child's environment to make `child_exporter` run instead of returning.
const CHILD_ROLE: &str = "UCX_TEST_CHILD_ROLE";

/// Not a test of its own: the body of the child process (passes trivially in the parent).
#[test]
fn child_exporter() {
    if std::env::var_os(CHILD_ROLE).is_none() {
        return;
    }
    let never = AtomicBool::new(false);
    // Empty overrides: the child takes UCX_TLS from its environment.
    run_exporter(&[], ErrorMode::Peer, &never, |port| println!("PORT={port}"));
}

struct ChildExporter {
    child: Child,
    port: u16,
}

impl Drop for ChildExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child() -> ChildExporter {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_exporter", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, "exporter")
        .env("UCX_TLS", "tcp")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("child exited before announcing its port").unwrap();
        // libtest prints "test child_exporter ... " first, on the same line.
        if let Some((_, port)) = line.split_once("PORT=") {
            break port.trim().parse().unwrap();
        }
    };
    ChildExporter { child, port }
}

#[test]
fn gets_across_processes_and_peer_killed() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    let mut exporter = spawn_child();
    let tcp = &[("TLS", "tcp")];
    let reader = connect_reader(tcp, ErrorMode::Peer, exporter.port, 16, 0);
    let mut local = vec![0u8; 1 << 20];
    // SAFETY: `local` outlives `region`.
    let region = unsafe { MemoryRegion::register(&reader.context, local.as_mut_ptr(), local.len()) }.unwrap();
    for (token, (size, offset)) in [(8, 3), (4096, 12345), (1 << 20, EXPORT_BYTES - (1 << 20))].into_iter().enumerate()
    {
        // SAFETY: local[..size] is read only after the completion.
        let started = unsafe {
            reader.endpoint.get_nbx(
                local.as_mut_ptr(),
                size,
                reader.catalogue.address + offset as u64,
                &reader.rkey,
                Some(&region),
                token as u64,
            )
        }
        .unwrap();
        if started == GetStarted::InFlight {
            assert!(wait_completion(&reader.worker, token as u64, Duration::from_secs(5)).is_ok());
        }
        assert_pattern(&local[..size], offset);
    }

    // Freeze the child, post a get that cannot finish, then SIGKILL the child.
    freeze_exporter(&reader);
    // SAFETY: `local` outlives the completion awaited below.
    let started = unsafe {
        reader.endpoint.get_nbx(local.as_mut_ptr(), 4096, reader.catalogue.address, &reader.rkey, Some(&region), 99)
    }
    .unwrap();
    assert_eq!(started, GetStarted::InFlight, "a frozen peer cannot have served the get");
    exporter.child.kill().unwrap();
    let start = Instant::now();
    let status = wait_completion(&reader.worker, 99, DEAD_PEER_TIMEOUT);
    assert!(!status.is_ok());
    eprintln!("get on killed peer failed after {:?}: {status}", start.elapsed());
    assert!(reader.endpoint.is_failed());
    let Reader { rkey, endpoint, .. } = reader;
    drop(rkey);
    let _ = endpoint.close();
    drop(region);
}
