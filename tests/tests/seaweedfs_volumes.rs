//! The engine beside a real, running SeaweedFS: a `weed master` and `weed volume` write the
//! directory that one engine reads locally (`--volume-dir`) and another exports over UCX
//! (`--export-dir`) to a third (`--peer`). Files go in through SeaweedFS's own API after the
//! engines started, and every read is compared with the volume server's own GET (gzip
//! accepted, so a needle stored gzipped comes back as stored, flagged `Content-Encoding:
//! gzip`). Also: deletes, `-index=leveldb`, TTLs, a vacuum while readers keep reading,
//! quiet skipping of SeaweedFS's other files, and `.vif` files that refuse a volume.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::seaweedfs::{SeaweedFs, Uploaded, WeedOptions};
use integration_tests::{free_port, read_needle, Engine};
use rdma_client::{AttachOptions, Client, Completion, CompletionError, ErrorCode, Operation, QueuePair, ReadSource};
use volume_format::file_id::FileId;
use volume_format::ttl::{unit, Ttl};
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

const TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];
/// Buffer for one whole read: the largest upload here is 3 MiB.
const READ_BUFFER_BYTES: u32 = 4 << 20;
/// Bound on waiting for something an engine picks up on its own (a new volume, a rescan).
const PICK_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn engine(args: &[String], env: &[(&str, &str)]) -> Engine {
    Engine::start_with_env(args, env)
}

/// The three engines around one volume directory.
struct Engines {
    local: Engine,
    exporter: Engine,
    reader: Engine,
}

fn start_engines(dir: &Path, extra: &[&str]) -> Engines {
    let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
    let dir = dir.display().to_string();
    let local = engine(&[vec!["--volume-dir".into(), dir.clone()], extra.clone()].concat(), &[]);
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let export_args = [vec!["--export-dir".into(), dir, "--listen".into(), listen.clone()], extra.clone()].concat();
    let exporter = engine(&export_args, TCP);
    let reader = start_reader(&listen, &extra);
    Engines { local, exporter, reader }
}

fn start_reader(listen: &str, extra: &[String]) -> Engine {
    engine(&[vec!["--peer".into(), listen.to_string()], extra.to_vec()].concat(), TCP)
}

/// A client of one engine.
struct Reading {
    client: Client,
    queue_pair: QueuePair,
    source: ReadSource,
}

impl Reading {
    fn attach(engine: &Engine, source: ReadSource) -> Reading {
        Reading::attach_socket(&engine.socket, source)
    }

    fn attach_socket(socket: &Path, source: ReadSource) -> Reading {
        let options = AttachOptions { buffer_size_bytes: 64 << 20, sq_entries: 16, ..AttachOptions::default() };
        let client = Client::attach(socket, &options).unwrap();
        let queue_pair = client.take_queue_pair(0).unwrap();
        Reading { client, queue_pair, source }
    }

    fn read(&mut self, fid: &str) -> Completion {
        let id = FileId::from_str(fid).unwrap();
        read_needle(&self.client, &mut self.queue_pair, (id.volume_id, id.needle_id, id.cookie), READ_BUFFER_BYTES)
    }

    fn read_range(&mut self, fid: &str, offset: u64, length: u64) -> Completion {
        let id = FileId::from_str(fid).unwrap();
        let buffer = self.client.allocate(READ_BUFFER_BYTES).unwrap();
        let operation = Operation::ReadRange {
            volume_id: id.volume_id,
            needle_id: id.needle_id,
            cookie: id.cookie,
            offset,
            length,
            buffer,
        };
        self.queue_pair.prepare(operation, 1).unwrap();
        self.queue_pair.submit().unwrap();
        self.queue_pair.wait(1, Duration::from_secs(20)).unwrap();
        self.queue_pair.reap_one().unwrap().unwrap()
    }

    /// Reads `fid`, again while the engine does not know its volume yet (it finds new volumes
    /// on its own), at most [`PICK_UP_TIMEOUT`].
    fn read_once_served(&mut self, fid: &str) -> Completion {
        let deadline = Instant::now() + PICK_UP_TIMEOUT;
        loop {
            let completion = self.read(fid);
            if code(&completion) != Some(ErrorCode::NO_SUCH_VOLUME) || Instant::now() > deadline {
                return completion;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads a deleted `fid` until the engine has seen the delete (locally within
    /// `INDEX_MAX_AGE`, over RDMA at the reader's next catalogue refresh, about a second):
    /// until then it must read the needle as it was, never anything else.
    fn read_until_deleted(&mut self, weed: &SeaweedFs, fid: &str) {
        let deadline = Instant::now() + PICK_UP_TIMEOUT;
        loop {
            let completion = self.read(fid);
            match completion.result() {
                Err(CompletionError::Engine { code: ErrorCode::DELETED, .. }) => return,
                Ok(_) => {
                    let data = self.data(&completion);
                    let reply = weed.volume_get(&format!("{fid}?readDeleted=true"), &[("Accept-Encoding", "gzip")]);
                    assert!(data == reply.body, "{fid} over {:?} before the delete was seen: other bytes", self.source);
                }
                other => panic!("{fid} over {:?}: {other:?}, expected DELETED", self.source),
            }
            assert!(Instant::now() < deadline, "{fid} over {:?}: the delete was not seen", self.source);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The data of `fid` (see [`Reading::read_once_served`]); panics on an error.
    fn read_bytes(&mut self, fid: &str) -> Vec<u8> {
        let completion = self.read_once_served(fid);
        assert!(completion.result().is_ok(), "{fid} over {:?}: {:?}", self.source, completion.result());
        self.data(&completion)
    }

    fn data(&self, completion: &Completion) -> Vec<u8> {
        let range = completion.data_range().expect("a successful read has its data in its buffer");
        self.client.bytes(completion.buffer.as_ref().unwrap())[range].to_vec()
    }

    /// Reads `fid` and checks it against what the volume server's GET answers.
    fn assert_like_volume_server(&mut self, weed: &SeaweedFs, fid: &str) {
        let completion = self.read_once_served(fid);
        let (stored, gzipped) = stored_bytes(weed, fid);
        assert!(completion.result().is_ok(), "{fid} over {:?}: {:?}", self.source, completion.result());
        assert_eq!(completion.source(), self.source, "{fid}");
        let data = self.data(&completion);
        assert!(
            data == stored,
            "{fid} over {:?}: {} bytes, the volume server has {}",
            self.source,
            data.len(),
            stored.len()
        );
        assert_eq!(completion.gzipped(), gzipped, "{fid} over {:?}: gzip flag", self.source);
    }
}

fn code(completion: &Completion) -> Option<ErrorCode> {
    match completion.result() {
        Err(CompletionError::Engine { code, .. }) => Some(code),
        _ => None,
    }
}

/// The bytes the volume server stores for `fid` (a GET accepting gzip) and whether they are gzip.
fn stored_bytes(weed: &SeaweedFs, fid: &str) -> (Vec<u8>, bool) {
    let reply = weed.volume_get(fid, &[("Accept-Encoding", "gzip")]);
    assert_eq!(reply.status, 200, "GET {fid} from the volume server: {reply:?}");
    (reply.body.clone(), reply.header("content-encoding") == Some("gzip"))
}

/// Deterministic bytes that do not compress.
fn random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Files of many sizes and types, as users upload them: binary (stored as sent), text and
/// JSON (stored gzipped by the volume server), with and without a mime type.
fn upload_many(weed: &SeaweedFs, seed: u64) -> Vec<Uploaded> {
    let text = |length: usize| "the quick brown fox jumps over the lazy dog\n".repeat(length / 44 + 1).into_bytes();
    let mut uploaded = Vec::new();
    for (index, length) in [1usize, 100, 4095, 4096, 65_537, 1 << 20, 3 << 20].into_iter().enumerate() {
        let seed = seed + index as u64;
        uploaded.push(weed.upload(&format!("blob{seed}.bin"), None, &random_bytes(seed, length)));
        uploaded.push(weed.upload(&format!("photo{seed}.png"), Some("image/png"), &random_bytes(seed + 99, length)));
        uploaded.push(weed.upload(&format!("notes{seed}.txt"), Some("text/plain"), &text(length)));
    }
    let json = br#"{"name": "a", "values": [1, 2, 3], "nested": {"more": "text text text text text text"}}"#;
    uploaded.push(weed.upload("data.json", Some("application/json"), json));
    uploaded.push(weed.upload_with("paired.bin", None, &random_bytes(seed, 777), "", &[("Seaweed-Color", "blue")]));
    uploaded
}

/// Uploads after the engines started, reads every file over both paths (whole and two
/// ranges), deletes a third and reads those as deleted.
fn uploads_and_deletes_read_like_the_volume_server(options: WeedOptions) {
    let Some(weed) = SeaweedFs::start(options) else { return };
    let engines = start_engines(&weed.volume_dir(), &[]);
    let mut local = Reading::attach(&engines.local, ReadSource::Local);
    let mut remote = Reading::attach(&engines.reader, ReadSource::Rdma);
    let uploaded = upload_many(&weed, 1);
    for file in uploaded.iter().filter(|file| file.name.ends_with(".txt") && file.bytes.len() >= 4096) {
        assert!(stored_bytes(&weed, &file.fid).1, "{} ({} bytes) is stored gzipped", file.name, file.bytes.len());
    }
    for file in &uploaded {
        local.assert_like_volume_server(&weed, &file.fid);
        remote.assert_like_volume_server(&weed, &file.fid);
        let (stored, gzipped) = stored_bytes(&weed, &file.fid);
        for (offset, length) in [(0u64, 1u64), (stored.len() as u64 / 2, 5000)] {
            for reading in [&mut local, &mut remote] {
                let completion = reading.read_range(&file.fid, offset, length);
                assert_eq!(completion.gzipped(), gzipped, "{} range over {:?}: gzip flag", file.fid, reading.source);
                let end = stored.len().min((offset + length) as usize);
                assert_eq!(
                    reading.data(&completion),
                    &stored[offset as usize..end],
                    "{} range {offset}+{length}",
                    file.fid
                );
            }
        }
    }
    let deleted: Vec<&Uploaded> = uploaded.iter().step_by(3).collect();
    for file in &deleted {
        weed.delete(&file.fid);
        assert_eq!(weed.volume_get(&file.fid, &[]).status, 404);
    }
    for file in &deleted {
        local.read_until_deleted(&weed, &file.fid);
        remote.read_until_deleted(&weed, &file.fid);
    }
    for file in uploaded.iter().skip(1).step_by(3) {
        local.assert_like_volume_server(&weed, &file.fid);
        remote.assert_like_volume_server(&weed, &file.fid);
    }
}

#[test]
fn files_uploaded_after_start_read_like_the_volume_server_locally_and_over_rdma() {
    uploads_and_deletes_read_like_the_volume_server(WeedOptions::default());
}

#[test]
fn leveldb_index_volumes_read_like_the_volume_server() {
    let options = WeedOptions { leveldb_index: true, ..WeedOptions::default() };
    uploads_and_deletes_read_like_the_volume_server(options);
}

/// SeaweedFS's other files (`.vif`, `.ldb/`, `.vid_stamp`, `vol_dir.uuid`) and a stranger
/// file are skipped without a log line; a volume created after start (a new collection) is
/// found locally, and by the exporter and the reader (its catalogue refresh).
#[test]
fn new_volumes_are_found_and_other_files_skipped_quietly() {
    let Some(weed) = SeaweedFs::start(WeedOptions { leveldb_index: true, ..WeedOptions::default() }) else { return };
    std::fs::write(weed.volume_dir().join("README.stray"), b"not a volume").unwrap();
    let engines = start_engines(&weed.volume_dir(), &[]);
    let mut local = Reading::attach(&engines.local, ReadSource::Local);
    let file = weed.upload_with("late.bin", None, &random_bytes(5, 3000), "collection=pictures", &[]);
    assert!(
        std::fs::read_dir(weed.volume_dir())
            .unwrap()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("pictures_")),
        "the assign created the collection's volumes"
    );
    local.assert_like_volume_server(&weed, &file.fid);
    // The reader learns it from its next catalogue refresh.
    Reading::attach(&engines.reader, ReadSource::Rdma).assert_like_volume_server(&weed, &file.fid);

    let names = [".vif", ".ldb", ".vid_stamp", "vol_dir.uuid", "README.stray", "not served"];
    for (role, log) in [("local", engines.local.log_text()), ("exporter", engines.exporter.log_text())] {
        for line in log.lines() {
            assert!(
                !names.iter().any(|name| line.contains(name)),
                "{role} engine logged about a non-volume file: {line}"
            );
        }
    }
}

/// A TTL that is still running is served (real weed, `ttl=1m` on assign and POST); one that
/// has run out is not found, as the volume server answers 404 (a volume written with an
/// append time in the past, since a real expiry takes a minute or more).
#[test]
fn ttl_needles_are_served_until_they_expire() {
    if let Some(weed) = SeaweedFs::start(WeedOptions::default()) {
        let first = weed.upload_with("early.txt", Some("text/plain"), b"ttl text text text text", "ttl=1m", &[]);
        let engines = start_engines(&weed.volume_dir(), &[]);
        let second = weed.upload_with("alive.bin", None, &random_bytes(3, 5000), "ttl=1m", &[]);
        let mut local = Reading::attach(&engines.local, ReadSource::Local);
        let mut remote = Reading::attach(&engines.reader, ReadSource::Rdma);
        for file in [&first, &second] {
            local.assert_like_volume_server(&weed, &file.fid);
            remote.assert_like_volume_server(&weed, &file.fid);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let now_ns = volume_format::needle::unix_now_ns();
    let minute_ns = 60_000_000_000;
    let one_minute = Some(Ttl { count: 1, unit: unit::MINUTE });
    let one_hour = Some(Ttl { count: 1, unit: unit::HOUR });
    let mut writer = VolumeWriter::create_in(dir.path(), None, 1, VolumeWriterOptions::default()).unwrap();
    let data = b"data that lives for a while";
    let needle = |needle_id, ttl, last_modified| NeedleSpec {
        needle_id,
        cookie: 0x5eed,
        data,
        ttl,
        last_modified,
        ..Default::default()
    };
    // (needle, append time, expired): the volume server's rule needs a TTL and a
    // last-modified flag, and counts from the append time.
    let cases = [
        (needle(1, one_minute, Some(now_ns / 1_000_000_000 - 120)), now_ns - 2 * minute_ns, true),
        (needle(2, one_hour, Some(now_ns / 1_000_000_000 - 120)), now_ns - 2 * minute_ns, false),
        (needle(3, one_minute, None), now_ns - 2 * minute_ns, false),
        (needle(4, None, Some(1)), now_ns - 2 * minute_ns, false),
    ];
    for (spec, append_at_ns, _) in &cases {
        writer.append_at(spec, *append_at_ns).unwrap();
    }
    writer.finish().unwrap();
    let engines = start_engines(dir.path(), &[]);
    let mut local = Reading::attach(&engines.local, ReadSource::Local);
    let mut remote = Reading::attach(&engines.reader, ReadSource::Rdma);
    for (spec, _, expired) in &cases {
        let fid = FileId { volume_id: 1, needle_id: spec.needle_id, cookie: spec.cookie }.to_string();
        for reading in [&mut local, &mut remote] {
            let completion = reading.read(&fid);
            match expired {
                true => assert_eq!(code(&completion), Some(ErrorCode::NO_SUCH_NEEDLE), "{fid} {:?}", reading.source),
                false => assert_eq!(reading.data(&completion), data, "{fid} {:?}", reading.source),
            }
        }
        for reading in [&mut local, &mut remote] {
            let range = reading.read_range(&fid, 5, 4);
            match expired {
                true => assert_eq!(code(&range), Some(ErrorCode::NO_SUCH_NEEDLE), "{fid} range {:?}", reading.source),
                false => assert_eq!(reading.data(&range), &data[5..9], "{fid} range {:?}", reading.source),
            }
        }
    }
}

/// `.vif` files that do not match how the engine reads: another offset width, or another
/// version than the super block. Each such volume is refused with one log line, also after
/// later rescans; the volume with a matching `.vif` is served.
#[test]
fn volumes_whose_vif_disagrees_are_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    let vif = |version: u32, bytes_offset: u32| {
        format!(
            r#"{{"files": [], "version": {version}, "replication": "", "bytesOffset": {bytes_offset}, "datFileSize": "0", "expireAtSec": "0", "readOnly": false}}"#
        )
    };
    for (volume_id, info) in [(1, Some(vif(3, 5))), (2, Some(vif(2, 4))), (3, Some(vif(3, 4))), (4, None)] {
        write_small_volume(dir.path(), volume_id);
        if let Some(info) = info {
            std::fs::write(dir.path().join(format!("{volume_id}.vif")), info).unwrap();
        }
    }
    let engines = start_engines(dir.path(), &[]);
    let mut local = Reading::attach(&engines.local, ReadSource::Local);
    let mut remote = Reading::attach(&engines.reader, ReadSource::Rdma);
    for reading in [&mut local, &mut remote] {
        for refused in [1, 2] {
            let completion = reading.read(&small_fid(refused));
            assert_eq!(code(&completion), Some(ErrorCode::NO_SUCH_VOLUME), "volume {refused} {:?}", reading.source);
        }
        for served in [3, 4] {
            assert_eq!(reading.read_bytes(&small_fid(served)), SMALL_DATA, "volume {served}");
        }
    }
    // A volume added now is found by a rescan: the refusals have been looked at again since.
    write_small_volume(dir.path(), 5);
    assert_eq!(local.read_bytes(&small_fid(5)), SMALL_DATA);
    assert_eq!(remote.read_bytes(&small_fid(5)), SMALL_DATA);
    assert_eq!(code(&remote.read(&small_fid(1))), Some(ErrorCode::NO_SUCH_VOLUME));

    for (role, log) in [("local", engines.local.log_text()), ("exporter", engines.exporter.log_text())] {
        let refusals: Vec<&str> = log.lines().filter(|line| line.contains("not served")).collect();
        assert_eq!(refusals.len(), 2, "{role}: one line per refused volume:\n{}", refusals.join("\n"));
        assert!(
            refusals.iter().any(|line| line.contains("1.vif") && line.contains("5-byte offsets")),
            "{role}: {refusals:?}"
        );
        assert!(
            refusals.iter().any(|line| line.contains("2.vif") && line.contains("version 2")),
            "{role}: {refusals:?}"
        );
    }

    // The same volume is served by an engine configured for its width.
    let five =
        engine(&["--volume-dir".into(), dir.path().display().to_string(), "--offset-bytes".into(), "5".into()], &[]);
    let mut five_reading = Reading::attach(&five, ReadSource::Local);
    assert_eq!(
        code(&five_reading.read(&small_fid(3))),
        Some(ErrorCode::NO_SUCH_VOLUME),
        "4-byte volume, 5-byte engine"
    );
    assert!(five.wait_for_log("volume not served", PICK_UP_TIMEOUT));
}

const SMALL_DATA: &[u8] = b"a small needle";

fn small_fid(volume_id: u32) -> String {
    FileId { volume_id, needle_id: 0x42, cookie: 0x1234 }.to_string()
}

fn write_small_volume(dir: &Path, volume_id: u32) {
    // Written beside, then renamed in: the engine never sees a half-written volume.
    let staging = tempfile::tempdir_in(dir).unwrap();
    let mut writer = VolumeWriter::create_in(staging.path(), None, volume_id, VolumeWriterOptions::default()).unwrap();
    writer.append(&NeedleSpec { needle_id: 0x42, cookie: 0x1234, data: SMALL_DATA, ..Default::default() }).unwrap();
    writer.finish().unwrap();
    for extension in ["idx", "dat"] {
        let name = format!("{volume_id}.{extension}");
        std::fs::rename(staging.path().join(&name), dir.join(&name)).unwrap();
    }
}

/// A vacuum while readers keep reading: every read returns the right bytes or an error, never
/// other bytes; afterwards the compacted volumes are read (deleted needles gone, live ones at
/// their new offsets) on both paths.
#[test]
fn a_vacuum_while_reading_never_yields_wrong_bytes() {
    let Some(weed) = SeaweedFs::start(WeedOptions::default()) else { return };
    let engines = start_engines(&weed.volume_dir(), &[]);
    let files: Vec<Uploaded> = (0..120u64)
        .map(|index| weed.upload(&format!("v{index}.bin"), None, &random_bytes(index, 1000 + 977 * index as usize)))
        .collect();
    let (deleted, live): (Vec<Uploaded>, Vec<Uploaded>) = files.into_iter().partition(|file| file.bytes.len() % 2 == 0);
    for file in &deleted {
        weed.delete(&file.fid);
    }
    let volumes_before = identities(&weed.volume_dir());
    let live = Arc::new(live);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<ReaderThread> = [(&engines.local, ReadSource::Local), (&engines.reader, ReadSource::Rdma)]
        .into_iter()
        .map(|(engine, source)| {
            let passes = Arc::new(AtomicU64::new(0));
            let socket = engine.socket.clone();
            let thread = spawn_reader(socket, source, Arc::clone(&live), Arc::clone(&stop), Arc::clone(&passes));
            (thread, passes)
        })
        .collect();
    wait_for_passes(&readers, 1);

    // The master answers once every volume is compacted; the readers go on meanwhile.
    let vacuum_url = format!("http://{}/vol/vacuum?garbageThreshold=0.1", weed.master_address());
    let vacuum_started = Instant::now();
    let vacuum = std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
        integration_tests::seaweedfs::http_get(&agent, &vacuum_url, &[])
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let first_compacted = loop {
        let now = identities(&weed.volume_dir());
        let changed: Vec<u32> = now
            .iter()
            .filter(|(id, identity)| volumes_before.get(id).is_some_and(|before| before != *identity))
            .map(|(id, _)| *id)
            .collect();
        if !changed.is_empty() && !has_compaction_files(&weed.volume_dir()) {
            break changed;
        }
        assert!(Instant::now() < deadline, "no volume was compacted\n{}", weed.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both readers go on until each has made two whole passes over the compacted volumes.
    let passes_at_compaction: Vec<u64> = readers.iter().map(|(_, passes)| passes.load(Ordering::Acquire)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while readers.iter().zip(&passes_at_compaction).any(|((_, passes), at)| passes.load(Ordering::Acquire) < at + 2) {
        assert!(Instant::now() < deadline, "readers stalled after the vacuum");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let reply = vacuum.join().unwrap().expect("vacuum");
    assert_eq!(reply.status, 200, "vacuum: {reply:?}");
    eprintln!("vacuum answered after {:?}; first compacted {first_compacted:?}", vacuum_started.elapsed());
    for (thread, _) in readers {
        let errors = thread.join().expect("a reader saw wrong bytes");
        eprintln!("errors during the vacuum: {errors:?}");
    }

    let mut local = Reading::attach(&engines.local, ReadSource::Local);
    let mut remote = Reading::attach(&engines.reader, ReadSource::Rdma);
    for file in live.iter() {
        local.assert_like_volume_server(&weed, &file.fid);
        remote.assert_like_volume_server(&weed, &file.fid);
    }
    let after = identities(&weed.volume_dir());
    let compacted: Vec<u32> =
        after.iter().filter(|(id, identity)| volumes_before.get(id) != Some(identity)).map(|(id, _)| *id).collect();
    let mut gone = 0;
    for file in deleted.iter().filter(|file| compacted.contains(&FileId::from_str(&file.fid).unwrap().volume_id)) {
        for reading in [&mut local, &mut remote] {
            // DELETED until the engine has moved to the compacted files, then gone.
            let deadline = Instant::now() + PICK_UP_TIMEOUT;
            loop {
                match code(&reading.read(&file.fid)) {
                    Some(ErrorCode::NO_SUCH_NEEDLE) => break,
                    Some(ErrorCode::DELETED) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    other => panic!("{} {:?}: {other:?}, expected it compacted away", file.fid, reading.source),
                }
            }
        }
        gone += 1;
    }
    assert!(gone > 0, "the compacted volumes held deleted needles");
    // The replacement was followed, not restarted around: each engine said so.
    for (role, engine, line) in [
        ("local", &engines.local, "local volume replaced"),
        ("exporter", &engines.exporter, "exported volume replaced"),
        ("reader", &engines.reader, "remote volume replaced"),
    ] {
        assert!(engine.log_text().contains(line), "{role} engine did not follow the compaction");
    }
}

/// Reads every live file over and over until `stop`; panics on a success with other bytes.
/// Returns the error codes seen, with counts.
fn spawn_reader(
    socket: std::path::PathBuf,
    source: ReadSource,
    live: Arc<Vec<Uploaded>>,
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<(String, u64)>> {
    std::thread::spawn(move || {
        let mut reading = Reading::attach_socket(&socket, source);
        let mut errors: Vec<(String, u64)> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for file in live.iter() {
                let completion = reading.read(&file.fid);
                match completion.result() {
                    Ok(_) => {
                        let data = reading.data(&completion);
                        assert!(
                            !completion.gzipped() && data == file.bytes,
                            "{} over {:?}: wrong bytes",
                            file.fid,
                            reading.source
                        );
                    }
                    Err(error) => {
                        let name = format!("{:?} {error:?}", reading.source);
                        match errors.iter_mut().find(|(seen, _)| *seen == name) {
                            Some((_, count)) => *count += 1,
                            None => errors.push((name, 1)),
                        }
                    }
                }
            }
            passes.fetch_add(1, Ordering::AcqRel);
        }
        errors
    })
}

/// A reader thread (its errors, when joined) and the passes it has made.
type ReaderThread = (std::thread::JoinHandle<Vec<(String, u64)>>, Arc<AtomicU64>);

fn wait_for_passes(readers: &[ReaderThread], count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while readers.iter().any(|(_, passes)| passes.load(Ordering::Acquire) < count) {
        assert!(Instant::now() < deadline, "readers made no pass");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (device, inode) of each volume's `.dat` and `.idx`, by volume id.
fn identities(dir: &Path) -> std::collections::BTreeMap<u32, [(u64, u64); 2]> {
    use std::os::unix::fs::MetadataExt;
    let identity =
        |path: &Path| std::fs::metadata(path).map(|metadata| (metadata.dev(), metadata.ino())).unwrap_or_default();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let id = volume_format::volume::volume_id_from_dat_path(&path)?;
            Some((id, [identity(&path), identity(&path.with_extension("idx"))]))
        })
        .collect()
}

fn has_compaction_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        path.extension().is_some_and(|extension| extension == "cpd" || extension == "cpx" || extension == "cpc")
    })
}
