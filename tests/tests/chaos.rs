//! `rdma-chaos` itself: a short fault campaign (real exporter, reader, clients, over the
//! stream transport and over UCX's shared memory, real SIGKILL and SIGSTOP) finds nothing wrong, and the campaign does
//! notice wrong bytes when the clients are told to expect other bytes. Then what the
//! campaign found (or was given the action to find), as regression tests.

use integration_tests::{children_of, free_port, is_running, workspace_binary, Engine};
use rdma_client::{AttachOptions, Client};
use std::process::Command;
use std::time::Duration;
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

/// Runs `rdma-chaos campaign` with `extra` arguments over UCX's shared memory (the opt-in
/// mode); its exit code and JSON report.
fn campaign(extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    // Shared memory: over tcp UCX 1.13 itself aborts the exporter now and then when a reader
    // dies with gets in flight (docs/robustness.md), which the campaign counts.
    campaign_over("sm", extra)
}

/// Runs `rdma-chaos campaign --transport TRANSPORT` with `extra` arguments; its exit code and
/// JSON report.
fn campaign_over(transport: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let engine = workspace_binary("rdma-engine");
    let output = Command::new(workspace_binary("rdma-chaos"))
        .arg("campaign")
        .arg("--engine")
        .arg(engine)
        .args(["--json", "--clients", "3", "--depth", "8", "--transport", transport])
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
fn ten_faults_over_ucx_shared_memory_serve_no_wrong_byte_hang_nothing_and_leak_nothing() {
    expect_a_clean_campaign("sm");
}

/// The default engines' transport: exporter and reader killed and stopped mid-read.
#[test]
fn ten_faults_over_the_stream_transport_serve_no_wrong_byte_hang_nothing_and_leak_nothing() {
    expect_a_clean_campaign("stream");
}

fn expect_a_clean_campaign(transport: &str) {
    let (code, report) = campaign_over(transport, &["--iterations", "10", "--seed", "1"]);
    for counter in [
        "/wrong_reads",
        "/hangs",
        "/recovery_timeouts",
        "/leak_checks_failed",
        "/memfds_left_at_end",
        "/reader_hugetlb_kib_at_end",
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

/// Thirty exporter kills over shared memory, each followed by right reads within 15 s. The
/// campaign found that an exporter killed while it wrote into the reader's UCX receive queue
/// (one per worker, shared by every sender on the host) could leave that queue stuck, so the
/// reader never reached a restarted exporter again: 16 of 60 kills with this seed in a release
/// build. It is a race, and a debug build under this test did not hit it in 30 kills even
/// without the remedy; the remedy itself (a fresh UCX worker after two unanswered handshakes
/// with a same-host exporter) is checked deterministically by
/// `rdma_reads.rs::a_reader_renews_its_worker_when_a_same_host_exporter_never_answers`.
#[test]
fn a_reader_reconnects_after_every_exporter_kill_over_shared_memory() {
    let (code, report) = campaign(&[
        "--iterations",
        "30",
        "--seed",
        "3",
        "--victims",
        "exporter",
        "--actions",
        "kill",
        "--recovery-timeout-ms",
        "15000",
    ]);
    for counter in ["/recovery_timeouts", "/wrong_reads", "/hangs", "/engine_deaths"] {
        assert_eq!(count(&report, counter), 0, "{counter} in {report:#}");
    }
    assert_eq!(code, Some(0), "{report:#}");
}

/// Twenty truncations of the exporter's `.dat` (up to 1 MiB cut off its end, written back
/// after up to a second) while three clients read at depth 8 over shared memory: the
/// exporter's software gets touch pages past the new end. Before the SIGBUS guard each
/// truncation killed the exporter (30 of 30 with this seed); now none does, and no read
/// returns wrong bytes.
#[test]
fn the_exporter_survives_truncations_of_its_volume_and_serves_no_wrong_byte() {
    expect_truncations_survived("sm");
}

/// The stream exporter sends from a file that may shrink under it: a short read is an error
/// answer, a `sendfile` that meets the new end closes that connection; never a wrong byte.
#[test]
fn the_stream_exporter_survives_truncations_of_its_volume_and_serves_no_wrong_byte() {
    expect_truncations_survived("stream");
}

fn expect_truncations_survived(transport: &str) {
    let (code, report) = campaign_over(
        transport,
        &["--iterations", "20", "--seed", "5", "--victims", "exporter", "--actions", "truncate"],
    );
    assert_eq!(count(&report, "/faults/exporter truncate"), 20, "{report:#}");
    for counter in ["/engine_deaths", "/wrong_reads", "/hangs", "/recovery_timeouts"] {
        assert_eq!(count(&report, counter), 0, "{counter} in {report:#}");
    }
    assert_eq!(code, Some(0), "{report:#}");
}

/// Found by the campaign (a reader SIGKILLed while the exporter died too, then restarted
/// before it): a reader whose static exporter is down at start connects once it is up.
/// It never did while no read was parked on the peer: the poller slept between
/// housekeeping passes (one a second), so the UCX handshake outlasted the connect timeout
/// and started over, for ever.
#[test]
fn a_reader_started_before_its_exporter_reads_once_the_exporter_is_up() {
    const TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let reader = Engine::start_with_env(&["--peer".into(), listen.clone(), "--no-http-fallback".into()], TCP);
    assert!(
        reader.wait_for_log("exporter not reachable at start", Duration::from_secs(20)),
        "the reader did not say its exporter is down: {}",
        reader.log_text()
    );
    let volumes = tempfile::tempdir().unwrap();
    let data = vec![0x5a_u8; 3000];
    let mut writer = VolumeWriter::create_in(volumes.path(), None, 9, VolumeWriterOptions::default()).unwrap();
    writer.append(&NeedleSpec { needle_id: 7, cookie: 0x1234, data: &data, ..Default::default() }).unwrap();
    writer.finish().unwrap();
    let export_args = ["--export-dir".into(), volumes.path().display().to_string(), "--listen".into(), listen];
    let exporter = Engine::start_with_env(&export_args, TCP);
    // A liveness bound, not a measurement: with the bug an idle reader never connected.
    assert!(
        reader.wait_for_log("exporter connected", Duration::from_secs(20)),
        "the reader did not connect within 20 s of the exporter's start; its log:\n{}",
        reader.log_text()
    );
    // With the bug, handshakes the exporter accepted broke off (the reader gave up on them
    // after its connect timeout) before one got through, if one ever did.
    assert!(
        !exporter.log_text().contains("UCX endpoint failed"),
        "the reader gave up on handshakes before it connected; exporter log:\n{}",
        exporter.log_text()
    );
    let client = Client::attach(&reader.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (9, 7, 0x1234), 1 << 20);
    let range = completion.data_range().unwrap_or_else(|| panic!("read failed: {:?}", completion.result()));
    assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], &data[..]);
}

/// A campaign killed with SIGKILL takes its engines and clients with it: they used to be left
/// running, and the orphaned exporter's port made a later run fail.
#[test]
fn a_killed_campaign_leaves_no_engine_or_client_running() {
    let mut campaign = Command::new(workspace_binary("rdma-chaos"))
        .arg("campaign")
        .arg("--engine")
        .arg(workspace_binary("rdma-engine"))
        .args(["--json", "--clients", "2", "--depth", "4", "--transport", "sm", "--iterations", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run rdma-chaos");
    let pid = campaign.id();
    // Two engines and two clients (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut children = children_of(pid);
    while children.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "the campaign started only {children:?}");
        std::thread::sleep(Duration::from_millis(50));
        children = children_of(pid);
    }
    campaign.kill().expect("SIGKILL the campaign");
    campaign.wait().expect("reap the campaign");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while children.iter().any(|&child| is_running(child)) {
        assert!(std::time::Instant::now() < deadline, "still running after the campaign died: {children:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Clients on the `Reader`, attached once: the reading engine killed and stopped ten times,
/// each new engine taking every client's region over. No wrong byte (the views each thread
/// keeps are checked again across the restarts), no hang, no client restart, one region per
/// client for the whole run, nothing left behind.
#[test]
fn clients_on_the_reader_keep_their_regions_across_reader_engine_restarts() {
    let (code, report) = campaign_over(
        "stream",
        &["--iterations", "10", "--seed", "2", "--victims", "reader", "--client-api", "reader"],
    );
    for counter in
        ["/wrong_reads", "/hangs", "/recovery_timeouts", "/memfds_left_at_end", "/engine_deaths", "/client_deaths"]
    {
        assert_eq!(count(&report, counter), 0, "{counter} in {report:#}");
    }
    assert_eq!(count(&report, "/totals/regions"), count(&report, "/clients"), "one region per client: {report:#}");
    assert_eq!(code, Some(0), "a clean report exits 0: {report:#}");
    eprintln!("reads failed to the application: {}", count(&report, "/totals/read_errors"));
}
