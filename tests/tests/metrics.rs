//! `/metrics` of a live engine under load: the counters match what the clients did.

use integration_tests::{fixture, free_port, live_needles, open_volume, Engine};
use rdma_client::{AttachOptions, Client, ErrorCode};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: engine\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The value of the sample `name{labels}` (exactly as written), or 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

#[test]
fn counters_match_what_the_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    for extension in ["dat", "idx"] {
        std::fs::copy(fixture(&format!("healthy_volume.{extension}")), dir.path().join(format!("1.{extension}")))
            .unwrap();
    }
    let volume = open_volume(dir.path(), 1);
    let needles = live_needles(&volume);
    let address = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let volume_dir = dir.path().display().to_string();
    let engine = Engine::start(&["--volume-dir", &volume_dir, "--metrics-listen", &address]);

    // Load while scraping: a thread reads every needle over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let (socket, loop_needles, loop_stop) = (engine.socket.clone(), needles.clone(), stop.clone());
    let load = std::thread::spawn(move || {
        let client = Client::attach(&socket, &AttachOptions::default()).unwrap();
        let mut queue_pair = client.take_queue_pair(0).unwrap();
        let mut reads = 0u64;
        while !loop_stop.load(Ordering::Relaxed) {
            for &(needle_id, cookie) in &loop_needles {
                let completion =
                    integration_tests::read_needle(&client, &mut queue_pair, (1, needle_id, cookie), 1 << 20);
                assert!(completion.result().is_ok());
                reads += 1;
            }
        }
        reads
    });
    let mut last = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample(&scrape(&address), "seaweedfs_rdma_reads_total{source=\"local\"}");
        assert!(now >= last, "a counter went backwards: {last} then {now}");
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let loop_reads = load.join().unwrap();

    // Errors of known codes, from a second client.
    let client = Client::attach(&engine.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    let (needle_id, cookie) = needles[0];
    let wrong_cookie = integration_tests::read_needle(&client, &mut queue_pair, (1, needle_id, cookie ^ 1), 1 << 20);
    let missing = integration_tests::read_needle(&client, &mut queue_pair, (1, 0xdead_beef, 7), 1 << 20);
    let no_volume = integration_tests::read_needle(&client, &mut queue_pair, (99, needle_id, cookie), 1 << 20);
    let code = |completion: &rdma_client::Completion| completion.cqe.error_code();
    assert_eq!(code(&wrong_cookie), Some(ErrorCode::COOKIE_MISMATCH));
    assert_eq!(code(&missing), Some(ErrorCode::NO_SUCH_NEEDLE));
    assert_eq!(code(&no_volume), Some(ErrorCode::NO_SUCH_VOLUME));

    let text = scrape(&address);
    assert_eq!(sample(&text, "seaweedfs_rdma_reads_total{source=\"local\"}"), loop_reads, "{text}");
    assert_eq!(sample(&text, "seaweedfs_rdma_reads_total{source=\"rdma\"}"), 0);
    assert_eq!(sample(&text, "seaweedfs_rdma_reads_total{source=\"http\"}"), 0);
    for name in ["COOKIE_MISMATCH", "NO_SUCH_NEEDLE", "NO_SUCH_VOLUME"] {
        assert_eq!(sample(&text, &format!("seaweedfs_rdma_errors_total{{code=\"{name}\"}}")), 1, "{name}: {text}");
    }
    assert_eq!(sample(&text, "seaweedfs_rdma_errors_total{code=\"CRC_MISMATCH\"}"), 0);
    // The wrong cookie and the missing needle were local reads too; volume 99 is no one's.
    assert_eq!(sample(&text, "seaweedfs_rdma_read_latency_seconds_count{source=\"local\"}"), loop_reads + 2);
    // The load thread's client is gone once its region is reclaimed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sample(&scrape(&address), "seaweedfs_rdma_attached_clients") != 1 {
        assert!(std::time::Instant::now() < deadline, "attached_clients never went back to 1");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(text.contains("# TYPE seaweedfs_rdma_read_latency_seconds histogram"), "{text}");
    // By volume: published by the poller about once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sample(&scrape(&address), "seaweedfs_rdma_volume_reads_total{volume=\"1\"}") != loop_reads {
        assert!(std::time::Instant::now() < deadline, "reads by volume never matched: {}", scrape(&address));
        std::thread::sleep(Duration::from_millis(50));
    }
}
