//! Processes dying at any moment: a client killed with SIGKILL, the engine
//! killed or stopped with SIGTERM. Real processes, real signals.

use integration_tests::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdma_client::{AttachOptions, Client, Operation};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

/// Starts `test-client ROLE SOCKET` and waits until it says it attached.
fn start_client(role: &str, engine: &Engine) -> (Child, BufReader<std::process::ChildStdout>) {
    integration_tests::spawn_attached_client(
        env!("CARGO_BIN_EXE_test-client"),
        &[role.as_ref(), engine.socket.as_os_str()],
    )
}

/// Reads the `error=... elapsed_ms=...` line a waiting client prints.
fn wait_result(mut child: Child, mut stdout: BufReader<std::process::ChildStdout>) -> (String, u64) {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the waiting client's result");
    let _ = child.wait();
    let kind = line.split_whitespace().find_map(|field| field.strip_prefix("error=")).unwrap_or("none").to_string();
    let elapsed_ms =
        line.split_whitespace().find_map(|field| field.strip_prefix("elapsed_ms=")?.parse().ok()).unwrap_or(u64::MAX);
    (kind, elapsed_ms)
}

#[test]
fn client_killed_mid_submission_leaves_nothing_behind() {
    let engine = Engine::start(&[]);
    let other = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut other_queue_pair = other.take_queue_pair(0).unwrap();
    for round in 0..5 {
        let (mut child, _stdout) = start_client("hold", &engine);
        // Let it run a little so the kill lands at some arbitrary moment.
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = child.wait();
        assert!(
            engine.wait_for_region_count(1, Duration::from_secs(5)),
            "the killed client's region was not reclaimed"
        );
        other_queue_pair.ping(Duration::from_secs(5)).unwrap();
    }
    drop(other_queue_pair);
    drop(other);
    assert!(engine.wait_for_region_count(0, Duration::from_secs(5)));
    // The engine keeps no memfd of a reclaimed region.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.open_region_memfds() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(engine.open_region_memfds(), 0, "region memfds still open in the engine");
}

#[test]
fn engine_killed_wakes_every_waiting_client_with_an_error_and_restart_works() {
    let mut engine = Engine::start(&[]);
    let waiters: Vec<_> = (0..3).map(|_| start_client("wait", &engine)).collect();
    std::thread::sleep(Duration::from_millis(100));
    kill(engine.pid(), Signal::SIGKILL).unwrap();
    for (child, stdout) in waiters {
        let (kind, elapsed_ms) = wait_result(child, stdout);
        assert_eq!(kind, "engine-gone");
        // The design bound is 1 s (50 ms wait slices); allow a loaded CI machine slack.
        assert!(elapsed_ms < 10_000, "a waiting client took {elapsed_ms} ms to notice the dead engine");
        eprintln!("waiting client noticed the killed engine after {elapsed_ms} ms");
    }
    engine.restart();
    let client = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    client.take_queue_pair(0).unwrap().ping(Duration::from_secs(5)).unwrap();
}

#[test]
fn sigterm_drains_stops_and_wakes_waiters() {
    let mut engine = Engine::start(&[]);
    let (child, stdout) = start_client("wait", &engine);
    let client = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    queue_pair.ping(Duration::from_secs(5)).unwrap();
    kill(engine.pid(), Signal::SIGTERM).unwrap();
    let (kind, _) = wait_result(child, stdout);
    assert!(kind == "engine-stopped" || kind == "engine-gone", "waiting client saw {kind}");
    let status = engine.child.wait().unwrap();
    assert!(status.success(), "engine exit status after SIGTERM: {status}");
    assert!(!engine.socket.exists(), "the engine left its socket file behind");
    assert!(engine.log_text().contains("poller drained"), "log: {}", engine.log_text());
    // Submitting to a stopped engine never hangs: the wait reports why.
    queue_pair.prepare(Operation::Nop, 1).unwrap();
    queue_pair.submit().unwrap();
    let error = queue_pair.wait(1, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(error, rdma_client::ClientError::EngineStopped | rdma_client::ClientError::EngineGone));
    engine.restart();
}

/// The example configuration in deploy/ names every setting and loads; flags replace its
/// values; a bad key is refused with its name.
#[test]
fn the_example_configuration_has_every_key_and_loads() {
    use integration_tests::config_files;
    assert!(config_files::assert_example_lists_every_flag("rdma-engine", "rdma-engine.toml") > 20);
    let example = config_files::example("rdma-engine.toml");
    let check = |extra: &[&str]| config_files::check_config("rdma-engine", &example, extra);
    let (status, printed, errors) = check(&[]);
    assert_eq!(status, Some(0), "{errors}");
    assert!(
        printed.contains("max-clients = 16") && printed.contains("socket = \"/run/rdma-engine/engine.sock\""),
        "{printed}"
    );
    let (status, printed, _) = check(&["--max-clients", "8", "--peer", "10.0.0.9:1"]);
    assert_eq!(status, Some(0));
    assert!(printed.contains("max-clients = 8") && printed.contains("peer = [\"10.0.0.9:1\"]"), "{printed}");
    let (status, _, errors) = check(&["--max-clients", "1000"]);
    assert_eq!(status, Some(2));
    assert!(errors.contains("max-clients"), "{errors}");
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "socket = \"/tmp/x.sock\"\nmax-client = 4\n").unwrap();
    let (status, _, errors) = config_files::check_config("rdma-engine", bad.path(), &[]);
    assert_eq!(status, Some(2));
    assert!(errors.contains("`max-client` is not a setting of rdma-engine"), "{errors}");
}

/// The start-up report: one log line per topic.
#[test]
fn the_engine_reports_what_the_host_gives_it_at_start() {
    let engine = Engine::start(&["--peer", "127.0.0.1:9"]);
    for topic in ["machine", "huge pages", "NUMA and RDMA devices", "io_uring", "UCX transports found", "poller CPU"] {
        let line = format!("start-up report: {topic}");
        assert!(engine.wait_for_log(&line, Duration::from_secs(5)), "no `{line}` in:\n{}", engine.log_text());
    }
    assert!(engine.log_text().contains("tcp/lo"), "UCX's transports are listed: {}", engine.log_text());
}

/// One unreadable volume directory among several stops the engine, naming it and why.
#[test]
fn a_bad_volume_dir_is_named() {
    let good = tempfile::tempdir().unwrap();
    let missing = good.path().join("not-mounted");
    let output = std::process::Command::new(integration_tests::workspace_binary("rdma-engine"))
        .arg("--socket")
        .arg(good.path().join("engine.sock"))
        .arg("--volume-dir")
        .arg(good.path())
        .arg("--volume-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    let errors = String::from_utf8_lossy(&output.stderr);
    let named = format!("cannot read volume directory {}: No such file", missing.display());
    assert!(errors.contains(&named), "{errors}");
}
