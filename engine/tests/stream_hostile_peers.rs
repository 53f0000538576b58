//! Hostile peers against a real exporter process (`rdma-engine --export-dir --listen`, the
//! default stream transport): each test is one kind of bad peer, and each checks that the
//! exporter closes or answers it as the protocol says, stays up, and keeps serving a good
//! reader the right bytes. Nothing outside an exported needle whose cookie the peer knows is
//! ever sent (`docs/stream-protocol.md`, `docs/security.md`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cookie_in, generate, open_local};
use rdma_engine::rdma::token::ReadKey;
use rdma_engine::security::TlsFiles;
use rdma_engine::stream::reader::{connect, ConnectError};
use rdma_engine::stream::tls::TlsLink;
use rdma_engine::stream::wire::{
    ClientHello, ClientProof, ReadRequest, Reply, Request, ServerHello, REPLY_HEADER_BYTES,
};
use shm_layout::entry::{ByteRange, ErrorCode};
use volume_format::generate::SizePlan;
use volume_format::needle::NeedleRecord;
use zerocopy::IntoBytes;

const VOLUME_ID: u32 = 6;
/// Needle sizes in turn: small (copied), 64 KiB and 1 MiB (sent with sendfile).
const SIZES: [u32; 3] = [3000, 65536, 1 << 20];
const NEEDLES: u64 = 12;

/// A real exporter process and what it exports.
struct Exporter {
    child: Child,
    address: SocketAddr,
    volumes: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Exporter {
    fn start(extra: &[&str]) -> Exporter {
        let volumes = tempfile::tempdir().unwrap();
        generate(volumes.path(), VOLUME_ID, NEEDLES, SizePlan::Cycle(SIZES.to_vec()), 3);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = volumes.path().join("exporter.log");
        let child = Command::new(env!("CARGO_BIN_EXE_rdma-engine"))
            .arg("--socket")
            .arg(volumes.path().join("exporter.sock"))
            .arg("--export-dir")
            .arg(volumes.path())
            .args(["--listen", &address.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rdma-engine");
        let exporter = Exporter { child, address, volumes, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !exporter.log_text().contains("export role serving") {
            assert!(Instant::now() < deadline, "the exporter did not start: {}", exporter.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        exporter
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Reads every needle as a good reader and compares it with the volume read locally.
    fn serves_a_good_reader(&mut self, key: Option<&ReadKey>) {
        assert!(self.is_running(), "the exporter died; its log:\n{}", self.log_text());
        let volume = open_local(self.volumes.path(), VOLUME_ID);
        let mut stream =
            connect(self.address, key, None, Duration::from_secs(5)).expect("a good reader connects").stream;
        stream.set_nonblocking(false).unwrap();
        for needle_id in 1..=NEEDLES {
            let cookie = cookie_in(&volume, needle_id);
            let (reply, _, data) = exchange(&mut stream, whole(needle_id, cookie, 4 << 20));
            assert_eq!(reply.status, Ok(()), "needle {needle_id}");
            let record = NeedleRecord::parse(&data, volume.version()).unwrap();
            let expected = volume.read_checked(needle_id, cookie).unwrap();
            assert_eq!(data, expected, "needle {needle_id}: the record as the volume holds it");
            assert!(record.data.len() <= SIZES[2] as usize);
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whole(needle_id: u64, cookie: u32, max_bytes: u32) -> Request {
    Request::Read(ReadRequest { token: needle_id, volume_id: VOLUME_ID, needle_id, cookie, max_bytes, range: None })
}

/// Sends `request` and reads its reply: the header, the check bytes, the data.
fn exchange(stream: &mut TcpStream, request: Request) -> (Reply, Vec<u8>, Vec<u8>) {
    stream.write_all(request.encode().as_bytes()).unwrap();
    read_reply(stream)
}

fn read_reply(stream: &mut TcpStream) -> (Reply, Vec<u8>, Vec<u8>) {
    let mut header = [0u8; REPLY_HEADER_BYTES];
    stream.read_exact(&mut header).unwrap();
    let reply = Reply::decode(&header).expect("a reply of the protocol");
    let mut check = vec![0u8; reply.check_length as usize];
    stream.read_exact(&mut check).unwrap();
    let mut data = vec![0u8; reply.data_length as usize];
    stream.read_exact(&mut data).unwrap();
    (reply, check, data)
}

/// A raw TCP connection, no handshake.
fn raw(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// A connection through the handshake without a key, blocking, with a read timeout.
fn handshaken(address: SocketAddr) -> TcpStream {
    let stream = connect(address, None, None, Duration::from_secs(5)).unwrap().stream;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Whether the exporter closes `stream` within `within` (reading and dropping what it sends).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn security_toml(dir: &Path, key: &str) -> std::path::PathBuf {
    let path = dir.join(format!("security-{key}.toml"));
    std::fs::write(&path, format!("[jwt.signing.read]\nkey = \"{key}\"\n")).unwrap();
    path
}

#[test]
fn a_peer_that_never_says_hello_is_closed_after_the_handshake_limit() {
    let mut exporter = Exporter::start(&[]);
    let mut silent = raw(exporter.address);
    let started = Instant::now();
    // Meanwhile the exporter serves others.
    exporter.serves_a_good_reader(None);
    assert!(closed_within(&mut silent, Duration::from_secs(15)), "a silent peer was kept");
    assert!(started.elapsed() >= Duration::from_secs(4), "closed before its handshake limit (5 s)");
    exporter.serves_a_good_reader(None);
}

#[test]
fn a_wrong_key_is_refused_before_any_request_and_a_missing_one_is_named() {
    let keys = tempfile::tempdir().unwrap();
    let right = security_toml(keys.path(), "right-key");
    let mut exporter = Exporter::start(&["--security-toml", right.to_str().unwrap()]);
    let wrong = ReadKey::from_bytes(b"wrong-key");
    // The exporter proves itself first: a reader with another key stops there.
    assert!(matches!(
        connect(exporter.address, Some(&wrong), None, Duration::from_secs(5)),
        Err(ConnectError::ExporterProof)
    ));
    assert!(matches!(connect(exporter.address, None, None, Duration::from_secs(5)), Err(ConnectError::KeyNeeded)));
    // A peer that ignores the exporter's proof and sends a made-up one, then a request: the
    // exporter refuses it and closes without answering the request.
    let mut stream = raw(exporter.address);
    stream.write_all(ClientHello::new([1; 32]).as_bytes()).unwrap();
    let mut hello = [0u8; 72];
    stream.read_exact(&mut hello).unwrap();
    assert!(ServerHello::decode(&hello).is_ok());
    stream.write_all(ClientProof { proof: [7; 32] }.as_bytes()).unwrap();
    stream.write_all(whole(1, 0, 1 << 20).encode().as_bytes()).unwrap();
    let mut done = [0u8; 8];
    stream.read_exact(&mut done).unwrap();
    assert_eq!(i32::from_le_bytes(done[..4].try_into().unwrap()), 1, "BAD_PROOF");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the exporter answered a request after a bad proof: {} bytes", rest.len());
    exporter.serves_a_good_reader(Some(&ReadKey::from_bytes(b"right-key")));
}

#[test]
fn a_reader_with_the_key_refuses_an_exporter_that_asks_for_none() {
    let mut exporter = Exporter::start(&[]);
    let key = ReadKey::from_bytes(b"a-key");
    assert!(matches!(
        connect(exporter.address, Some(&key), None, Duration::from_secs(5)),
        Err(ConnectError::ExporterWithoutKey)
    ));
    exporter.serves_a_good_reader(None);
}

#[test]
fn a_replayed_handshake_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let path = security_toml(keys.path(), "replay-key");
    let mut exporter = Exporter::start(&["--security-toml", path.to_str().unwrap()]);
    let key = ReadKey::from_bytes(b"replay-key");
    // A recorded good handshake: the reader's hello and proof, as they crossed the wire.
    let reader_nonce = [9u8; 32];
    let mut recorded = raw(exporter.address);
    recorded.write_all(ClientHello::new(reader_nonce).as_bytes()).unwrap();
    let mut hello = [0u8; 72];
    recorded.read_exact(&mut hello).unwrap();
    let hello = ServerHello::decode(&hello).unwrap();
    let proof =
        rdma_engine::stream::auth::proof(&key, rdma_engine::stream::auth::Side::Reader, &reader_nonce, &hello.nonce);
    recorded.write_all(ClientProof { proof }.as_bytes()).unwrap();
    let mut done = [0u8; 8];
    recorded.read_exact(&mut done).unwrap();
    assert_eq!(i32::from_le_bytes(done[..4].try_into().unwrap()), 0, "the recorded handshake was good");
    // Replayed on a new connection: the exporter's nonce is new, so the proof is wrong.
    let mut replay = raw(exporter.address);
    replay.write_all(ClientHello::new(reader_nonce).as_bytes()).unwrap();
    let mut second = [0u8; 72];
    replay.read_exact(&mut second).unwrap();
    assert_ne!(ServerHello::decode(&second).unwrap().nonce, hello.nonce, "the exporter reused a nonce");
    replay.write_all(ClientProof { proof }.as_bytes()).unwrap();
    replay.read_exact(&mut done).unwrap();
    assert_eq!(i32::from_le_bytes(done[..4].try_into().unwrap()), 1, "a replayed proof was accepted");
    assert!(closed_within(&mut replay, Duration::from_secs(5)));
    exporter.serves_a_good_reader(Some(&key));
}

#[test]
fn requests_with_lengths_zero_and_two_to_the_thirty_two_close_only_their_connection() {
    let mut exporter = Exporter::start(&[]);
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    let cookie = cookie_in(&volume, 1);
    for max_bytes in [0u32, u32::MAX] {
        let mut stream = handshaken(exporter.address);
        stream.write_all(whole(1, cookie, max_bytes).encode().as_bytes()).unwrap();
        assert!(closed_within(&mut stream, Duration::from_secs(5)), "max_bytes {max_bytes} was taken");
    }
    // A range whose end overflows, and an empty range.
    for (offset, length) in [(u64::MAX, 2), (0, 0)] {
        let mut stream = handshaken(exporter.address);
        let mut request = whole(1, cookie, 1 << 20).encode();
        request.flags = 1;
        request.range_offset = offset.into();
        request.range_length = length.into();
        stream.write_all(request.as_bytes()).unwrap();
        assert!(closed_within(&mut stream, Duration::from_secs(5)), "range {offset}+{length} was taken");
    }
    exporter.serves_a_good_reader(None);
}

#[test]
fn needles_the_exporter_does_not_serve_get_an_error_and_no_byte() {
    let mut exporter = Exporter::start(&[]);
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    let cookie = cookie_in(&volume, 2);
    let mut stream = handshaken(exporter.address);
    let ask = |stream: &mut TcpStream, volume_id: u32, needle_id: u64, cookie: u32, range: Option<ByteRange>| {
        let request = ReadRequest { token: 1, volume_id, needle_id, cookie, max_bytes: 4 << 20, range };
        exchange(stream, Request::Read(request))
    };
    let expect_error = |(reply, check, data): (Reply, Vec<u8>, Vec<u8>), code: ErrorCode| {
        assert_eq!(reply.status, Err(code));
        assert!(check.is_empty() && data.is_empty(), "{code:?} came with bytes");
    };
    expect_error(ask(&mut stream, VOLUME_ID + 1, 2, cookie, None), ErrorCode::NO_SUCH_VOLUME);
    expect_error(ask(&mut stream, VOLUME_ID, 999, cookie, None), ErrorCode::NO_SUCH_NEEDLE);
    // The cookie guards the needle: a wrong one gets not a byte of it.
    expect_error(ask(&mut stream, VOLUME_ID, 2, cookie ^ 1, None), ErrorCode::COOKIE_MISMATCH);
    expect_error(
        ask(&mut stream, VOLUME_ID, 2, cookie ^ 1, Some(ByteRange { offset: 0, length: 10 })),
        ErrorCode::COOKIE_MISMATCH,
    );
    // Offsets past the data's end (needle 2 holds 64 KiB), and a buffer too small for it.
    expect_error(
        ask(&mut stream, VOLUME_ID, 2, cookie, Some(ByteRange { offset: 65536, length: 1 })),
        ErrorCode::RANGE_OUT_OF_BOUNDS,
    );
    expect_error(
        ask(&mut stream, VOLUME_ID, 2, cookie, Some(ByteRange { offset: u64::MAX - 1, length: 1 })),
        ErrorCode::RANGE_OUT_OF_BOUNDS,
    );
    let (reply, _, data) = exchange(&mut stream, whole(2, cookie, 100));
    assert_eq!((reply.status, data.len()), (Err(ErrorCode::BUFFER_TOO_SMALL), 0));
    assert!(reply.aux > 65536, "BUFFER_TOO_SMALL names the size needed: {}", reply.aux);
    // Not even the size for a peer without the cookie.
    let (reply, _, _) = exchange(&mut stream, whole(2, cookie ^ 1, 100));
    assert_eq!((reply.status, reply.aux), (Err(ErrorCode::COOKIE_MISMATCH), 0));
    // A range that runs past the end is clamped, as HTTP does.
    let (reply, _, data) = ask(&mut stream, VOLUME_ID, 2, cookie, Some(ByteRange { offset: 65530, length: 100 }));
    assert_eq!((reply.status, data.len()), (Ok(()), 6));
    exporter.serves_a_good_reader(None);
}

#[test]
fn ten_thousand_pipelined_requests_are_all_answered_in_bounded_memory() {
    let mut exporter = Exporter::start(&[]);
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    let cookie = cookie_in(&volume, 1);
    let mut stream = handshaken(exporter.address);
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for token in 0..10_000u64 {
            let request =
                ReadRequest { token, volume_id: VOLUME_ID, needle_id: 1, cookie, max_bytes: 1 << 20, range: None };
            writer.write_all(Request::Read(request).encode().as_bytes()).unwrap();
        }
    });
    let expected = volume.read_checked(1, cookie).unwrap();
    for token in 0..10_000u64 {
        let (reply, _, data) = read_reply(&mut stream);
        assert_eq!((reply.token, reply.status), (token, Ok(())));
        assert_eq!(data, expected);
    }
    sender.join().unwrap();
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", exporter.child.id()))
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("VmRSS:").map(|rest| rest.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    assert!(rss_kib < 256 << 10, "the exporter holds {rss_kib} KiB after 10,000 requests");
    exporter.serves_a_good_reader(None);
}

#[test]
fn a_peer_that_never_reads_stalls_only_itself_and_is_closed() {
    let mut exporter = Exporter::start(&[]);
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    let cookie = cookie_in(&volume, 3);
    let mut stalled = handshaken(exporter.address);
    stalled.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 1 MiB needles, asked for until the exporter stops taking requests.
    for token in 0..10_000u64 {
        let request =
            ReadRequest { token, volume_id: VOLUME_ID, needle_id: 3, cookie, max_bytes: 4 << 20, range: None };
        if stalled.write_all(Request::Read(request).encode().as_bytes()).is_err() {
            break;
        }
    }
    exporter.serves_a_good_reader(None);
    // Served while the stalled connection still held its place: had the exporter waited on it,
    // the good reader would have been served only once the stall limit closed it.
    assert!(
        !exporter.log_text().contains("did not read its replies"),
        "the good reader was served only after the stalled one was closed:\n{}",
        exporter.log_text()
    );
    // The write stall limit is 10 s: after it the stalled connection is closed.
    std::thread::sleep(Duration::from_secs(11));
    assert!(exporter.log_text().contains("did not read its replies"), "{}", exporter.log_text());
    exporter.serves_a_good_reader(None);
}

#[test]
fn a_peer_that_disconnects_mid_reply_or_sends_garbage_leaves_the_exporter_serving() {
    let mut exporter = Exporter::start(&[]);
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    let cookie = cookie_in(&volume, 3);
    for _ in 0..20 {
        let mut stream = handshaken(exporter.address);
        stream.write_all(whole(3, cookie, 4 << 20).encode().as_bytes()).unwrap();
        let mut some = [0u8; 4096];
        stream.read_exact(&mut some).unwrap();
        drop(stream);
    }
    // Random bytes instead of a hello, and after a good handshake.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..40 {
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut stream = if round % 2 == 0 { raw(exporter.address) } else { handshaken(exporter.address) };
        let _ = stream.write_all(&garbage);
        assert!(closed_within(&mut stream, Duration::from_secs(10)), "garbage was taken (round {round})");
    }
    exporter.serves_a_good_reader(None);
    assert!(!exporter.log_text().contains("panicked"), "{}", exporter.log_text());
}

#[test]
fn an_address_not_allowed_is_closed_before_a_byte_is_read() {
    let mut exporter = Exporter::start(&["--allow-peer", "127.0.0.2"]);
    let mut stream = raw(exporter.address);
    let _ = stream.write_all(ClientHello::new([3; 32]).as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.is_empty(), "an address not allowed got {} bytes", answer.len());
    assert!(matches!(connect(exporter.address, None, None, Duration::from_secs(5)), Err(ConnectError::Closed)));
    assert!(exporter.is_running());
}

/// A CA and the exporter's and a reader's certificates (the tests' own, PEM in `dir`), the
/// `security.toml` naming them, and the reader's TLS files.
fn tls_setup(dir: &Path) -> (std::path::PathBuf, TlsFiles) {
    let certificates = integration_tests::tls_certificates(dir, "hostile");
    let toml = integration_tests::security_toml_with_tls(dir, "security.toml", &certificates, None, ("", ""));
    let reader = TlsFiles {
        ca: certificates.ca,
        cert: certificates.client_cert,
        key: certificates.client_key,
        allowed_peers: Default::default(),
    };
    (toml.into(), reader)
}

/// Sends `request` over a TLS connection (a blocking socket) and reads its whole reply.
fn tls_exchange(stream: &TcpStream, link: &mut TlsLink, request: Request) -> (Reply, Vec<u8>) {
    let bytes = request.encode();
    let mut written = 0;
    while written < bytes.as_bytes().len() {
        written += link.write_plaintext(&bytes.as_bytes()[written..]).unwrap();
    }
    link.send_records(&mut &*stream).unwrap();
    let mut read = |length: usize| {
        let mut out = Vec::with_capacity(length);
        while out.len() < length {
            let wanted = length - out.len();
            let count = link
                .read_plaintext(&mut &*stream, |plaintext| {
                    let count = plaintext.len().min(wanted);
                    out.extend_from_slice(&plaintext[..count]);
                    count
                })
                .unwrap();
            assert!(count > 0, "the exporter closed the TLS connection mid-reply");
        }
        out
    };
    let header = read(REPLY_HEADER_BYTES);
    let reply = Reply::decode(header.as_slice().try_into().unwrap()).expect("a reply of the protocol");
    let _check = read(reply.check_length as usize);
    (reply, read(reply.data_length as usize))
}

#[test]
fn a_tls_exporter_closes_plaintext_garbage_and_stalled_handshakes_and_keeps_serving() {
    let certificates = tempfile::tempdir().unwrap();
    let (toml, reader_files) = tls_setup(certificates.path());
    let mut exporter = Exporter::start(&["--security-toml", toml.to_str().unwrap()]);
    assert!(exporter.log_text().contains("runs over mutual TLS"), "{}", exporter.log_text());
    // Our plaintext hello, random bytes, and a TLS record header that never gets its body.
    let mut cases: Vec<Vec<u8>> = vec![ClientHello::new([3; 32]).as_bytes().to_vec(), vec![0x5a; 4096]];
    cases.push(vec![0x16, 0x03, 0x01, 0x02, 0x00]);
    for (index, bytes) in cases.iter().enumerate() {
        let mut stream = raw(exporter.address);
        let _ = stream.write_all(bytes);
        assert!(closed_within(&mut stream, Duration::from_secs(10)), "case {index} was not closed");
    }
    // A plaintext reader is told what is missing.
    assert!(matches!(
        connect(exporter.address, None, None, Duration::from_secs(5)),
        Err(ConnectError::ExporterSpeaksTls)
    ));
    // A reader with a certificate of the CA reads every needle byte-exact.
    let config = rdma_engine::stream::tls::client_config(&reader_files).unwrap();
    let established =
        connect(exporter.address, None, Some(&config), Duration::from_secs(5)).expect("a TLS reader connects");
    let mut link = established.tls.expect("the connection runs over TLS");
    let stream = established.stream;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let volume = open_local(exporter.volumes.path(), VOLUME_ID);
    for needle_id in 1..=NEEDLES {
        let cookie = cookie_in(&volume, needle_id);
        let (reply, data) = tls_exchange(&stream, &mut link, whole(needle_id, cookie, 4 << 20));
        assert_eq!(reply.status, Ok(()), "needle {needle_id}");
        assert_eq!(data, volume.read_checked(needle_id, cookie).unwrap(), "needle {needle_id} over TLS");
    }
    assert!(exporter.is_running());
    assert!(!exporter.log_text().contains("panicked"), "{}", exporter.log_text());
}

#[test]
fn a_peer_that_reconnects_in_a_loop_is_refused_past_its_rate_and_served_after() {
    let mut exporter = Exporter::start(&[]);
    // A burst of connections, all opened before any is read: far more than the per-second
    // limit reach the exporter within its second.
    let mut burst: Vec<TcpStream> = (0..150).map(|_| raw(exporter.address)).collect();
    for stream in &mut burst {
        let _ = stream.write_all(ClientHello::new([7; 32]).as_bytes());
    }
    let refused = burst.iter_mut().map(|stream| stream.read_exact(&mut [0u8; 72])).filter(Result::is_err).count();
    assert!(refused > 0, "150 connections at once were all served a hello");
    assert!(exporter.log_text().contains("opens more than its limit per second"), "{}", exporter.log_text());
    // The count is per second: a second later (the burst closed) the address is served again.
    drop(burst);
    std::thread::sleep(Duration::from_millis(1100));
    exporter.serves_a_good_reader(None);
}
