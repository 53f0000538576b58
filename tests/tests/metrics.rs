//! `/metrics` of a live engine under load: the counters match what the clients did.

use integration_tests::{fixture, free_port, live_needles, open_volume, Engine};
use rdma_client::{AttachOptions, Client, ErrorCode, Operation};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

/// How long a value published about once a second may take to show.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(10);

fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: engine\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The samples of `name` whose labels include every `label="value"` of `labels`.
fn samples_with(text: &str, name: &str, labels: &[&str]) -> Vec<u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (series, value) = rest.split_once("} ")?;
            labels.iter().all(|label| series.split(',').any(|pair| pair == *label)).then_some(value)
        })
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .collect()
}

/// Scrapes until `done` holds for the text (bounded by [`PUBLISHED_WITHIN`]).
fn scrape_until(address: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PUBLISHED_WITHIN;
    loop {
        let text = scrape(address);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never showed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics_address() -> String {
    format!("127.0.0.1:{}", free_port("127.0.0.1"))
}

/// A volume `volume_id` of `count` needles (ids 1.., cookies 0x100 + id) in `dir`, with its
/// writer left open for appends.
fn small_volume(dir: &std::path::Path, volume_id: u32, count: u64) -> VolumeWriter {
    let mut writer = VolumeWriter::create_in(dir, None, volume_id, VolumeWriterOptions::default()).unwrap();
    for needle_id in 1..=count {
        append(&mut writer, needle_id);
    }
    writer
}

fn append(writer: &mut VolumeWriter, needle_id: u64) {
    let data = vec![needle_id as u8; 1000 + needle_id as usize];
    let spec = NeedleSpec { needle_id, cookie: 0x100 + needle_id as u32, data: &data, ..Default::default() };
    writer.append(&spec).unwrap();
    writer.flush().unwrap();
}

/// Reads in flight per queue pair come from the stats blocks, labelled by client and queue
/// pair, and go with the client; local index loads are counted by why.
#[test]
fn reads_in_flight_per_queue_pair_and_index_refreshes() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = small_volume(dir.path(), 5, 3);
    // A volume server that never answers: the kernel accepts its connections, nobody reads
    // them, so fallback reads stay in flight until the listener is dropped.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let volume_server = black_hole.local_addr().unwrap().to_string();
    let address = metrics_address();
    let volume_dir = dir.path().display().to_string();
    let engine =
        Engine::start(&["--volume-dir", &volume_dir, "--volume-server", &volume_server, "--metrics-listen", &address]);
    let refreshes = |text: &str, reason: &str| -> u64 {
        sample(text, &format!("seaweedfs_rdma_index_refreshes_total{{reason=\"{reason}\"}}"))
    };
    let text = scrape(&address);
    assert_eq!((refreshes(&text, "opened"), refreshes(&text, "appended")), (1, 0), "{text}");

    let options = AttachOptions { queue_pairs: 2, ..AttachOptions::default() };
    let client = Client::attach(&engine.socket, &options).unwrap();
    let mut idle = client.take_queue_pair(0).unwrap();
    let mut busy = client.take_queue_pair(1).unwrap();
    assert!(integration_tests::read_needle(&client, &mut idle, (5, 2, 0x102), 1 << 20).result().is_ok());
    for tag in 0..3u64 {
        let buffer = client.allocate(64 << 10).unwrap();
        busy.prepare(Operation::ReadNeedle { volume_id: 99, needle_id: 1 + tag, cookie: 1, buffer }, tag).unwrap();
    }
    busy.submit().unwrap();
    let pid = format!("client_pid=\"{}\"", std::process::id());
    let name = "seaweedfs_rdma_queue_pair_reads_in_flight";
    let text = scrape_until(&address, "3 reads in flight on queue pair 1", |text| {
        samples_with(text, name, &[&pid, "queue_pair=\"1\""]) == [3]
    });
    assert_eq!(samples_with(&text, name, &[&pid, "queue_pair=\"0\""]), [0], "{text}");

    // The volume server goes away: the reads fail, and nothing is in flight any more.
    drop(black_hole);
    assert_eq!(busy.wait(3, Duration::from_secs(20)).unwrap(), 3);
    for _ in 0..3 {
        assert!(busy.reap_one().unwrap().unwrap().result().is_err());
    }
    scrape_until(&address, "0 reads in flight on queue pair 1", |text| {
        samples_with(text, name, &[&pid, "queue_pair=\"1\""]) == [0]
    });

    // A needle appended after start: its index entry is replayed once.
    append(&mut writer, 4);
    assert!(integration_tests::read_needle(&client, &mut idle, (5, 4, 0x104), 1 << 20).result().is_ok());
    let text = scrape(&address);
    assert_eq!((refreshes(&text, "opened"), refreshes(&text, "appended")), (1, 1), "{text}");
    assert_eq!(refreshes(&text, "replaced"), 0, "{text}");

    // The client detaches: its series go once its region is reclaimed.
    drop((idle, busy, client));
    scrape_until(&address, "the detached client's series gone", |text| samples_with(text, name, &[&pid]).is_empty());
}

/// The exporter's catalogue generation moves when an exported volume grows, and the reader
/// reports the generation it last saw from that exporter.
#[test]
fn catalogue_generations_move_when_an_exported_volume_grows() {
    const TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];
    let dir = tempfile::tempdir().unwrap();
    let mut writer = small_volume(dir.path(), 4, 3);
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let (export_metrics, read_metrics) = (metrics_address(), metrics_address());
    let export_dir = dir.path().display().to_string();
    let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
    let exporter = Engine::start_with_env(
        &args(&["--export-dir", &export_dir, "--listen", &listen, "--metrics-listen", &export_metrics]),
        TCP,
    );
    let reader = Engine::start_with_env(&args(&["--peer", &listen, "--metrics-listen", &read_metrics]), TCP);
    let exported = |text: &str| sample(text, "seaweedfs_rdma_export_catalogue_generation");
    let seen_by_reader =
        |text: &str| sample(text, &format!("seaweedfs_rdma_peer_catalogue_generation{{peer=\"{listen}\"}}"));
    let first = exported(&scrape(&export_metrics));
    assert!(first >= 1, "{}", exporter.log_text());
    scrape_until(&read_metrics, "the exporter's generation at the reader", |text| seen_by_reader(text) == first);

    append(&mut writer, 4);
    let text = scrape_until(&export_metrics, "a new catalogue generation", |text| exported(text) > first);
    let grown = exported(&text);
    scrape_until(&read_metrics, "the new generation at the reader", |text| seen_by_reader(text) == grown);
    let client = Client::attach(&reader.socket, &AttachOptions::default()).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (4, 4, 0x104), 1 << 20);
    assert!(completion.result().is_ok(), "{:?}\n{}", completion.result(), reader.log_text());
    assert_eq!(completion.source(), rdma_client::ReadSource::Rdma);
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
    // One `# TYPE` line per name: strict parsers refuse a second.
    let types: Vec<&str> = text.lines().filter(|line| line.starts_with("# TYPE ")).collect();
    let distinct: std::collections::HashSet<&&str> = types.iter().collect();
    assert_eq!(distinct.len(), types.len(), "a metric's TYPE line repeats:\n{text}");
    // By volume: published by the poller about once a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sample(&scrape(&address), "seaweedfs_rdma_volume_reads_total{volume=\"1\"}") != loop_reads {
        assert!(std::time::Instant::now() < deadline, "reads by volume never matched: {}", scrape(&address));
        std::thread::sleep(Duration::from_millis(50));
    }
}
