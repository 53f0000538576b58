//! The remote path end to end with real processes: an exporting engine, a
//! reading engine, a client of the reader. The default engines' stream transport, and real
//! UCX over tcp and over shared memory in the opt-in mode (`--transport ucx
//! --allow-ucx-software-rma`, added by the test library for engines given `UCX_TLS`), and
//! across a network namespace (a second "host") when the machine allows it.

use integration_tests::{
    cookie_of, fixture, free_port, live_needles, open_volume, spawn_attached_client, Engine, EngineOptions,
};
use rdma_client::{AttachOptions, Client, Completion, CompletionError, ErrorCode, Operation, QueuePair, ReadSource};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use volume_format::needle::NeedleRecord;
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

/// The default engines: no flag, no environment (the stream transport on this host).
const STREAM: &[(&str, &str)] = &[];
const TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];
const SHARED_MEMORY: &[(&str, &str)] = &[("UCX_TLS", "sm,tcp"), ("UCX_MM_ERROR_HANDLING", "y")];

fn options(args: Vec<String>, env: &[(&str, &str)]) -> EngineOptions {
    EngineOptions {
        args,
        env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
        prefix: Vec::new(),
    }
}

/// Volumes the exporter serves: the fixtures (1 healthy, 2 legacy CRC, 3
/// bitrot) and a generated one (4).
fn volume_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (stem, volume_id) in [("healthy_volume", 1), ("legacy_crc_volume", 2), ("bitrot_volume", 3)] {
        for extension in ["dat", "idx"] {
            std::fs::copy(fixture(&format!("{stem}.{extension}")), dir.path().join(format!("{volume_id}.{extension}")))
                .unwrap();
        }
    }
    let mut writer = VolumeWriter::create_in(dir.path(), None, 4, VolumeWriterOptions::default()).unwrap();
    for index in 0..40u64 {
        let data: Vec<u8> = (0..(index * 7919) as usize).map(|byte| (byte as u64 ^ index) as u8).collect();
        writer
            .append(&NeedleSpec {
                needle_id: 10 + index,
                cookie: 0xc0 + index as u32,
                data: &data,
                ..Default::default()
            })
            .unwrap();
    }
    writer.finish().unwrap();
    dir
}

/// An exporter of `volumes` on a free port, with `extra` flags; and its `--listen` address.
fn exporter(volumes: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Engine, String) {
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let mut export_args = vec!["--export-dir".into(), volumes.display().to_string(), "--listen".into(), listen.clone()];
    export_args.extend(extra.iter().map(|arg| arg.to_string()));
    (Engine::start_with(tempfile::tempdir().unwrap(), options(export_args, env)), listen)
}

/// An exporter on a free port and a reader peered with it.
fn exporter_and_reader(volumes: &Path, env: &[(&str, &str)]) -> (Engine, Engine, String) {
    let (exporter, listen) = exporter(volumes, &[], env);
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(vec!["--peer".into(), listen.clone()], env));
    (exporter, reader, listen)
}

fn attach(engine: &Engine) -> (Client, QueuePair) {
    let options = AttachOptions { buffer_size_bytes: 128 << 20, sq_entries: 64, ..AttachOptions::default() };
    let client = Client::attach(&engine.socket, &options).unwrap();
    let queue_pair = client.take_queue_pair(0).unwrap();
    (client, queue_pair)
}

fn read_one(client: &Client, queue_pair: &mut QueuePair, volume_id: u32, needle_id: u64, cookie: u32) -> Completion {
    integration_tests::read_needle(client, queue_pair, (volume_id, needle_id, cookie), 2 << 20)
}

/// Reads every live needle of every volume through the reader and compares
/// with SeaweedFS's own reading of the files. Returns (read, failed their CRC).
fn read_everything_and_compare(volumes: &Path, reader: &Engine) -> (usize, Vec<(u32, u64)>) {
    read_everything_from(volumes, reader, ReadSource::Rdma)
}

/// [`read_everything_and_compare`], each read served by `source`.
fn read_everything_from(volumes: &Path, reader: &Engine, source: ReadSource) -> (usize, Vec<(u32, u64)>) {
    let (client, mut queue_pair) = attach(reader);
    let mut read_ok = 0;
    let mut crc_failures = Vec::new();
    for volume_id in 1..=4u32 {
        let volume = open_volume(volumes, volume_id);
        for (needle_id, cookie) in live_needles(&volume) {
            let completion = read_one(&client, &mut queue_pair, volume_id, needle_id, cookie);
            let reference = volume.read_checked(needle_id, cookie).ok();
            match (completion.result(), reference) {
                (Ok(_), Some(record)) => {
                    let expected = NeedleRecord::parse(&record, volume.version()).unwrap();
                    let range = completion.data_range().unwrap();
                    assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], expected.data);
                    assert_eq!(completion.gzipped(), expected.is_gzipped());
                    assert_eq!(completion.source(), source);
                    read_ok += 1;
                }
                (Err(CompletionError::Engine { code: ErrorCode::CRC_MISMATCH, .. }), None) => {
                    crc_failures.push((volume_id, needle_id))
                }
                (result, reference) => {
                    panic!("volume {volume_id} needle {needle_id:#x}: {result:?}, reference ok={}", reference.is_some())
                }
            }
        }
    }
    (read_ok, crc_failures)
}

#[test]
fn every_needle_over_tcp_is_byte_identical_to_the_local_reading() {
    let volumes = volume_dir();
    let (_exporter, reader, _) = exporter_and_reader(volumes.path(), TCP);
    let (read_ok, crc_failures) = read_everything_and_compare(volumes.path(), &reader);
    assert_eq!(read_ok, 7 + 298 + 5 + 40);
    assert_eq!(crc_failures, vec![(3, 0x3), (3, 0x30)]);
}

/// Reads split into many 4 KiB gets (`--rdma-get-max-kib 4`: up to 78 gets per needle here, 4
/// in flight, the rest in rounds) land byte for byte as whole gets do.
#[test]
fn reads_split_into_small_gets_are_byte_identical() {
    let volumes = volume_dir();
    let (_exporter, listen) = exporter(volumes.path(), &[], TCP);
    let args = vec!["--peer".into(), listen, "--rdma-get-max-kib".into(), "4".into()];
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(args, TCP));
    let (read_ok, crc_failures) = read_everything_and_compare(volumes.path(), &reader);
    assert_eq!(read_ok, 7 + 298 + 5 + 40);
    assert_eq!(crc_failures, vec![(3, 0x3), (3, 0x30)]);
}

#[test]
fn every_needle_over_shared_memory_is_byte_identical_to_the_local_reading() {
    let volumes = volume_dir();
    let (_exporter, reader, _) = exporter_and_reader(volumes.path(), SHARED_MEMORY);
    let (read_ok, crc_failures) = read_everything_and_compare(volumes.path(), &reader);
    assert_eq!(read_ok, 7 + 298 + 5 + 40);
    assert_eq!(crc_failures, vec![(3, 0x3), (3, 0x30)]);
}

#[test]
fn exporter_killed_mid_read_fails_reads_cleanly_and_the_reader_reconnects() {
    exporter_killed_mid_read(TCP, ReadSource::Rdma);
}

#[test]
fn exporter_killed_mid_read_over_the_stream_transport_fails_reads_cleanly_and_the_reader_reconnects() {
    exporter_killed_mid_read(STREAM, ReadSource::Stream);
}

/// 48 reads in flight when the exporter is SIGKILLed: each completes (right bytes or
/// `PEER_UNAVAILABLE`), and the reader reads over `source` again once the exporter is back.
fn exporter_killed_mid_read(env: &[(&str, &str)], source: ReadSource) {
    let volumes = volume_dir();
    let (mut exporter, reader, _) = exporter_and_reader(volumes.path(), env);
    let (client, mut queue_pair) = attach(&reader);
    // The largest generated needle: 39 * 7919 bytes.
    let (volume_id, needle_id, cookie) = (4, 49, 0xc0 + 39);
    assert!(read_one(&client, &mut queue_pair, volume_id, needle_id, cookie).result().is_ok());
    for tag in 0..48 {
        let buffer = client.allocate(1 << 20).unwrap();
        queue_pair.prepare(Operation::ReadNeedle { volume_id, needle_id, cookie, buffer }, tag).unwrap();
    }
    queue_pair.submit().unwrap();
    nix::sys::signal::kill(exporter.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut outcomes = Vec::new();
    while outcomes.len() < 48 {
        queue_pair.wait(1, Duration::from_secs(30)).expect("every read completes after the exporter died");
        while let Some(completion) = queue_pair.reap_one().unwrap() {
            outcomes.push(completion.result());
        }
    }
    assert!(
        outcomes.iter().all(|outcome| matches!(
            outcome,
            Ok(_) | Err(CompletionError::Engine { code: ErrorCode::PEER_UNAVAILABLE, .. })
        )),
        "{outcomes:?}"
    );
    exporter.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let completion = read_one(&client, &mut queue_pair, volume_id, needle_id, cookie);
        if completion.result().is_ok() {
            assert_eq!(completion.source(), source);
            break;
        }
        assert!(Instant::now() < deadline, "the reader never reconnected: {:?}", completion.result());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn client_killed_with_reads_in_flight_is_reclaimed_after_they_land() {
    let volumes = volume_dir();
    let (_exporter, reader, _) = exporter_and_reader(volumes.path(), TCP);
    for round in 0..3 {
        let cookie = format!("{:x}", 0xc0 + 21);
        let args = ["read-loop".as_ref(), reader.socket.as_os_str(), "4".as_ref(), "31".as_ref(), cookie.as_ref()];
        let (mut child, _stdout) = spawn_attached_client(env!("CARGO_BIN_EXE_test-client"), &args);
        std::thread::sleep(Duration::from_millis(20 + round * 30));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let _ = child.wait();
        assert!(
            reader.wait_for_region_count(0, Duration::from_secs(20)),
            "region not reclaimed; log:\n{}",
            reader.log_text()
        );
    }
    assert_eq!(reader.open_region_memfds(), 0);
    // The reader still serves.
    let (client, mut queue_pair) = attach(&reader);
    assert!(read_one(&client, &mut queue_pair, 4, 31, 0xc0 + 21).result().is_ok());
}

#[test]
fn reads_beyond_a_queue_pairs_share_wait_their_turn_and_all_complete() {
    let volumes = volume_dir();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let export_args =
        vec!["--export-dir".into(), volumes.path().display().to_string(), "--listen".into(), listen.clone()];
    let _exporter = Engine::start_with(tempfile::tempdir().unwrap(), options(export_args, TCP));
    let reader_args = vec!["--peer".into(), listen, "--rdma-reads-per-queue-pair".into(), "3".into()];
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(reader_args, TCP));
    let (client, mut queue_pair) = attach(&reader);
    let volume = open_volume(volumes.path(), 4);
    let needles = live_needles(&volume);
    for &(needle_id, cookie) in &needles {
        let buffer = client.allocate(1 << 20).unwrap();
        queue_pair.prepare(Operation::ReadNeedle { volume_id: 4, needle_id, cookie, buffer }, needle_id).unwrap();
    }
    queue_pair.submit().unwrap();
    let mut done = 0;
    while done < needles.len() {
        queue_pair.wait(1, Duration::from_secs(20)).unwrap();
        while let Some(completion) = queue_pair.reap_one().unwrap() {
            let record = volume.read_checked(completion.tag, cookie_of(&volume, completion.tag)).unwrap();
            let expected = NeedleRecord::parse(&record, volume.version()).unwrap();
            let range = completion.data_range().expect("a successful read");
            assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], expected.data);
            done += 1;
        }
    }
    assert_eq!(done, 40);
}

#[test]
fn exporter_refuses_readers_not_on_its_allow_list() {
    let volumes = volume_dir();
    let (exporter, listen) = exporter(volumes.path(), &["--allow-peer", "192.0.2.1"], TCP);
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(vec!["--peer".into(), listen], TCP));
    let (client, mut queue_pair) = attach(&reader);
    let completion = read_one(&client, &mut queue_pair, 4, 31, 0xc0 + 21);
    assert!(completion.result().is_err(), "a refused reader must not read");
    assert!(exporter.wait_for_log("refusing a reader not in the allowed peers", Duration::from_secs(5)));
}

/// A network namespace with a veth pair: a second host on this machine.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(name: &str, host_address: &str, peer_address: &str) -> Result<Namespace, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let output = Command::new("ip").args(args).output().map_err(|error| format!("ip: {error}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
            }
        };
        run(&["netns", "add", name])?;
        let namespace = Namespace { name: name.to_string() };
        let host_link = format!("{name}-h");
        let peer_link = format!("{name}-p");
        run(&["link", "add", &host_link, "type", "veth", "peer", "name", &peer_link])?;
        run(&["link", "set", &peer_link, "netns", name])?;
        run(&["addr", "add", &format!("{host_address}/24"), "dev", &host_link])?;
        run(&["link", "set", &host_link, "up"])?;
        run(&["netns", "exec", name, "ip", "addr", "add", &format!("{peer_address}/24"), "dev", &peer_link])?;
        run(&["netns", "exec", name, "ip", "link", "set", &peer_link, "up"])?;
        run(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &format!("{}-h", self.name)]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn two_hosts_over_a_veth_pair_with_tcp() {
    read_across_two_hosts(TCP, ReadSource::Rdma, 0);
}

#[test]
fn two_hosts_over_a_veth_pair_with_the_stream_transport() {
    read_across_two_hosts(STREAM, ReadSource::Stream, 1);
}

/// An exporter in a network namespace of its own (a second host, over a veth pair) and a
/// reader here; `instance` keeps the namespaces of tests running at once apart.
fn read_across_two_hosts(env: &[(&str, &str)], source: ReadSource, instance: u32) {
    let name = format!("rdmat{}{instance}", std::process::id() % 10_000);
    let subnet = 100 + (std::process::id() % 50) * 2 + instance;
    let (host_address, peer_address) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
    let namespace = match Namespace::create(&name, &host_address, &peer_address) {
        Ok(namespace) => namespace,
        Err(reason) => {
            let reason = format!("cannot make a network namespace here ({reason}); needs root and iproute2");
            integration_tests::skip_or_fail("netns", &reason);
            return;
        }
    };
    let volumes = volume_dir();
    let listen = format!("{peer_address}:{}", 20_000 + std::process::id() % 20_000);
    let exporter = Engine::start_with(
        tempfile::tempdir().unwrap(),
        EngineOptions {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), namespace.name.clone()],
            ..options(
                vec!["--export-dir".into(), volumes.path().display().to_string(), "--listen".into(), listen.clone()],
                env,
            )
        },
    );
    // The reader's UCX on the veth only (as the start-up report asks of a reader): with every
    // device, it offered the exporter addresses on the other test's veth as well, and the
    // exporter (on its own veth only) timed out on them.
    let device = format!("{}-h", namespace.name);
    let mut reader_env = env.to_vec();
    if source == ReadSource::Rdma {
        reader_env.push(("UCX_NET_DEVICES", &device));
    }
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(vec!["--peer".into(), listen], &reader_env));
    // The reader reaches its exporter in the background (bounded by its connect timeout at
    // start, then retried): a read before the exporter's volume list would find no volume.
    let reached = ["exporter connected", "exporter's volume list"];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reached.iter().any(|line| reader.log_text().contains(line)) {
        assert!(
            Instant::now() < deadline,
            "the reader never reached its exporter:\n{}\n--- the exporter's log:\n{}",
            reader.log_text(),
            exporter.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (read_ok, crc_failures) = read_everything_from(volumes.path(), &reader, source);
    assert_eq!(read_ok, 7 + 298 + 5 + 40);
    assert_eq!(crc_failures, vec![(3, 0x3), (3, 0x30)]);
    drop(reader);
    drop(exporter);
}

/// A read's deadline holds in every state, also while it waits for an index pull from an
/// exporter that stopped answering (it used to wait there forever).
#[test]
fn a_read_waiting_for_a_hung_exporters_index_ends_at_its_deadline() {
    let volumes = volume_dir();
    let (exporter, reader, _) = exporter_and_reader(volumes.path(), TCP);
    let (client, mut queue_pair) = attach(&reader);
    // Connected, catalogue known; volume 4's index is not pulled until a read needs it.
    assert!(reader.wait_for_log("exporter connected", Duration::from_secs(10)), "{}", reader.log_text());
    integration_tests::stop_process(exporter.pid().as_raw() as u32);
    let buffer = client.allocate(1 << 20).unwrap();
    let operation = Operation::ReadNeedle { volume_id: 4, needle_id: 31, cookie: 0xc0 + 21, buffer };
    let deadline_ns = rdma_ipc::clock::monotonic_ns() + 300_000_000;
    queue_pair.prepare_with_deadline(operation, 7, deadline_ns).unwrap();
    queue_pair.submit().unwrap();
    let waited = queue_pair.wait(1, Duration::from_secs(20));
    nix::sys::signal::kill(exporter.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    waited.unwrap();
    let completion = queue_pair.reap_one().unwrap().expect("the read completed");
    match completion.result() {
        Err(CompletionError::Engine { code: ErrorCode::DEADLINE_EXCEEDED, .. }) => {}
        other => panic!("expected DEADLINE_EXCEEDED, got {other:?}"),
    }
}

/// Dropping a queue pair with reads in flight used to hand their buffers back to the
/// allocator while a GET could still land in them, so a new buffer could receive another
/// read's bytes. They are quarantined now: buffers allocated after the drop stay as they are
/// when the stalled GETs finally land.
#[test]
fn buffers_of_reads_in_flight_are_not_reused_when_their_queue_pair_is_dropped() {
    let volumes = volume_dir();
    let (exporter, reader, _) = exporter_and_reader(volumes.path(), TCP);
    let options = AttachOptions { buffer_size_bytes: 8 << 20, sq_entries: 64, ..AttachOptions::default() };
    let client = Client::attach(&reader.socket, &options).unwrap();
    let mut queue_pair = client.take_queue_pair(0).unwrap();
    // Warm: volume 4's index is cached, so the next reads go straight to their gets.
    assert!(read_one(&client, &mut queue_pair, 4, 49, 0xc0 + 39).result().is_ok());
    integration_tests::stop_process(exporter.pid().as_raw() as u32);
    for (tag, needle_id) in (40..44u64).enumerate() {
        let buffer = client.allocate(1 << 20).unwrap();
        let cookie = 0xc0 + (needle_id - 10) as u32;
        let operation = Operation::ReadNeedle { volume_id: 4, needle_id, cookie, buffer };
        queue_pair.prepare(operation, tag as u64).unwrap();
    }
    queue_pair.submit().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(queue_pair);
    let fresh: Vec<_> = (0..4).map(|_| client.allocate(1 << 20).unwrap()).collect();
    let before: Vec<Vec<u8>> = fresh.iter().map(|buffer| client.bytes(buffer).to_vec()).collect();
    nix::sys::signal::kill(exporter.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    // Let the stalled gets land (they complete well within the reader's read timeout).
    std::thread::sleep(Duration::from_millis(1000));
    for (buffer, before) in fresh.iter().zip(&before) {
        assert!(client.bytes(buffer) == &before[..], "a late GET wrote into a buffer allocated after the drop");
    }
}

/// An exporter given SeaweedFS's read key answers only readers whose catalogue requests carry
/// a token signed with it: the right key reads over RDMA; a wrong key or none is refused
/// (with a log line naming the peer) before any catalogue or rkey leaves the exporter.
#[test]
fn readers_must_present_a_token_signed_with_the_read_key() {
    let volumes = volume_dir();
    let keys = tempfile::tempdir().unwrap();
    let write_key = |name: &str, key: &str| integration_tests::security_toml(keys.path(), name, key);
    let (right, wrong) = (write_key("right.toml", "the-read-key"), write_key("wrong.toml", "another-key"));
    let (exporter, listen) = exporter(volumes.path(), &["--security-toml", &right], TCP);
    let reader = |key: Option<&str>, extra: &[&str]| {
        let mut args = vec!["--peer".to_string(), listen.clone()];
        if let Some(key) = key {
            args.extend(["--security-toml".to_string(), key.to_string()]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Engine::start_with(tempfile::tempdir().unwrap(), options(args, TCP))
    };
    let trusted = reader(Some(&right), &[]);
    let (client, mut queue_pair) = attach(&trusted);
    let completion = read_one(&client, &mut queue_pair, 4, 31, 0xc0 + 21);
    assert!(completion.result().is_ok(), "{:?}\n{}", completion.result(), exporter.log_text());
    assert_eq!(completion.source(), ReadSource::Rdma);

    // The right key on a reader whose clock is an hour behind: its tokens expired long ago.
    let an_hour_behind: &[&str] = &["--read-token-backdate-secs", "3600"];
    for (key, extra, why) in [
        (Some(wrong.as_str()), &[][..], "signature does not match"),
        (None, &[][..], "no token"),
        (Some(right.as_str()), an_hour_behind, "the token has expired"),
    ] {
        let stranger = reader(key, extra);
        let (client, mut queue_pair) = attach(&stranger);
        let completion = read_one(&client, &mut queue_pair, 4, 31, 0xc0 + 21);
        assert!(completion.result().is_err(), "a reader with {key:?} read the volume");
        assert!(
            exporter.wait_for_log(why, Duration::from_secs(10)),
            "no refusal for {key:?}:\n{}",
            exporter.log_text()
        );
        let log = exporter.log_text();
        let named = log.lines().any(|line| {
            line.contains(why) && line.contains("refusing a reader without a valid read token peer=127.0.0.1")
        });
        assert!(named, "the refusal for {key:?} does not name the peer:\n{log}");
        assert!(stranger.log_text().contains("not reachable") || !stranger.log_text().contains("exporter connected"));
    }
}

/// Reads `(volume_id, needle_id, cookie)` until a read succeeds over RDMA (bounded: 30 s), as
/// the reader reconnects to its exporter.
fn read_over_rdma_again(client: &Client, queue_pair: &mut QueuePair, (volume_id, needle_id, cookie): (u32, u64, u32)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let completion = read_one(client, queue_pair, volume_id, needle_id, cookie);
        if completion.result().is_ok() && completion.source() == ReadSource::Rdma {
            return;
        }
        assert!(Instant::now() < deadline, "no RDMA read within 30 s: {:?}", completion.result());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The engine processes a supervisor (`--supervise`, pid `parent`) runs: read from
/// `/proc/PID/task/PID/children`.
fn wait_for_new_child(parent: nix::unistd::Pid, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let children = integration_tests::children_of(parent.as_raw() as u32);
        if let Some(child) = children.into_iter().map(|child| child as i32).find(|&child| Some(child) != not) {
            return child;
        }
        assert!(Instant::now() < deadline, "the supervisor started no new engine");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// UCX aborts an exporter on some peer failures (over tcp, a reader killed while its gets
/// are in flight: `ucs_fatal` in `ucp_get_req_handler`). Under `--supervise` the exporter
/// comes back at once: an abort of the engine process (SIGABRT, as UCX's) is restarted, the
/// reader reconnects and reads over RDMA again; SIGTERM stops both processes cleanly, and
/// killing the supervisor leaves no engine behind.
#[test]
fn a_supervised_exporter_that_aborts_is_restarted_and_readers_reconnect() {
    use nix::sys::signal::{kill, Signal};
    let volumes = volume_dir();
    let (mut exporter, listen) = exporter(volumes.path(), &["--supervise"], TCP);
    let reader = Engine::start_with(tempfile::tempdir().unwrap(), options(vec!["--peer".into(), listen], TCP));
    let (client, mut queue_pair) = attach(&reader);
    let needle = (4, 49, 0xc0 + 39);
    read_over_rdma_again(&client, &mut queue_pair, needle);
    let parent = exporter.pid();
    let first = wait_for_new_child(parent, None);
    kill(nix::unistd::Pid::from_raw(first), Signal::SIGABRT).unwrap();
    assert!(exporter.wait_for_log("died of a signal", Duration::from_secs(10)), "{}", exporter.log_text());
    let second = wait_for_new_child(parent, Some(first));
    read_over_rdma_again(&client, &mut queue_pair, needle);

    kill(parent, Signal::SIGTERM).unwrap();
    let status = exporter.child.wait().unwrap();
    assert!(status.success(), "supervisor exit after SIGTERM: {status}");
    assert!(!Path::new(&format!("/proc/{second}")).exists(), "the engine outlived its supervisor's stop");

    exporter.restart();
    let parent = exporter.pid();
    let child = wait_for_new_child(parent, None);
    kill(parent, Signal::SIGKILL).unwrap();
    let _ = exporter.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A zombie until init reaps it: that counts as gone.
    while integration_tests::is_running(child as u32) {
        assert!(Instant::now() < deadline, "the engine outlived its killed supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A same-host exporter that takes connections and never answers them (here: restarted, then
/// SIGSTOPped; in the fault campaign: a UCX shared-memory receive queue left stuck by a killed
/// sender, see docs/robustness.md) makes the reader renew its UCX worker after two unanswered
/// handshakes, and the reader reads over RDMA through the new worker once the exporter answers.
#[test]
fn a_reader_renews_its_worker_when_a_same_host_exporter_never_answers() {
    let volumes = volume_dir();
    let (mut exporter, reader, _) = exporter_and_reader(volumes.path(), SHARED_MEMORY);
    let (client, mut queue_pair) = attach(&reader);
    let (volume_id, needle_id, cookie) = (4, 49, 0xc0 + 39);
    assert!(read_one(&client, &mut queue_pair, volume_id, needle_id, cookie).result().is_ok());
    exporter.restart();
    integration_tests::stop_process(exporter.pid().as_raw() as u32);
    let renewed = reader.wait_for_log("renewing the UCX worker", Duration::from_secs(30));
    nix::sys::signal::kill(exporter.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(renewed, "{}", reader.log_text());
    assert!(reader.log_text().contains("a new connection to the exporter did not complete"), "{}", reader.log_text());
    read_over_rdma_again(&client, &mut queue_pair, (volume_id, needle_id, cookie));
}

/// SeaweedFS truncates a `.dat` when it rolls back a failed append; until the exporter's next
/// refresh the pages past the new end are still mapped, and UCX's software gets copy from them
/// inside the exporter. That used to end the exporter with SIGBUS (and every read it served).
#[test]
fn a_dat_truncated_under_the_exporter_fails_that_read_and_nothing_else() {
    for (transport, env) in [("tcp", TCP), ("shared memory", SHARED_MEMORY)] {
        let volumes = volume_dir();
        let (exporter, reader, _) = exporter_and_reader(volumes.path(), env);
        let (client, mut queue_pair) = attach(&reader);
        // The last and largest generated needle (39 * 7919 bytes), and an early one.
        let (last, early) = ((4, 49, 0xc0 + 39), (4, 11, 0xc0 + 1));
        let last_offset = open_volume(volumes.path(), 4).locate(last.1).unwrap().offset_bytes;
        assert!(read_one(&client, &mut queue_pair, last.0, last.1, last.2).result().is_ok(), "{transport}");

        // Cut the last record away: its pages past the new end are no longer the file's.
        let dat_path = volumes.path().join("4.dat");
        let cut = std::fs::read(&dat_path).unwrap().split_off(last_offset as usize);
        let dat = std::fs::OpenOptions::new().write(true).open(&dat_path).unwrap();
        dat.set_len(last_offset).unwrap();
        let completion = read_one(&client, &mut queue_pair, last.0, last.1, last.2);
        assert!(
            matches!(completion.result(), Err(CompletionError::Engine { code: ErrorCode::CORRUPT_NEEDLE, .. })),
            "over {transport}, a needle cut away by a truncation: {:?}; exporter log:\n{}",
            completion.result(),
            exporter.log_text()
        );
        assert!(
            integration_tests::is_running(exporter.pid().as_raw() as u32),
            "over {transport}, the exporter died; its log:\n{}",
            exporter.log_text()
        );
        let completion = read_one(&client, &mut queue_pair, early.0, early.1, early.2);
        let volume = open_volume(volumes.path(), 4);
        let record = volume.read_checked(early.1, early.2).unwrap();
        let expected = NeedleRecord::parse(&record, volume.version()).unwrap();
        let range = completion.data_range().unwrap_or_else(|| panic!("over {transport}: {:?}", completion.result()));
        assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], expected.data, "over {transport}");

        // The record appended again where it was cut (SeaweedFS appends at the truncated end):
        // read again, it has its bytes, not the zeros the cut pages read meanwhile.
        std::os::unix::fs::FileExt::write_all_at(&dat, &cut, last_offset).unwrap();
        let record = volume.read_checked(last.1, last.2).unwrap();
        let expected = NeedleRecord::parse(&record, volume.version()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let completion = loop {
            let completion = read_one(&client, &mut queue_pair, last.0, last.1, last.2);
            if completion.result().is_ok() || Instant::now() >= deadline {
                break completion;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let range = completion.data_range().unwrap_or_else(|| panic!("over {transport}: {:?}", completion.result()));
        assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], expected.data, "over {transport}");
    }
}
