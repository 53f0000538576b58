//! The stream transport end to end with real processes, with the flags a new user gives
//! (none but the roles'): byte-exact whole and range reads from an exporter, `rdma-cat` saying
//! `source=stream`, the read key, and the sockets each process
//! listens on: only the ones the operator named. A UCX peer pointed at a default exporter
//! finds nothing to speak to. (An exporter killed mid-read, and two hosts, are in
//! `rdma_reads.rs` beside the same tests over UCX.)

use integration_tests::{free_port, live_needles, open_volume, workspace_binary, Engine, EngineOptions};
use rdma_client::{AttachOptions, Client, CompletionError, ErrorCode, Operation, QueuePair, ReadSource};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volume_format::needle::NeedleRecord;
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

const VOLUME_ID: u32 = 4;

/// Volume 4: 40 needles of 0 to 309 KB.
fn volume_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = VolumeWriter::create_in(dir.path(), None, VOLUME_ID, VolumeWriterOptions::default()).unwrap();
    for index in 0..40u64 {
        let data: Vec<u8> = (0..(index * 7919) as usize).map(|byte| (byte as u64 ^ index) as u8).collect();
        let spec = NeedleSpec { needle_id: 10 + index, cookie: 0xc0 + index as u32, data: &data, ..Default::default() };
        writer.append(&spec).unwrap();
    }
    writer.finish().unwrap();
    dir
}

fn engine(args: &[String]) -> Engine {
    Engine::start_with(tempfile::tempdir().unwrap(), EngineOptions { args: args.to_vec(), ..Default::default() })
}

/// An exporter with default flags on a free loopback port, and its address.
fn exporter(volumes: &Path, extra: &[&str]) -> (Engine, String) {
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let mut args = vec!["--export-dir".into(), volumes.display().to_string(), "--listen".into(), listen.clone()];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    (engine(&args), listen)
}

fn reader(listen: &str, extra: &[&str]) -> Engine {
    let mut args = vec!["--peer".to_string(), listen.to_string()];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    engine(&args)
}

fn attach(engine: &Engine) -> (Client, QueuePair) {
    let options = AttachOptions { buffer_size_bytes: 64 << 20, sq_entries: 64, ..AttachOptions::default() };
    let client = Client::attach(&engine.socket, &options).unwrap();
    let queue_pair = client.take_queue_pair(0).unwrap();
    (client, queue_pair)
}

/// The addresses process `pid` listens on with TCP (from its sockets in `/proc/net/tcp{,6}`).
fn listening_sockets(pid: u32) -> BTreeSet<SocketAddr> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)
        })
        .collect();
    let mut listening = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                listening.insert(parse_proc_address(fields[1]));
            }
        }
    }
    listening
}

/// `0100007F:1F90` (`/proc/net/tcp`'s hex, IPv4 in host order) or its 32-digit IPv6 form.
fn parse_proc_address(text: &str) -> SocketAddr {
    let (ip, port) = text.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    let ip: std::net::IpAddr = if ip.len() == 8 {
        std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16).unwrap().to_le_bytes()).into()
    } else {
        let mut bytes = [0u8; 16];
        for (word, chunk) in bytes.chunks_mut(4).zip((0..4).map(|i| &ip[i * 8..i * 8 + 8])) {
            word.copy_from_slice(&u32::from_str_radix(chunk, 16).unwrap().to_le_bytes());
        }
        std::net::Ipv6Addr::from(bytes).into()
    };
    SocketAddr::new(ip, port)
}

/// Reads every needle of `volumes` whole and a range of each through `reader`'s client,
/// checking the bytes and that they came over the stream transport; returns their data.
fn every_needle_reads_byte_exact_over_the_stream(
    client: &Client,
    queue_pair: &mut QueuePair,
    volumes: &Path,
) -> Vec<Vec<u8>> {
    let volume = open_volume(volumes, VOLUME_ID);
    let needles = live_needles(&volume);
    assert_eq!(needles.len(), 40);
    let mut data = Vec::new();
    for &(needle_id, cookie) in &needles {
        let record = volume.read_checked(needle_id, cookie).unwrap();
        let expected = NeedleRecord::parse(&record, volume.version()).unwrap();
        let completion = integration_tests::read_needle(client, queue_pair, (VOLUME_ID, needle_id, cookie), 1 << 20);
        let range = completion.data_range().unwrap_or_else(|| panic!("{needle_id}: {:?}", completion.result()));
        assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], expected.data, "needle {needle_id}");
        assert_eq!(completion.source(), ReadSource::Stream);
        // A range of it, clamped at the data's end as HTTP does.
        if expected.data.len() > 100 {
            let buffer = client.allocate(4096).unwrap();
            let operation =
                Operation::ReadRange { volume_id: VOLUME_ID, needle_id, cookie, offset: 100, length: 4000, buffer };
            queue_pair.prepare(operation, 1).unwrap();
            queue_pair.submit().unwrap();
            queue_pair.wait(1, Duration::from_secs(10)).unwrap();
            let completion = queue_pair.reap_one().unwrap().unwrap();
            let range = completion.data_range().unwrap_or_else(|| panic!("{needle_id}: {:?}", completion.result()));
            let end = expected.data.len().min(4100);
            assert_eq!(&client.bytes(completion.buffer.as_ref().unwrap())[range], &expected.data[100..end]);
            assert_eq!(completion.source(), ReadSource::Stream);
        }
        data.push(expected.data.to_vec());
    }
    data
}

#[test]
fn with_default_flags_every_read_is_byte_exact_and_comes_over_the_stream_transport() {
    let volumes = volume_dir();
    let (exporter, listen) = exporter(volumes.path(), &[]);
    let reader = reader(&listen, &[]);
    let (client, mut queue_pair) = attach(&reader);
    every_needle_reads_byte_exact_over_the_stream(&client, &mut queue_pair, volumes.path());
    // A wrong cookie is the exporter's answer, not a fallback.
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 10, 0xbad), 1 << 20);
    assert!(matches!(completion.result(), Err(CompletionError::Engine { code: ErrorCode::COOKIE_MISMATCH, .. })));
    // rdma-cat, as a user runs it.
    let fid = format!("{VOLUME_ID},{:x}{:08x}", 31, 0xc0 + 21);
    let output =
        Command::new(workspace_binary("rdma-cat")).arg("--socket").arg(&reader.socket).arg(&fid).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("source=stream"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout.len(), 21 * 7919);
    // ringstat says which remote transport the engine runs.
    let output =
        Command::new(workspace_binary("ringstat")).arg("--socket").arg(&reader.socket).arg("--json").output().unwrap();
    let snapshot: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ringstat --json");
    assert_eq!(snapshot["remote_transport"], "stream", "{snapshot}");
    drop(exporter);
}

#[test]
fn each_process_listens_only_where_the_operator_said() {
    let volumes = volume_dir();
    let (exporter, listen) = exporter(volumes.path(), &[]);
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let reader = reader(&listen, &["--metrics-listen", &metrics]);
    let (client, mut queue_pair) = attach(&reader);
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
    assert_eq!(completion.source(), ReadSource::Stream, "{:?}", completion.result());
    let expected: BTreeSet<SocketAddr> = [listen.parse().unwrap()].into();
    assert_eq!(listening_sockets(exporter.child.id()), expected, "the exporter listens beyond --listen");
    let expected: BTreeSet<SocketAddr> = [metrics.parse().unwrap()].into();
    assert_eq!(listening_sockets(reader.child.id()), expected, "the reader listens beyond --metrics-listen");
}

/// The same check on the opt-in UCX mode shows what the default mode removed: UCX's tcp
/// interfaces listen on ports of their own (and on every device unless `UCX_NET_DEVICES`
/// names one, which the engine now sets from `--listen`).
#[test]
fn ucx_in_the_opt_in_mode_listens_on_ports_of_its_own_on_the_listen_device_only() {
    let volumes = volume_dir();
    let tcp = [("UCX_TLS".to_string(), "tcp".to_string())];
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let args = vec!["--export-dir".into(), volumes.path().display().to_string(), "--listen".into(), listen.clone()];
    let exporter = Engine::start_with(
        tempfile::tempdir().unwrap(),
        EngineOptions { args, env: tcp.to_vec(), ..Default::default() },
    );
    assert!(exporter.log_text().contains("UCX_NET_DEVICES=lo"), "{}", exporter.log_text());
    let listening = listening_sockets(exporter.child.id());
    assert!(listening.contains(&listen.parse().unwrap()), "{listening:?}");
    assert!(
        listening.iter().all(|address| address.ip().is_loopback()),
        "UCX listens beyond the --listen device: {listening:?}"
    );
}

#[test]
fn a_ucx_reader_pointed_at_a_default_exporter_gets_no_connection() {
    let volumes = volume_dir();
    let (exporter, listen) = exporter(volumes.path(), &[]);
    let ucx_reader = Engine::start_with(
        tempfile::tempdir().unwrap(),
        EngineOptions {
            args: vec!["--peer".into(), listen, "--no-http-fallback".into()],
            env: vec![("UCX_TLS".into(), "tcp".into())],
            ..Default::default()
        },
    );
    let (client, mut queue_pair) = attach(&ucx_reader);
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
    assert!(completion.result().is_err(), "a UCX peer read from a stream exporter");
    assert!(
        exporter.wait_for_log("closing a stream connection", Duration::from_secs(10)),
        "the exporter did not close the UCX handshake as a bad hello:\n{}",
        exporter.log_text()
    );
}

#[test]
fn readers_must_prove_the_read_key_and_are_told_why_not() {
    let volumes = volume_dir();
    let keys = tempfile::tempdir().unwrap();
    let write_key = |name: &str, key: &str| integration_tests::security_toml(keys.path(), name, key);
    let (right, wrong) = (write_key("right.toml", "the-read-key"), write_key("wrong.toml", "another-key"));
    let (exporter, listen) = exporter(volumes.path(), &["--security-toml", &right]);
    let trusted = reader(&listen, &["--security-toml", &right]);
    let (client, mut queue_pair) = attach(&trusted);
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
    assert_eq!(completion.source(), ReadSource::Stream, "{:?}\n{}", completion.result(), exporter.log_text());
    for (key, why) in [
        (Some(wrong.as_str()), "the exporter's proof does not match this engine's read key"),
        (None, "the exporter asks for SeaweedFS's read key and this engine has none"),
    ] {
        let extra: Vec<&str> = key.map(|key| vec!["--security-toml", key]).unwrap_or_default();
        let stranger = reader(&listen, &extra);
        let (client, mut queue_pair) = attach(&stranger);
        let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
        assert!(completion.result().is_err(), "a reader with {key:?} read the volume");
        assert!(stranger.wait_for_log(why, Duration::from_secs(10)), "{key:?}: {}", stranger.log_text());
    }
}

/// A TCP relay between a reader and an exporter that keeps every byte the exporter sends: what
/// someone on the network would see.
struct WireTap {
    address: String,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl WireTap {
    fn start(upstream: &str) -> WireTap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (upstream, thread_seen, thread_stop) = (upstream.to_string(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let Ok((reader_side, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                reader_side.set_nonblocking(false).unwrap();
                let Ok(exporter_side) = TcpStream::connect(&upstream) else { continue };
                let relay = |mut from: TcpStream, mut to: TcpStream, seen: Option<Arc<Mutex<Vec<u8>>>>| {
                    std::thread::spawn(move || {
                        let mut buffer = vec![0u8; 1 << 16];
                        while let Ok(count) = from.read(&mut buffer) {
                            if count == 0 || to.write_all(&buffer[..count]).is_err() {
                                break;
                            }
                            if let Some(seen) = &seen {
                                seen.lock().unwrap().extend_from_slice(&buffer[..count]);
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                relay(reader_side.try_clone().unwrap(), exporter_side.try_clone().unwrap(), None);
                relay(exporter_side, reader_side, Some(thread_seen.clone()));
            }
        });
        WireTap { address, seen, stop }
    }

    /// Whether `bytes` crossed the wire as they are.
    fn saw(&self, bytes: &[u8]) -> bool {
        self.seen.lock().unwrap().windows(bytes.len()).any(|window| window == bytes)
    }

    fn bytes_seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for WireTap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether some needle's first 64 data bytes crossed `tap` in the clear.
fn needles_seen_in_the_clear(tap: &WireTap, data: &[Vec<u8>]) -> usize {
    data.iter().filter(|data| data.len() >= 64 && tap.saw(&data[..64])).count()
}

#[test]
fn with_the_operators_certificates_reads_run_over_mutual_tls_and_strangers_are_told_why() {
    let volumes = volume_dir();
    let keys = tempfile::tempdir().unwrap();
    let ours = integration_tests::tls_certificates(keys.path(), "ours");
    let theirs = integration_tests::tls_certificates(keys.path(), "theirs");
    let toml = |name: &str, certificates: &integration_tests::TlsCertificates| {
        integration_tests::security_toml_with_tls(keys.path(), name, certificates, Some("the-read-key"), ("", ""))
    };
    let listed = |name: &str, allowed: (&str, &str)| {
        integration_tests::security_toml_with_tls(keys.path(), name, &ours, Some("the-read-key"), allowed)
    };
    let secure = toml("secure.toml", &ours);

    // Plaintext first, through the tap: the needles cross the wire as they are stored.
    let (plain_exporter, plain_listen) = exporter(volumes.path(), &[]);
    let plain_tap = WireTap::start(&plain_listen);
    let plain_reader = reader(&plain_tap.address, &[]);
    let (client, mut queue_pair) = attach(&plain_reader);
    let data = every_needle_reads_byte_exact_over_the_stream(&client, &mut queue_pair, volumes.path());
    let readable = data.iter().filter(|data| data.len() >= 64).count();
    assert_eq!(needles_seen_in_the_clear(&plain_tap, &data), readable, "plaintext: the tap sees every needle");

    // With certificates on both sides: the same reads, and not one needle on the wire.
    let (tls_exporter, listen) = exporter(volumes.path(), &["--security-toml", &secure]);
    assert!(tls_exporter.wait_for_log("runs over mutual TLS", Duration::from_secs(10)), "{}", tls_exporter.log_text());
    let tap = WireTap::start(&listen);
    let trusted = reader(&tap.address, &["--security-toml", &secure]);
    let (client, mut queue_pair) = attach(&trusted);
    every_needle_reads_byte_exact_over_the_stream(&client, &mut queue_pair, volumes.path());
    let total: usize = data.iter().map(Vec::len).sum();
    assert!(tap.bytes_seen() > total, "the tap saw {} bytes for {total} of needles", tap.bytes_seen());
    assert_eq!(needles_seen_in_the_clear(&tap, &data), 0, "TLS: a needle crossed the wire in the clear");

    // Strangers read nothing, and each is told why in its log.
    let foreign_client = integration_tests::TlsCertificates {
        client_cert: theirs.client_cert.clone(),
        client_key: theirs.client_key.clone(),
        ..ours.clone()
    };
    let key_only = integration_tests::security_toml(keys.path(), "key-only.toml", "the-read-key");
    let cases = [
        (key_only.clone(), listen.as_str(), "the exporter speaks TLS and this engine has no certificate"),
        (
            toml("foreign-client.toml", &foreign_client),
            listen.as_str(),
            "the exporter refused this engine's certificate",
        ),
        (toml("foreign-ca.toml", &theirs), listen.as_str(), "invalid peer certificate"),
        (secure.clone(), plain_listen.as_str(), "closed the connection during the TLS handshake"),
    ];
    for (security, address, why) in cases {
        let stranger = reader(address, &["--security-toml", &security]);
        let (client, mut queue_pair) = attach(&stranger);
        let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
        assert!(completion.result().is_err(), "a reader with {security} read from {address}");
        assert!(stranger.wait_for_log(why, Duration::from_secs(10)), "{security}: {}", stranger.log_text());
    }
    assert!(
        plain_exporter
            .wait_for_log("the reader speaks TLS and this exporter has no certificate", Duration::from_secs(10)),
        "{}",
        plain_exporter.log_text()
    );

    // SeaweedFS's name lists: an exporter that admits client01 and a reader that reads from
    // volume01 (the names in our certificates) work together; a list without them refuses.
    let both_listed = listed("listed.toml", ("client01, reader-2", "volume01"));
    let (listing_exporter, listing_listen) = exporter(volumes.path(), &["--security-toml", &both_listed]);
    let listing_reader = reader(&listing_listen, &["--security-toml", &both_listed]);
    let (client, mut queue_pair) = attach(&listing_reader);
    let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
    assert_eq!(completion.source(), ReadSource::Stream, "{:?}\n{}", completion.result(), listing_reader.log_text());
    let (strict_exporter, strict_listen) =
        exporter(volumes.path(), &["--security-toml", &listed("strict-exporter.toml", ("reader-99", ""))]);
    let strict_reader = listed("strict-reader.toml", ("", "volume99"));
    for (address, security, reader_says) in [
        (strict_listen.as_str(), secure.as_str(), "the exporter refused this engine's certificate"),
        (listen.as_str(), strict_reader.as_str(), "is not admitted by allowed_server_commonNames"),
    ] {
        let stranger = reader(address, &["--security-toml", security]);
        let (client, mut queue_pair) = attach(&stranger);
        let completion = integration_tests::read_needle(&client, &mut queue_pair, (VOLUME_ID, 31, 0xc0 + 21), 1 << 20);
        assert!(completion.result().is_err(), "a reader with {security} read from {address}");
        assert!(stranger.wait_for_log(reader_says, Duration::from_secs(10)), "{security}: {}", stranger.log_text());
    }
    assert!(
        strict_exporter.wait_for_log("is not admitted by [grpc.volume] allowed_commonNames", Duration::from_secs(10)),
        "{}",
        strict_exporter.log_text()
    );
    drop(listing_exporter);
}
