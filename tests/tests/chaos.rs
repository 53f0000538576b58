//! `rdma-chaos` itself: a short fault campaign (real exporter, reader, clients, UCX over
//! tcp on loopback, real SIGKILL and SIGSTOP) finds nothing wrong, and the campaign does
//! notice wrong bytes when the clients are told to expect other bytes.

use integration_tests::workspace_binary;
use std::process::Command;

/// Runs `rdma-chaos campaign` with `extra` arguments; its exit code and JSON report.
fn campaign(extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let engine = workspace_binary("rdma-engine");
    let output = Command::new(workspace_binary("rdma-chaos"))
        .arg("campaign")
        .arg("--engine")
        .arg(engine)
        .args(["--json", "--clients", "3", "--depth", "8"])
        .args(extra)
        .output()
        .expect("run rdma-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("rdma-chaos printed no JSON report ({error}); stderr:\n{stderr}"));
    (output.status.code(), report)
}

fn count(report: &serde_json::Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(serde_json::Value::as_u64).unwrap_or_else(|| panic!("{pointer} in {report}"))
}

#[test]
fn ten_faults_serve_no_wrong_byte_hang_nothing_and_leak_nothing() {
    let (code, report) = campaign(&["--iterations", "10", "--seed", "1"]);
    for counter in [
        "/wrong_reads",
        "/hangs",
        "/recovery_timeouts",
        "/leak_checks_failed",
        "/memfds_left_at_end",
        "/hugepages_leaked",
        "/engine_deaths",
        "/client_deaths",
    ] {
        assert_eq!(count(&report, counter), 0, "{counter} in {report:#}");
    }
    assert_eq!(code, Some(0), "a clean report exits 0: {report:#}");
    let faults: u64 = report["faults"].as_object().expect("faults").values().filter_map(|n| n.as_u64()).sum();
    assert_eq!(faults, 10);
    let recovered: u64 = report["recovery"].as_object().expect("recovery").values().map(|r| count(r, "/count")).sum();
    assert_eq!(recovered, 10, "every fault was followed by right reads again: {report:#}");
    assert!(count(&report, "/totals/reads_ok") > 0);
}

#[test]
fn wrong_bytes_are_counted_and_fail_the_run() {
    let (code, report) = campaign(&["--iterations", "1", "--seed", "3", "--flip-expected"]);
    assert!(count(&report, "/wrong_reads") > 0, "{report:#}");
    assert_eq!(code, Some(1), "a report with wrong bytes exits 1");
}
