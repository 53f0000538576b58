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

/// `ringstat --json --watch` against a client doing NOPs and failing reads: one JSON line per
/// frame, whose rates are exactly the counter deltas over the frame interval, by queue pair
/// and summed by region; with no load the rates drop to zero. The text form shows them too.
#[test]
fn watch_shows_rates_per_second_beside_the_ring_state() {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let engine = start_engine(None);
    let options =
        AttachOptions { queue_pairs: 1, sq_entries: 16, buffer_size_bytes: 64 << 10, client_name: "rates".into() };
    let client = Arc::new(Client::attach(&engine.socket, &options).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (load_client, load_stop) = (client.clone(), stop.clone());
    let load = std::thread::spawn(move || {
        let mut queue_pair = load_client.take_queue_pair(0).unwrap();
        while !load_stop.load(Ordering::Relaxed) {
            // Four NOPs and four reads of a volume no one serves (NO_SUCH_VOLUME) per batch.
            for tag in 0..4u64 {
                queue_pair.prepare(Operation::Nop, tag).unwrap();
                let read = Operation::ReadNeedle {
                    volume_id: 77,
                    needle_id: 1,
                    cookie: 1,
                    buffer: load_client.allocate(4096).unwrap(),
                };
                queue_pair.prepare(read, 100 + tag).unwrap();
            }
            queue_pair.submit().unwrap();
            queue_pair.wait(8, Duration::from_secs(5)).unwrap();
            while queue_pair.reap_one().unwrap().is_some() {}
        }
    });

    let mut watch = Command::new(env!("CARGO_BIN_EXE_ringstat"))
        .arg("--socket")
        .arg(&engine.socket)
        .args(["--json", "--watch", "--interval-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let pid = std::process::id();
    let mut next_frame = || -> serde_json::Value {
        let line = lines.next().expect("a frame").expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
    };
    let region_of = |frame: &serde_json::Value| -> serde_json::Value {
        frame["regions"].as_array().unwrap().iter().find(|region| region["client_pid"] == pid).unwrap().clone()
    };
    let mut previous = next_frame();
    assert!(previous["rates"].is_null(), "the first frame has no rates: {previous}");
    let mut saw_both = false;
    for _ in 0..5 {
        let frame = next_frame();
        let (before, now) = (region_of(&previous), region_of(&frame));
        let region_id = now["region_id"].as_u64().unwrap();
        let seconds = (frame["taken_at_ns"].as_u64().unwrap() - previous["taken_at_ns"].as_u64().unwrap()) as f64 / 1e9;
        let delta = |name: &str| {
            let stat = |region: &serde_json::Value| region["queue_pairs"][0]["stats"][name].as_u64().unwrap();
            (stat(&now) - stat(&before)) as f64
        };
        let rates = &frame["rates"];
        assert!((rates["interval_seconds"].as_f64().unwrap() - seconds).abs() < 1e-9, "{rates}");
        let queue_pair = rates["queue_pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rates| rates["region_id"] == region_id && rates["queue_pair"] == 0)
            .expect("queue pair 0 has rates");
        let region = rates["regions"].as_array().unwrap().iter().find(|rates| rates["region_id"] == region_id).unwrap();
        let expected = [
            ("sqes_per_sec", delta("sqes_taken") / seconds),
            ("reads_per_sec", (delta("cqes_posted") - delta("errors")) / seconds),
            ("errors_per_sec", delta("errors") / seconds),
            ("bytes_per_sec", delta("bytes_read") / seconds),
        ];
        for (name, value) in expected {
            let shown = queue_pair[name].as_f64().unwrap();
            assert!((shown - value).abs() <= 1e-6 * value.max(1.0), "{name}: {shown} shown, {value} from the counters");
            assert_eq!(region[name], queue_pair[name], "one queue pair: the region's sum is its rate");
        }
        saw_both |=
            queue_pair["reads_per_sec"].as_f64().unwrap() > 0.0 && queue_pair["errors_per_sec"].as_f64().unwrap() > 0.0;
        previous = frame;
    }
    assert!(saw_both, "no frame saw both reads and errors under load");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let mut idle = false;
    for _ in 0..50 {
        let frame = next_frame();
        let region_id = region_of(&frame)["region_id"].as_u64().unwrap();
        let rates =
            frame["rates"]["regions"].as_array().unwrap().iter().find(|rates| rates["region_id"] == region_id).cloned();
        if rates.is_some_and(|rates| rates["sqes_per_sec"] == 0.0 && rates["errors_per_sec"] == 0.0) {
            idle = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(idle, "the rates never dropped to zero without load");

    // The text form: rates per region and queue pair from the second frame on.
    let mut text_watch = Command::new(env!("CARGO_BIN_EXE_ringstat"))
        .arg("--socket")
        .arg(&engine.socket)
        .args(["--watch", "--interval-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut reader = BufReader::new(text_watch.stdout.take().unwrap());
    // Bounded: a frame comes every 100 ms; the second one carries the rates.
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        text.push_str(&line);
        if text.matches("reads/s").count() >= 2 {
            break;
        }
    }
    let _ = text_watch.kill();
    let _ = text_watch.wait();
    assert!(text.contains("rates over the last"), "{text}");
    assert!(text.contains("  rate 0 SQEs/s, 0 reads/s, 0 errors/s, 0.0 MB/s"), "{text}");
    drop(client);
}
