//! rdma-bench against a real engine: the JSON shape, never the timing
//! targets (benchmarks are not assertions).

mod common;

use common::{free_port, run_with_timeout, start_engine, start_engine_with, Scratch};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn nop_json_has_the_top_level_figures() {
    let engine = start_engine(None);
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
            .args(["nop", "--json", "--duration-ms", "400", "--rounds", "1", "--contend", "1", "--socket"])
            .arg(&engine.socket),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    for key in ["ops_per_sec", "p50_ns", "floor_p50_ns", "floor_ops_per_sec"] {
        assert!(report[key].is_number(), "{key} is {}", report[key]);
    }
    for config in
        ["qp1_depth1", "qp1_depth8", "qp1_depth32", "qp2_depth1", "qp2_depth8", "qp2_depth32", "wake_from_sleep"]
    {
        assert!(report["engine"][config]["ops_per_sec"].is_number(), "{config}");
        if config != "wake_from_sleep" {
            let figure = &report["engine"][config];
            assert!(figure["contended_ops_per_sec"].as_f64().unwrap() > 0.0, "{config}: {figure}");
            assert!(figure["contended_ratio"].as_f64().unwrap() > 0.0, "{config}: {figure}");
        }
    }
    assert_eq!(report["contenders"], 1);
    for floor in ["bounce", "futex", "ring_depth1", "ring_depth8", "ring_depth32"] {
        assert!(report["floors"][floor]["ops_per_sec"].is_number(), "{floor}");
    }
    assert!(report["machine"]["logical_cpu_count"].as_u64().unwrap() >= 1);
    assert_eq!(report["targets"].as_array().unwrap().len(), 4);
}

fn volgen(dir: &std::path::Path, volume_id: u32, count: u32, sizes: &str) {
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_volgen"))
            .arg("--dir")
            .arg(dir)
            .args(["--volume-id", &volume_id.to_string(), "--count", &count.to_string()])
            .args(["--sizes", sizes]),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn read_local_json_covers_every_size_and_depth() {
    let volumes = Scratch::new("bench-read");
    volgen(&volumes.path, 3, 12, "4096,65536,1048576");
    let engine = start_engine(Some(&volumes.path));
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
            // Slices of about 100 ms: long enough for depth-32 1 MiB reads to complete even
            // when the other test of this binary loads both CPUs (25 ms slices saw none).
            .args(["read", "--transport", "local", "--json", "--duration-ms", "1200", "--rounds", "1"])
            .args(["--contend", "1", "--socket"])
            .arg(&engine.socket)
            .arg("--volume-dir")
            .arg(&volumes.path),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for entry in results {
        for key in ["reads_per_sec", "floor_reads_per_sec", "checked_floor_reads_per_sec"] {
            assert!(entry[key].as_f64().unwrap() > 0.0, "{key} in {entry}");
        }
        assert!(entry["bytes_per_sec"].is_number());
        assert!(entry["p50_ns"].is_number());
        assert!(entry["floor_p50_ns"].is_number());
        assert!(entry["reads_ratio"].is_number());
        assert!(entry["contended_reads_per_sec"].as_f64().unwrap() > 0.0, "{entry}");
        assert!(entry["contended_ratio"].as_f64().unwrap() > 0.0, "{entry}");
        // Both processes worked while the engine read; the bench alone ran the floor.
        assert_costs(&entry["engine_costs"], &["bench", "engine"], &["bench", "engine"]);
        assert_costs(&entry["floor_costs"], &["bench", "engine"], &["bench"]);
    }
    assert_eq!(report["contenders"], 1);
    let verified = report["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 3);
    assert!(verified.iter().all(|v| v["source"] == "local"));
}

/// `costs` names exactly the processes `named`, and those of `busy` used CPU time.
fn assert_costs(costs: &serde_json::Value, named: &[&str], busy: &[&str]) {
    let costs = costs.as_array().unwrap_or_else(|| panic!("costs: {costs}"));
    let processes: Vec<&str> = costs.iter().map(|cost| cost["process"].as_str().unwrap()).collect();
    assert_eq!(processes, named, "{costs:?}");
    for cost in costs.iter().filter(|cost| busy.contains(&cost["process"].as_str().unwrap())) {
        assert!(cost["cpu_ns_per_read"].as_f64().unwrap() > 0.0, "{cost}");
        assert!(cost["cpu_percent"].as_f64().unwrap() > 0.0, "{cost}");
        assert!(cost["sleeps_per_read"].as_f64().unwrap() >= 0.0, "{cost}");
    }
}

#[test]
fn read_measures_only_the_sizes_and_depths_asked_for() {
    let volumes = Scratch::new("bench-read-narrow");
    volgen(&volumes.path, 6, 4, "4096");
    let engine = start_engine(Some(&volumes.path));
    let bench = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rdma-bench"));
        command.args(["read", "--transport", "local", "--json", "--duration-ms", "300", "--rounds", "1", "--socket"]);
        command.arg(&engine.socket).arg("--volume-dir").arg(&volumes.path);
        command
    };
    // Only 4 KiB needles exist: the other sizes are not looked for.
    let output = run_with_timeout(bench().args(["--sizes", "4KiB", "--depths", "32"]), TIMEOUT);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!((results[0]["size_bytes"].as_u64(), results[0]["depth"].as_u64()), (Some(4096), Some(32)));
    assert_eq!(report["verified"].as_array().unwrap().len(), 1);
    let output = run_with_timeout(bench().args(["--sizes", "3KiB"]), TIMEOUT);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("size \"3KiB\" is not measured"));
}

/// UCX over TCP for the exporter, the reader and the bench alike.
const UCX_TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];

#[test]
fn read_ucx_json_has_engine_and_floor_for_every_size_and_depth() {
    let volumes = Scratch::new("bench-ucx");
    volgen(&volumes.path, 5, 12, "4096,65536,1048576");
    let listen = format!("127.0.0.1:{}", free_port());
    let export_args =
        ["--export-dir".into(), volumes.path.clone().into_os_string(), "--listen".into(), listen.clone().into()];
    let _exporter = start_engine_with(&export_args, UCX_TCP);
    let reader = start_engine_with(&["--peer".into(), listen.clone().into()], UCX_TCP);
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
            .args(["read", "--transport", "ucx", "--json", "--duration-ms", "1200", "--rounds", "1"])
            .arg("--socket")
            .arg(&reader.socket)
            .args(["--peer", &listen])
            .arg("--volume-dir")
            .arg(&volumes.path)
            .envs(UCX_TCP.iter().copied()),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["transport"], "ucx");
    assert_eq!(report["peer"], listen.as_str());
    let results = report["results"].as_array().unwrap();
    let configurations: Vec<(u64, u64)> =
        results.iter().map(|r| (r["size_bytes"].as_u64().unwrap(), r["depth"].as_u64().unwrap())).collect();
    assert_eq!(configurations, [(4096, 1), (4096, 32), (65536, 1), (65536, 32), (1 << 20, 1), (1 << 20, 32)]);
    for entry in results {
        for key in ["reads_per_sec", "bytes_per_sec", "floor_reads_per_sec", "floor_bytes_per_sec"] {
            assert!(entry[key].as_f64().unwrap() > 0.0, "{key} in {entry}");
        }
        for key in ["p50_ns", "floor_p50_ns", "reads_ratio", "bytes_ratio", "p50_ratio", "p50_delta_ns"] {
            assert!(entry[key].is_number(), "{key} in {entry}");
        }
        assert_costs(&entry["engine_costs"], &["bench", "reader", "exporter"], &["bench", "reader"]);
        // The floor's gets over tcp are answered by the exporter's worker.
        assert_costs(&entry["floor_costs"], &["bench", "reader", "exporter"], &["bench", "exporter"]);
    }
    assert_eq!(report["targets"].as_array().unwrap().len(), 5);
    let verified = report["verified"].as_array().unwrap();
    assert_eq!(verified.len(), 3);
    assert!(verified.iter().all(|v| v["source"] == "rdma"), "{verified:?}");
    assert_eq!(report["ucx_environment"]["bench"]["UCX_TLS"], "tcp");
    assert_eq!(report["ucx_environment"]["reader"]["UCX_TLS"], "tcp");
}

#[test]
fn read_ucx_without_peer_is_a_usage_error() {
    let scratch = Scratch::new("bench-ucx-usage");
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
            .args(["read", "--transport", "ucx", "--json"])
            .arg("--socket")
            .arg(scratch.path.join("nobody.sock"))
            .arg("--volume-dir")
            .arg(&scratch.path),
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--peer"));
}

#[test]
fn read_without_needles_of_the_sizes_explains() {
    let volumes = Scratch::new("bench-read-empty");
    volgen(&volumes.path, 4, 3, "100");
    let engine = start_engine(Some(&volumes.path));
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
            .args(["read", "--transport", "local", "--socket"])
            .arg(&engine.socket)
            .arg("--volume-dir")
            .arg(&volumes.path),
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("volgen --dir"));
}

/// The busy-loop contenders `--contend` started for the bench with process id `bench`.
fn contenders_of(bench: u32) -> Vec<u32> {
    let wanted = format!("__busy-loop\0--parent\0{bench}\0");
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&wanted))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `condition` every 10 ms until it holds or `TIMEOUT` passes.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn contenders_end_with_the_bench_even_when_it_is_killed() {
    let engine = start_engine(None);
    // The contended part lasts about 0.8 s of the run: time to see the contenders.
    let mut bench = Command::new(env!("CARGO_BIN_EXE_rdma-bench"))
        .args(["nop", "--json", "--duration-ms", "2000", "--rounds", "1", "--contend", "2", "--socket"])
        .arg(&engine.socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("start rdma-bench");
    let bench_pid = bench.id();
    assert!(eventually(|| contenders_of(bench_pid).len() == 2), "two contenders while the contended run lasts");
    // SIGKILL: no destructor runs; the kernel kills the contenders (PR_SET_PDEATHSIG).
    bench.kill().expect("kill the bench");
    let _ = bench.wait();
    assert!(eventually(|| contenders_of(bench_pid).is_empty()), "contenders outlived the killed bench");
}
