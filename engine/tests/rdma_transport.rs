//! The UCX transport end to end: a real exporter (`rdma::export::spawn`, or a child process)
//! and a real `RemoteReads`, separate UCX contexts, real volume files (SeaweedFS fixtures and
//! generated volumes) in temp dirs. Every needle read over RDMA is compared byte for byte with
//! `LocalVolume::read_checked`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_engine::rdma::export::{self, ExportConfig, ExportHandle};
use rdma_engine::rdma::remote::{ReadResult, RemoteConfig, RemoteReads};
use rdma_engine::rdma::ucx_shared_memory_settings;
use rdma_engine::read::check::error_code;
use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use volume_format::generate::{generate_volume, GenerateSpec, SizePlan};
use volume_format::index::{IndexEntry, OffsetWidth};
use volume_format::volume::{LocalVolume, VolumeError};
use volume_format::writer::{encode_needle, NeedleSpec, WRITER_VERSION};

const AREA_ID: u64 = 1;
const AREA_BYTES: usize = 64 << 20;
const DEPTH: usize = 64;
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Small registration pieces, so records straddle pieces and need several gets.
const TEST_PIECE_BYTES: u64 = 64 << 10;
const CHILD_ROLE: &str = "RDMA_TEST_CHILD_EXPORTER";

fn tcp() -> Vec<(String, String)> {
    vec![("TLS".into(), "tcp".into())]
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume-format/tests/fixtures")
}

/// Fixture volumes copied as SeaweedFS names them: 1 healthy, 2 legacy CRC, 3 bitrot; plus a
/// generated volume 4 with sizes from 0 bytes to 300 KiB.
fn volume_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (id, name) in [(1, "healthy_volume"), (2, "legacy_crc_volume"), (3, "bitrot_volume")] {
        for ext in ["dat", "idx"] {
            std::fs::copy(fixtures_dir().join(format!("{name}.{ext}")), dir.path().join(format!("{id}.{ext}")))
                .unwrap();
        }
    }
    generate(dir.path(), 4, 200, SizePlan::Cycle(vec![0, 1, 100, 4096, 65_536, 70_000, 300_000]), 7);
    dir
}

fn generate(dir: &Path, volume_id: u32, count: u64, sizes: SizePlan, seed: u64) {
    let spec = GenerateSpec {
        dir: dir.to_path_buf(),
        volume_id,
        count,
        sizes,
        seed,
        collection: None,
        offset_width: OffsetWidth::Four,
        overwrite: true,
    };
    generate_volume(&spec, &mut |_| Ok(())).unwrap();
}

fn open_local(dir: &Path, id: u32) -> LocalVolume {
    LocalVolume::open(&dir.join(format!("{id}.dat")), &dir.join(format!("{id}.idx")), OffsetWidth::Four).unwrap()
}

fn spawn_exporter(dir: &Path, listen: SocketAddr, ucx: Vec<(String, String)>) -> ExportHandle {
    let mut config = ExportConfig::new(vec![dir.to_path_buf()], listen);
    config.piece_size_bytes = TEST_PIECE_BYTES;
    config.rescan_interval = Duration::from_millis(50);
    config.ucx = ucx;
    export::spawn(config, Arc::new(AtomicBool::new(false))).unwrap()
}

/// The reader side: RemoteReads plus a registered buffer area.
struct Reader {
    reads: RemoteReads,
    area: Vec<u8>,
}

impl Reader {
    fn new(peer: SocketAddr, ucx: Vec<(String, String)>) -> Reader {
        let mut config = RemoteConfig::new(vec![peer]);
        config.ucx = ucx;
        config.max_in_flight = DEPTH;
        config.index_chunk_bytes = 4096; // several chunks for the bigger indexes
        let mut reads = RemoteReads::new(config).unwrap();
        let mut area = vec![0u8; AREA_BYTES];
        let base = NonNull::new(area.as_mut_ptr()).unwrap();
        // SAFETY: `area` is kept in the Reader and outlives the registration: Drop releases it
        // (after every read has completed) before the Vec is freed.
        unsafe { reads.register_buffer_area(AREA_ID, base, AREA_BYTES as u64) }.unwrap();
        Reader { reads, area }
    }

    /// Runs `reads` (each with its buffer at `(offset, length)` of the area), DEPTH at a time;
    /// returns the results in order.
    fn run(&mut self, reads: &[NeedleRead]) -> Vec<ReadResult> {
        let mut results: Vec<Option<ReadResult>> = vec![None; reads.len()];
        let mut next = 0;
        let mut outstanding = 0;
        let start = Instant::now();
        while next < reads.len() || outstanding > 0 {
            assert!(start.elapsed() < READ_DEADLINE * 3, "reads did not finish");
            while next < reads.len() && self.reads.has_room() && outstanding < DEPTH {
                let read = &reads[next];
                // SAFETY: the buffer range lies inside the registered area (checked by the test
                // layout below and by start_read).
                let buffer = NonNull::new(unsafe { self.area.as_mut_ptr().add(read.buffer_offset as usize) }).unwrap();
                match self.reads.start_read(next as u64, AREA_ID, read, buffer) {
                    Ok(()) => outstanding += 1,
                    Err(error) => results[next] = Some(Err(error)),
                }
                next += 1;
            }
            self.reads.progress();
            while let Some((token, result)) = self.reads.poll_completion() {
                results[token as usize] = Some(result);
                outstanding -= 1;
            }
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    fn bytes(&self, read: &NeedleRead, offset: u64, length: u64) -> &[u8] {
        let start = (read.buffer_offset + offset) as usize;
        &self.area[start..start + length as usize]
    }

    fn wait_up(&mut self, peer: SocketAddr, timeout: Duration) {
        let start = Instant::now();
        while !self.reads.peer_is_up(peer) {
            assert!(start.elapsed() < timeout, "peer did not come back");
            self.reads.progress();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let start = Instant::now();
        while !self.reads.release_buffer_area(AREA_ID) && start.elapsed() < READ_DEADLINE {
            self.reads.progress();
        }
    }
}

/// One whole-needle read per live needle of `volume`, buffers packed in the area.
fn whole_reads(volume_id: u32, volume: &LocalVolume, cookie_of: impl Fn(u64) -> u32) -> Vec<NeedleRead> {
    let mut ids: Vec<u64> = volume.index().iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    let mut offset = 0u64;
    let mut reads = Vec::new();
    for (slot, id) in ids.into_iter().enumerate() {
        let location = volume.locate(id).unwrap();
        let length = location.record_size_bytes;
        // Buffers of a batch of DEPTH never overlap; later batches reuse the area.
        if slot % DEPTH == 0 || offset + length > AREA_BYTES as u64 {
            offset = 0;
        }
        reads.push(NeedleRead {
            volume_id,
            needle_id: id,
            cookie: cookie_of(id),
            buffer_offset: offset,
            buffer_length: length as u32,
            range: None,
        });
        offset += length.next_multiple_of(64);
    }
    reads
}

fn cookie_in(volume: &LocalVolume, id: u64) -> u32 {
    let location = volume.locate(id).unwrap();
    let record = volume.read_record(&location).unwrap();
    u32::from_be_bytes(record[..4].try_into().unwrap())
}

/// Checks each read against the local read of the same needle; returns how many succeeded.
fn compare_whole(reader: &mut Reader, volume_id: u32, volume: &LocalVolume) -> usize {
    let reads = whole_reads(volume_id, volume, |id| cookie_in(volume, id));
    // Run in batches of DEPTH so buffers are compared before they are reused.
    let mut ok = 0;
    for batch in reads.chunks(DEPTH) {
        let results = reader.run(batch);
        for (read, result) in batch.iter().zip(results) {
            match (volume.read_checked(read.needle_id, read.cookie), result) {
                (Ok(record), Ok(done)) => {
                    assert_eq!(reader.bytes(read, 0, record.len() as u64), &record[..], "needle {}", read.needle_id);
                    let parsed = volume_format::needle::NeedleRecord::parse(&record, volume.version()).unwrap();
                    assert_eq!(done.data_offset_in_buffer, parsed.data_offset_in_record as u64);
                    assert_eq!(done.data_length, parsed.data.len() as u64);
                    assert_eq!(done.gzipped, parsed.is_gzipped());
                    ok += 1;
                }
                (Err(VolumeError::Record { source, .. }), Err((code, _))) => {
                    assert_eq!(code, error_code(&source), "needle {}", read.needle_id)
                }
                (local, remote) => panic!("needle {}: local {local:?}, remote {remote:?}", read.needle_id),
            }
        }
    }
    ok
}

fn every_needle_matches(ucx: Vec<(String, String)>) {
    let dir = volume_dir();
    let exporter = spawn_exporter(dir.path(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), ucx.clone());
    let mut reader = Reader::new(exporter.local_addr(), ucx);
    let start = Instant::now();
    let mut total = 0;
    for id in 1..=4 {
        assert!(reader.reads.serves(id));
        let local = open_local(dir.path(), id);
        let ok = compare_whole(&mut reader, id, &local);
        if id == 3 {
            assert!(ok < local.index().live_count(), "bitrot needles must fail");
        } else {
            assert_eq!(ok, local.index().live_count(), "volume {id}");
        }
        total += local.index().live_count();
    }
    eprintln!("{total} needles read and compared in {:?}", start.elapsed());
    assert!(!reader.reads.serves(99));

    // Range reads: clamped like HTTP, header checked, gzip flag reported.
    let local = open_local(dir.path(), 4);
    let ids = [1u64, 5, 6, 7];
    let reads: Vec<NeedleRead> = ids
        .iter()
        .enumerate()
        .map(|(slot, &id)| NeedleRead {
            volume_id: 4,
            needle_id: id,
            cookie: cookie_in(&local, id),
            buffer_offset: slot as u64 * 400_000,
            buffer_length: 400_000,
            range: Some(ByteRange { offset: 3, length: 69_000 }),
        })
        .collect();
    let results = reader.run(&reads);
    for (read, result) in reads.iter().zip(results) {
        let record = local.read_checked(read.needle_id, read.cookie).unwrap();
        let parsed = volume_format::needle::NeedleRecord::parse(&record, local.version()).unwrap();
        let data = parsed.data;
        if data.len() <= 3 {
            assert_eq!(result.unwrap_err().0, ErrorCode::RANGE_OUT_OF_BOUNDS);
            continue;
        }
        let done = result.unwrap();
        let expected = &data[3..(3 + 69_000).min(data.len())];
        assert_eq!(done.data_length, expected.len() as u64);
        assert_eq!(reader.bytes(read, 0, done.data_length), expected);
        assert_eq!(done.gzipped, parsed.is_gzipped());
    }

    // Errors: unknown needle, wrong cookie, buffer too small (with the size needed).
    let location = local.locate(7).unwrap();
    let base = NeedleRead {
        volume_id: 4,
        needle_id: 7,
        cookie: cookie_in(&local, 7),
        buffer_offset: 0,
        buffer_length: location.record_size_bytes as u32,
        range: None,
    };
    let reads = [
        NeedleRead { needle_id: 1 << 40, ..base },
        NeedleRead { cookie: base.cookie ^ 1, ..base },
        NeedleRead { buffer_length: 100, ..base },
    ];
    let results = reader.run(&reads);
    assert_eq!(results[0], Err((ErrorCode::NO_SUCH_NEEDLE, 0)));
    assert_eq!(results[1], Err((ErrorCode::COOKIE_MISMATCH, 0)));
    assert_eq!(results[2], Err((ErrorCode::BUFFER_TOO_SMALL, location.record_size_bytes)));
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn every_needle_matches_over_tcp() {
    every_needle_matches(tcp());
}

#[test]
fn every_needle_matches_over_shared_memory() {
    every_needle_matches(ucx_shared_memory_settings());
}

/// Appends needles `first..first + count` to volume `id` as a volume server would: record to
/// the .dat, then the entry to the .idx.
fn append_needles(dir: &Path, id: u32, first: u64, count: u64) {
    let dat_path = dir.join(format!("{id}.dat"));
    let mut dat = std::fs::OpenOptions::new().append(true).open(&dat_path).unwrap();
    let mut idx = std::fs::OpenOptions::new().append(true).open(dir.join(format!("{id}.idx"))).unwrap();
    for needle_id in first..first + count {
        let data = vec![(needle_id % 251) as u8; 1000 + needle_id as usize * 37];
        let spec = NeedleSpec { cookie: 0x1234_0000 | needle_id as u32, needle_id, data: &data, ..Default::default() };
        let record = encode_needle(WRITER_VERSION, &spec).unwrap();
        let offset_bytes = dat.metadata().unwrap().len();
        dat.write_all(&record).unwrap();
        dat.flush().unwrap();
        let size = i32::from_be_bytes(record[12..16].try_into().unwrap());
        let entry = IndexEntry { needle_id, offset_bytes, size }.encode(OffsetWidth::Four).unwrap();
        idx.write_all(&entry).unwrap();
    }
}

#[test]
fn growing_volume_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 5, 20, SizePlan::Fixed(5000), 1);
    let exporter = spawn_exporter(dir.path(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), tcp());
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    assert_eq!(compare_whole(&mut reader, 5, &open_local(dir.path(), 5)), 20);
    // Grow past several registration pieces while the reader holds the old catalogue.
    for round in 0..3 {
        append_needles(dir.path(), 5, 1000 + round * 40, 40);
        let local = open_local(dir.path(), 5);
        assert_eq!(compare_whole(&mut reader, 5, &local), local.index().live_count(), "round {round}");
    }
    drop(reader);
    exporter.join().unwrap();
}

#[test]
fn replaced_volume_never_gives_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 6, 100, SizePlan::Cycle(vec![100, 9000, 70_000]), 1);
    let exporter = spawn_exporter(dir.path(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), tcp());
    let mut reader = Reader::new(exporter.local_addr(), tcp());
    let old = open_local(dir.path(), 6);
    assert_eq!(compare_whole(&mut reader, 6, &old), 100);
    // Replace the volume (as compaction does: new files renamed over the old ones), with other
    // data, cookies and sizes at the same needle ids.
    let staging = tempfile::tempdir().unwrap();
    generate(staging.path(), 6, 100, SizePlan::Cycle(vec![9000, 70_000, 100, 5]), 2);
    for ext in ["idx", "dat"] {
        std::fs::copy(staging.path().join(format!("6.{ext}")), dir.path().join(format!("6.{ext}.new"))).unwrap();
        std::fs::rename(dir.path().join(format!("6.{ext}.new")), dir.path().join(format!("6.{ext}"))).unwrap();
    }
    let new = open_local(dir.path(), 6);
    // Reads with the new cookies right away: the stale index fails the check, the retry
    // refreshes and reads the new bytes. Never a success with other bytes.
    assert_eq!(compare_whole(&mut reader, 6, &new), 100);
    // Old cookies: clean errors, never the old bytes.
    let reads = whole_reads(6, &new, |id| cookie_in(&old, id));
    for (read, result) in reads.iter().zip(reader.run(&reads)) {
        if cookie_in(&old, read.needle_id) != cookie_in(&new, read.needle_id) {
            assert!(result.is_err(), "needle {} succeeded with a stale cookie", read.needle_id);
        }
    }
    drop(reader);
    exporter.join().unwrap();
}

// ----- exporter in a child process -----

/// Not a test of its own: the child exporter's body (returns at once in the parent).
#[test]
fn child_exporter() {
    let Ok(spec) = std::env::var(CHILD_ROLE) else { return };
    let (dir, port) = spec.split_once('|').unwrap();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse::<u16>().unwrap()));
    let mut config = ExportConfig::new(vec![PathBuf::from(dir)], listen);
    config.piece_size_bytes = TEST_PIECE_BYTES;
    config.ucx = tcp();
    let exporter = match export::spawn(config, Arc::new(AtomicBool::new(false))) {
        Ok(exporter) => exporter,
        Err(error) => {
            println!("ERROR={error}");
            return;
        }
    };
    println!("PORT={}", exporter.local_addr().port());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct ChildExporter {
    child: Child,
    port: u16,
}

impl ChildExporter {
    fn spawn(dir: &Path, port: u16) -> ChildExporter {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_exporter", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROLE, format!("{}|{port}", dir.display()))
            .env("UCX_TCP_CM_REUSEADDR", "y")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("child exited before announcing its port").unwrap();
            assert!(!line.contains("ERROR="), "child exporter: {line}");
            if let Some((_, port)) = line.split_once("PORT=") {
                break port.trim().parse().unwrap();
            }
        };
        ChildExporter { child, port }
    }
}

impl Drop for ChildExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exporter_killed_mid_read_then_back_on_the_same_port() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 8, 64, SizePlan::Fixed(512 << 10), 3);
    let local = open_local(dir.path(), 8);
    let mut child = ChildExporter::spawn(dir.path(), 0);
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
    let mut reader = Reader::new(peer, tcp());
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);

    // 64 reads of 512 KiB in flight, then SIGKILL the exporter.
    let reads = whole_reads(8, &local, |id| cookie_in(&local, id));
    for (token, read) in reads.iter().enumerate() {
        // SAFETY: inside the registered area.
        let buffer = NonNull::new(unsafe { reader.area.as_mut_ptr().add(read.buffer_offset as usize) }).unwrap();
        reader.reads.start_read(token as u64, AREA_ID, read, buffer).unwrap();
    }
    assert!(!reader.reads.release_buffer_area(AREA_ID), "released with gets in flight");
    child.child.kill().unwrap();
    let killed_at = Instant::now();
    let (mut failed, mut succeeded) = (0, 0);
    while reader.reads.in_flight() > 0 {
        assert!(killed_at.elapsed() < READ_DEADLINE, "reads still in flight after the exporter died");
        reader.reads.progress();
        while let Some((token, result)) = reader.reads.poll_completion() {
            match result {
                Ok(_) => {
                    let read = &reads[token as usize];
                    let record = local.read_checked(read.needle_id, read.cookie).unwrap();
                    assert_eq!(reader.bytes(read, 0, record.len() as u64), &record[..]);
                    succeeded += 1;
                }
                Err((code, _)) => {
                    assert_eq!(code, ErrorCode::PEER_UNAVAILABLE);
                    failed += 1;
                }
            }
        }
    }
    eprintln!("exporter killed: {succeeded} reads done, {failed} failed within {:?}", killed_at.elapsed());
    // While it is down, reads fail at once.
    let results = reader.run(&reads[..1]);
    assert_eq!(results[0], Err((ErrorCode::PEER_UNAVAILABLE, 0)));

    // Back on the same port: reads work again.
    let _child = ChildExporter::spawn(dir.path(), child.port);
    reader.wait_up(peer, READ_DEADLINE);
    assert_eq!(compare_whole(&mut reader, 8, &local), 64);
}
