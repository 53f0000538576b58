//! ringstat against a real engine with a real client attached.

mod common;

use common::{run_with_timeout, start_engine};
use rdma_client::{AttachOptions, Client, Operation};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn json_shows_the_attached_region_with_its_indices() {
    let engine = start_engine(None);
    let client = Client::attach(
        &engine.socket,
        &AttachOptions {
            queue_pairs: 2,
            sq_entries: 16,
            buffer_size_bytes: 64 << 10,
            client_name: "ringstat-test".into(),
        },
    )
    .unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    let nop_count = 37u32;
    let mut reaped = 0;
    // Batches of at most 8 keep within the 16-entry SQ.
    for batch_start in (0..nop_count).step_by(8) {
        for tag in batch_start..(batch_start + 8).min(nop_count) {
            queue_pair.prepare(Operation::Nop, tag as u64).unwrap();
        }
        queue_pair.submit().unwrap();
        let batch = (batch_start + 8).min(nop_count) - batch_start;
        queue_pair.wait(batch, Duration::from_secs(5)).unwrap();
        while let Some(completion) = queue_pair.reap_one().unwrap() {
            assert_eq!(completion.result().unwrap(), 0);
            reaped += 1;
        }
    }
    assert_eq!(reaped, nop_count);

    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_ringstat")).arg("--socket").arg(&engine.socket).arg("--json"),
        TIMEOUT,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let snapshot: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let regions = snapshot["regions"].as_array().unwrap();
    let region =
        regions.iter().find(|region| region["client_pid"] == std::process::id()).expect("our region is listed");
    assert_eq!(region["client_name"], "ringstat-test");
    assert_eq!(region["client_alive"], true);
    assert!(region["client_process_name"].is_string());
    assert_eq!(region["error"], serde_json::Value::Null);
    assert_eq!(region["layout"]["queue_pair_count"], 2);
    assert_eq!(region["layout"]["sq_entries"], 16);
    assert_eq!(region["live"]["engine_state"], "running");
    assert_eq!(region["live"]["region_state"], "active");
    assert!(region["live"]["heartbeat_age_ms"].as_f64().unwrap() < 5_000.0);
    let queue_pairs = region["queue_pairs"].as_array().unwrap();
    assert_eq!(queue_pairs.len(), 2);
    let first = &queue_pairs[0];
    for index in ["sq_head", "sq_tail", "cq_head", "cq_tail"] {
        assert_eq!(first[index], nop_count, "{index}");
    }
    assert_eq!(first["sq_in_flight"], 0);
    assert_eq!(first["cq_in_flight"], 0);
    assert_eq!(first["stats"]["sqes_taken"], nop_count);
    assert_eq!(first["stats"]["cqes_posted"], nop_count);
    assert_eq!(first["stats"]["errors"], 0);
    let second = &queue_pairs[1];
    assert_eq!(second["sq_tail"], 0);
    assert_eq!(second["stats"]["sqes_taken"], 0);

    let text =
        run_with_timeout(Command::new(env!("CARGO_BIN_EXE_ringstat")).arg("--socket").arg(&engine.socket), TIMEOUT);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("ringstat-test"), "{text}");
    assert!(text.contains("sq_head"), "{text}");
    drop(queue_pair);
    drop(client);
}

#[test]
fn unreachable_engine_is_exit_code_3() {
    let scratch = common::Scratch::new("ringstat-missing");
    let output = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_ringstat"))
            .arg("--socket")
            .arg(scratch.path.join("nobody.sock"))
            .arg("--json"),
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}
