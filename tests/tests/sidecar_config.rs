//! `rdma-sidecar --config FILE`: the example in deploy/ names every setting and loads, flags
//! replace its values, a bad key is refused with its name, and a sidecar started from the file
//! serves a real engine.

use integration_tests::config_files::{assert_example_lists_every_flag, check_config, example};
use integration_tests::seaweedfs::http_request;
use integration_tests::{free_port, workspace_binary, Engine};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIDECAR: &str = "rdma-sidecar";

#[test]
fn the_example_configuration_has_every_key_and_loads() {
    assert!(assert_example_lists_every_flag(SIDECAR, "rdma-sidecar.toml") >= 8);
    let file = example("rdma-sidecar.toml");
    let (status, printed, errors) = check_config(SIDECAR, &file, &[]);
    assert_eq!(status, Some(0), "{errors}");
    for line in ["socket = \"/run/rdma-engine/engine.sock\"", "listen = \"127.0.0.1:18080\"", "queue-pairs = 4"] {
        assert!(printed.contains(line), "{line} not in:\n{printed}");
    }
    let (status, printed, errors) = check_config(SIDECAR, &file, &["--queue-pairs", "2", "--listen=127.0.0.1:1"]);
    assert_eq!(status, Some(0), "{errors}");
    assert!(printed.contains("queue-pairs = 2") && printed.contains("listen = \"127.0.0.1:1\""), "{printed}");
    let (status, _, errors) = check_config(SIDECAR, &file, &["--sq-entries", "48"]);
    assert_eq!(status, Some(2));
    assert!(errors.contains("--sq-entries 48 is not a power of two"), "{errors}");

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "socket = \"/tmp/x.sock\"\nlisten = \"127.0.0.1:1\"\nqueue-pair = 2\n").unwrap();
    let (status, _, errors) = check_config(SIDECAR, bad.path(), &[]);
    assert_eq!(status, Some(2));
    assert!(errors.contains("`queue-pair` is not a setting of rdma-sidecar"), "{errors}");
    std::fs::write(bad.path(), "socket = \"/tmp/x.sock\"\nlisten = \"127.0.0.1:1\"\nbuffer-mib = [64]\n").unwrap();
    let (status, _, errors) = check_config(SIDECAR, bad.path(), &[]);
    assert_eq!(status, Some(2));
    assert!(errors.contains("key `buffer-mib` takes a string or a number"), "{errors}");
}

/// The example file with the engine's socket and a free port given as flags: the sidecar
/// attaches and answers `/health`.
#[test]
fn a_sidecar_started_from_the_example_file_serves() {
    let engine = Engine::start(&[]);
    let address = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
    let mut child = Command::new(workspace_binary(SIDECAR))
        .arg("--config")
        .arg(example("rdma-sidecar.toml"))
        .arg("--socket")
        .arg(&engine.socket)
        .args(["--listen", &address, "--buffer-mib", "16"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    let deadline = Instant::now() + Duration::from_secs(30);
    let healthy = loop {
        match http_request(&agent, "GET", &format!("http://{address}/health"), &[]) {
            Ok(reply) if reply.status == 200 => break true,
            _ if Instant::now() >= deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default();
    assert!(healthy, "the sidecar did not answer /health:\n{log}");
    assert!(log.contains("queue_pairs=4"), "the file's queue-pairs was not used:\n{log}");
}
