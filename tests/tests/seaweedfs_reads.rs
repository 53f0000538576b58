//! A real SeaweedFS end to end: files uploaded through `weed`'s own API, volumes located
//! through the master, read over RDMA from an exporter on the volume server's directory, and
//! from the volume server's HTTP when no exporter can serve them. Every byte is compared with
//! the volume server's own GET.

use integration_tests::seaweedfs::{SeaweedFs, Uploaded, WeedOptions};
use integration_tests::{free_port, Engine};
use rdma_client::{AttachOptions, Client, Completion, CompletionError, ErrorCode, Operation, QueuePair, ReadSource};
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

const TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];

fn engine(args: &[String], env: &[(&str, &str)]) -> Engine {
    Engine::start_with_env(args, env)
}

fn attach(engine: &Engine) -> (Client, QueuePair) {
    let options = AttachOptions { buffer_size_bytes: 64 << 20, sq_entries: 64, ..AttachOptions::default() };
    let client = Client::attach(&engine.socket, &options).unwrap();
    let queue_pair = client.take_queue_pair(0).unwrap();
    (client, queue_pair)
}

/// Files of several sizes and kinds: binary (stored as is) and text (stored gzipped).
fn upload_files(weed: &SeaweedFs) -> Vec<Uploaded> {
    let mut files = Vec::new();
    for (index, size) in [1usize, 100, 4096, 65_536, 300_000, 1 << 20].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..size).map(|byte| (byte * 31 + index * 7) as u8).collect();
        files.push(weed.upload(&format!("blob-{index}.bin"), Some("application/octet-stream"), &bytes));
    }
    let text = "SeaweedFS stores small files in large volumes. ".repeat(200);
    files.push(weed.upload("notes.txt", Some("text/plain"), text.as_bytes()));
    files
}

/// Submits one read of `fid` into a new buffer of `buffer_bytes` (a range when `range` is
/// given; `deadline_ns` 0 for none) and waits for its completion.
fn read_with(
    client: &Client,
    queue_pair: &mut QueuePair,
    fid: &str,
    buffer_bytes: u32,
    range: Option<(u64, u64)>,
    deadline_ns: u64,
) -> Completion {
    let FileId { volume_id, needle_id, cookie } = fid.parse().expect("fid");
    let buffer = client.allocate(buffer_bytes).unwrap();
    let operation = match range {
        None => Operation::ReadNeedle { volume_id, needle_id, cookie, buffer },
        Some((offset, length)) => Operation::ReadRange { volume_id, needle_id, cookie, offset, length, buffer },
    };
    queue_pair.prepare_with_deadline(operation, 1, deadline_ns).unwrap();
    queue_pair.submit().unwrap();
    queue_pair.wait(1, Duration::from_secs(20)).unwrap();
    queue_pair.reap_one().unwrap().expect("one completion")
}

/// Reads a whole needle; the buffer is big enough for any file here.
fn read_whole(client: &Client, queue_pair: &mut QueuePair, fid: &str) -> Completion {
    read_with(client, queue_pair, fid, (2 << 20) + 4096, None, 0)
}

fn read_range(client: &Client, queue_pair: &mut QueuePair, fid: &str, offset: u64, length: u64) -> Completion {
    read_with(client, queue_pair, fid, length as u32, Some((offset, length)), 0)
}

fn data<'a>(client: &'a Client, completion: &'a Completion) -> &'a [u8] {
    let range = completion.data_range().unwrap_or_else(|| panic!("read failed: {:?}", completion.result()));
    &client.bytes(completion.buffer.as_ref().unwrap())[range]
}

fn code(completion: &Completion) -> Option<ErrorCode> {
    match completion.result() {
        Err(CompletionError::Engine { code, .. }) => Some(code),
        _ => None,
    }
}

/// Every file read through `reader` is what the volume server sends for it as stored
/// (`Accept-Encoding: gzip`), from `source`.
fn check_all(weed: &SeaweedFs, reader: &Engine, files: &[Uploaded], source: ReadSource) {
    let (client, mut queue_pair) = attach(reader);
    for file in files {
        let completion = read_whole(&client, &mut queue_pair, &file.fid);
        let expected = weed.volume_get(&file.fid, &[("Accept-Encoding", "gzip")]);
        assert_eq!(expected.status, 200, "{}", file.fid);
        let stored_gzipped = expected.header("content-encoding") == Some("gzip");
        assert_eq!(data(&client, &completion), &expected.body[..], "{} ({})", file.fid, file.name);
        assert_eq!(completion.gzipped(), stored_gzipped, "{}", file.fid);
        assert_eq!(completion.source(), source, "{} came from {:?}", file.fid, completion.source());
        if !stored_gzipped && file.bytes.len() > 10 {
            let ranged = read_range(&client, &mut queue_pair, &file.fid, 3, 7);
            assert_eq!(data(&client, &ranged), &file.bytes[3..10], "range of {}", file.fid);
            assert_eq!(ranged.source(), source);
        }
    }
}

/// The export role on the volume server's directory, found through the master: reads go over
/// RDMA, including files uploaded after both engines started, and deleted ones read as
/// deleted.
#[test]
fn volumes_located_through_the_master_are_read_over_rdma() {
    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let mut files = upload_files(&weed);
    let export_port = free_port("127.0.0.1");
    let volume_dir = weed.volume_dir().display().to_string();
    let listen = format!("127.0.0.1:{export_port}");
    let _exporter = engine(&["--export-dir".into(), volume_dir, "--listen".into(), listen], TCP);
    let reader =
        engine(&["--master".into(), weed.master_address(), "--export-port".into(), export_port.to_string()], TCP);
    check_all(&weed, &reader, &files, ReadSource::Rdma);

    // Written after the engines started.
    files.push(weed.upload("late.bin", None, &[7u8; 5000]));
    check_all(&weed, &reader, &files[files.len() - 1..], ReadSource::Rdma);

    // A delete appends a tombstone; the reader notices it within about a second (its
    // catalogue refresh), as the local path does.
    let deleted = &files[2];
    weed.delete(&deleted.fid);
    let (client, mut queue_pair) = attach(&reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let completion = read_whole(&client, &mut queue_pair, &deleted.fid);
        if code(&completion) == Some(ErrorCode::DELETED) {
            break;
        }
        assert!(Instant::now() < deadline, "still not DELETED: {:?}", completion.result());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No exporter: the reads go to the volume server's HTTP, checked and flagged as on the other
/// paths; the volume server's answers map to the documented codes.
#[test]
fn without_an_exporter_reads_fall_back_to_http() {
    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let files = upload_files(&weed);
    let reader = engine(&["--master".into(), weed.master_address()], &[]);
    check_all(&weed, &reader, &files, ReadSource::Http);

    let (client, mut queue_pair) = attach(&reader);
    let target: FileId = files[3].fid.parse().unwrap();
    let wrong_cookie =
        format!("{},{}", target.volume_id, FileId { cookie: target.cookie ^ 1, ..target }.key_cookie_string());
    let completion = read_whole(&client, &mut queue_pair, &wrong_cookie);
    assert_eq!(code(&completion), Some(ErrorCode::NO_SUCH_NEEDLE), "wrong cookie: {:?}", completion.result());
    assert_eq!(completion.source(), ReadSource::Http);

    weed.delete(&files[1].fid);
    let completion = read_whole(&client, &mut queue_pair, &files[1].fid);
    assert_eq!(code(&completion), Some(ErrorCode::NO_SUCH_NEEDLE), "deleted: {:?}", completion.result());

    let completion = read_range(&client, &mut queue_pair, &files[0].fid, 5, 1);
    assert_eq!(code(&completion), Some(ErrorCode::RANGE_OUT_OF_BOUNDS), "{:?}", completion.result());

    let completion = read_whole(&client, &mut queue_pair, "4242,01637037d6");
    assert_eq!(code(&completion), Some(ErrorCode::NO_SUCH_VOLUME), "{:?}", completion.result());

    // A buffer too small for the body says how much it needs.
    let completion = read_with(&client, &mut queue_pair, &files[4].fid, 4096, None, 0);
    match completion.result() {
        Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, needed_bytes }) => {
            assert_eq!(needed_bytes, files[4].bytes.len() as u64)
        }
        other => panic!("expected BUFFER_TOO_SMALL, got {other:?}"),
    }

    // The counters say which path served how many reads and why they fell back: 7 whole
    // reads and 5 ranges served over HTTP; those and the 4 failed ones above (wrong cookie,
    // deleted, range, buffer) went there for want of an exporter.
    drop(queue_pair);
    drop(client);
    let mut reader = reader;
    nix::sys::signal::kill(reader.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    reader.child.wait().unwrap();
    let log = reader.log_text();
    let line = log.lines().find(|line| line.contains("reads by path")).unwrap_or_else(|| panic!("no counters:\n{log}"));
    for expected in ["local=0", "rdma=0", "http=12", "fallback_no_exporter=16", "fallback_peer_unavailable=0"] {
        assert!(line.contains(expected), "{expected} not in {line}");
    }
}

/// An exporter that is not there: the reads fall back to HTTP after the connection fails;
/// with the fallback off they fail with PEER_UNAVAILABLE.
#[test]
fn an_exporter_that_is_down_falls_back_unless_told_not_to() {
    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let files = upload_files(&weed);
    let dead_port = free_port("127.0.0.1").to_string();
    let reader = engine(&["--master".into(), weed.master_address(), "--export-port".into(), dead_port.clone()], TCP);
    check_all(&weed, &reader, &files[..2], ReadSource::Http);

    let strict = engine(
        &["--master".into(), weed.master_address(), "--export-port".into(), dead_port, "--no-http-fallback".into()],
        TCP,
    );
    let (client, mut queue_pair) = attach(&strict);
    let completion = read_whole(&client, &mut queue_pair, &files[0].fid);
    assert_eq!(code(&completion), Some(ErrorCode::PEER_UNAVAILABLE), "{:?}", completion.result());
}

/// A master that is down is a clear error, not a hang; a volume server that stalls is bounded
/// by the read's deadline.
#[test]
fn a_dead_master_and_a_stalled_volume_server_are_bounded() {
    let dead_master = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let reader = engine(&["--master".into(), dead_master], &[]);
    let (client, mut queue_pair) = attach(&reader);
    let started = Instant::now();
    let completion = read_whole(&client, &mut queue_pair, "3,01637037d6");
    assert_eq!(code(&completion), Some(ErrorCode::MASTER_UNAVAILABLE), "{:?}", completion.result());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let files = upload_files(&weed);
    let reader = engine(&["--volume-server".into(), weed.volume_address()], &[]);
    let (client, mut queue_pair) = attach(&reader);
    let completion = read_whole(&client, &mut queue_pair, &files[2].fid);
    assert_eq!(completion.source(), ReadSource::Http);
    assert!(completion.result().is_ok());

    weed.stop_volume_server();
    let started = Instant::now();
    let deadline_ns = rdma_ipc::clock::monotonic_ns() + 500_000_000;
    let completion = read_with(&client, &mut queue_pair, &files[3].fid, 1 << 20, None, deadline_ns);
    weed.resume_volume_server();
    assert_eq!(code(&completion), Some(ErrorCode::DEADLINE_EXCEEDED), "{:?}", completion.result());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// A volume server that answers 500 (here: a needle whose bytes rotted on its disk, which
/// SeaweedFS reports as an internal error) or that is gone: the fallback completes with
/// `HTTP_FAILED` and the status, and the engine goes on serving.
#[test]
fn a_failing_volume_server_is_a_clear_error() {
    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let files = upload_files(&weed);
    let reader = engine(&["--volume-server".into(), weed.volume_address()], &[]);
    let (client, mut queue_pair) = attach(&reader);

    let target: FileId = files[3].fid.parse().unwrap();
    let base = weed.volume_dir().join(target.volume_id.to_string());
    let volume = volume_format::volume::LocalVolume::open(
        &base.with_extension("dat"),
        &base.with_extension("idx"),
        volume_format::index::OffsetWidth::Four,
    )
    .unwrap();
    let location = volume.locate(target.needle_id).expect("the uploaded needle is indexed");
    // A byte in the middle of the data (past the header and the data size field).
    let rotten = location.offset_bytes + location.record_size_bytes / 2;
    let dat = std::fs::OpenOptions::new().read(true).write(true).open(base.with_extension("dat")).unwrap();
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&dat, &mut byte, rotten).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&dat, &[byte[0] ^ 0xff], rotten).unwrap();
    let direct = weed.volume_get(&files[3].fid, &[]);
    assert_eq!(direct.status, 500, "the volume server should refuse the rotten needle");
    let completion = read_whole(&client, &mut queue_pair, &files[3].fid);
    match completion.result() {
        Err(CompletionError::Engine { code: ErrorCode::HTTP_FAILED, needed_bytes: 500 }) => {}
        other => panic!("expected HTTP_FAILED with status 500, got {other:?}"),
    }
    // Other needles still read.
    assert!(read_whole(&client, &mut queue_pair, &files[2].fid).result().is_ok());

    drop(weed);
    let completion = read_whole(&client, &mut queue_pair, &files[2].fid);
    match completion.result() {
        Err(CompletionError::Engine { code: ErrorCode::HTTP_FAILED, needed_bytes: 0 }) => {}
        other => panic!("expected HTTP_FAILED without a status, got {other:?}"),
    }
    queue_pair.ping(Duration::from_secs(5)).unwrap();
}
