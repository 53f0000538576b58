//! What the RDMA transport tests share: volume directories, an in-process exporter, and a
//! [`Reader`] (a real `RemoteReads` with one registered buffer area) whose reads are compared
//! byte for byte with `LocalVolume::read_checked`.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_engine::rdma::export::{self, ExportConfig, ExportHandle};
use rdma_engine::rdma::remote::{ReadResult, RemoteConfig, RemoteReads};
use rdma_engine::read::check::error_code;
use shm_layout::entry::NeedleRead;
use volume_format::generate::{generate_volume, GenerateSpec, SizePlan};
use volume_format::index::OffsetWidth;
use volume_format::volume::{LocalVolume, VolumeError};

pub const AREA_ID: u64 = 1;
pub const AREA_BYTES: usize = 64 << 20;
pub const DEPTH: usize = 64;
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Small registration pieces, so records straddle pieces and need several gets.
pub const TEST_PIECE_BYTES: u64 = 64 << 10;

pub fn tcp() -> Vec<(String, String)> {
    vec![("TLS".into(), "tcp".into())]
}

pub fn localhost_any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume-format/tests/fixtures")
}

/// Fixture volumes copied as SeaweedFS names them: 1 healthy, 2 legacy CRC, 3 bitrot; plus a
/// generated volume 4 with sizes from 0 bytes to 300 KiB.
pub fn volume_dir() -> tempfile::TempDir {
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

pub fn generate(dir: &Path, volume_id: u32, count: u64, sizes: SizePlan, seed: u64) {
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

pub fn open_local(dir: &Path, id: u32) -> LocalVolume {
    open_local_with(dir, id, OffsetWidth::Four)
}

pub fn open_local_with(dir: &Path, id: u32, width: OffsetWidth) -> LocalVolume {
    LocalVolume::open(&dir.join(format!("{id}.dat")), &dir.join(format!("{id}.idx")), width).unwrap()
}

/// The exporter settings the tests use: small pieces, quick rescans.
pub fn export_config(dir: &Path, listen: SocketAddr, ucx: Vec<(String, String)>) -> ExportConfig {
    let mut config = ExportConfig::new(vec![dir.to_path_buf()], listen);
    config.piece_size_bytes = TEST_PIECE_BYTES;
    config.rescan_interval = Duration::from_millis(50);
    config.ucx = ucx;
    config
}

pub fn spawn_exporter(dir: &Path, listen: SocketAddr, ucx: Vec<(String, String)>) -> ExportHandle {
    spawn_exporter_with(export_config(dir, listen, ucx))
}

pub fn spawn_exporter_with(config: ExportConfig) -> ExportHandle {
    export::spawn(config, Arc::new(AtomicBool::new(false))).unwrap()
}

/// The reader settings the tests use: one peer, DEPTH reads, small index chunks.
pub fn remote_config(peer: SocketAddr, ucx: Vec<(String, String)>) -> RemoteConfig {
    let mut config = RemoteConfig::new(vec![peer]);
    config.ucx = ucx;
    config.max_in_flight = DEPTH;
    config.index_chunk_bytes = 4096; // several chunks for the bigger indexes
    config
}

/// The reader side: RemoteReads plus a registered buffer area.
pub struct Reader {
    pub reads: RemoteReads,
    pub area: Vec<u8>,
}

impl Reader {
    pub fn new(peer: SocketAddr, ucx: Vec<(String, String)>) -> Reader {
        Reader::with_config(remote_config(peer, ucx))
    }

    pub fn with_config(config: RemoteConfig) -> Reader {
        let mut reads = RemoteReads::new(config).unwrap();
        let mut area = vec![0u8; AREA_BYTES];
        let base = NonNull::new(area.as_mut_ptr()).unwrap();
        // SAFETY: `area` is kept in the Reader and outlives the registration: Drop releases it
        // (after every read has completed) before the Vec is freed.
        unsafe { reads.register_buffer_area(AREA_ID, base, AREA_BYTES as u64) }.unwrap();
        Reader { reads, area }
    }

    /// Starts one read into its buffer range of the area.
    pub fn start(&mut self, token: u64, read: &NeedleRead) -> Result<(), (shm_layout::entry::ErrorCode, u64)> {
        assert!(read.buffer_offset + u64::from(read.buffer_length) <= AREA_BYTES as u64, "buffer outside the area");
        // SAFETY: the buffer range lies inside the registered area (asserted above).
        let buffer = NonNull::new(unsafe { self.area.as_mut_ptr().add(read.buffer_offset as usize) }).unwrap();
        self.reads.start_read(token, AREA_ID, read, buffer, None)
    }

    /// Runs `reads` (each with its buffer at `(offset, length)` of the area), DEPTH at a time;
    /// returns the results in order. Tokens are made as the engine's read table makes them
    /// (`generation << 32 | slot`, a slot below DEPTH): here the generation is the read's index.
    pub fn run(&mut self, reads: &[NeedleRead]) -> Vec<ReadResult> {
        let mut results: Vec<Option<ReadResult>> = vec![None; reads.len()];
        let mut free_slots: Vec<u64> = (0..DEPTH as u64).rev().collect();
        let mut next = 0;
        let start = Instant::now();
        while next < reads.len() || free_slots.len() < DEPTH {
            assert!(start.elapsed() < READ_DEADLINE * 3, "reads did not finish");
            while next < reads.len() && self.reads.has_room() {
                let Some(slot) = free_slots.pop() else { break };
                let token = (next as u64) << 32 | slot;
                if let Err(error) = self.start(token, &reads[next]) {
                    results[next] = Some(Err(error));
                    free_slots.push(slot);
                }
                next += 1;
            }
            self.reads.progress();
            while let Some((token, result)) = self.reads.poll_completion() {
                results[(token >> 32) as usize] = Some(result);
                free_slots.push(token & u64::from(u32::MAX));
            }
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    /// Progresses until the next completion (at most `timeout`).
    pub fn next_completion(&mut self, timeout: Duration) -> Option<(u64, ReadResult)> {
        let start = Instant::now();
        loop {
            if let Some(completion) = self.reads.poll_completion() {
                return Some(completion);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            self.reads.progress();
        }
    }

    pub fn bytes(&self, read: &NeedleRead, offset: u64, length: u64) -> &[u8] {
        let start = (read.buffer_offset + offset) as usize;
        &self.area[start..start + length as usize]
    }

    pub fn wait_up(&mut self, peer: SocketAddr, timeout: Duration) {
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
pub fn whole_reads(volume_id: u32, volume: &LocalVolume, cookie_of: impl Fn(u64) -> u32) -> Vec<NeedleRead> {
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

pub fn cookie_in(volume: &LocalVolume, id: u64) -> u32 {
    let location = volume.locate(id).unwrap();
    let record = volume.read_record(&location).unwrap();
    u32::from_be_bytes(record[..4].try_into().unwrap())
}

/// Checks each read against the local read of the same needle; returns how many succeeded.
pub fn compare_whole(reader: &mut Reader, volume_id: u32, volume: &LocalVolume) -> usize {
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
                (local, remote) => {
                    let local = local.map(|record| format!("{} bytes", record.len()));
                    panic!("needle {}: local {local:?}, remote {remote:?}", read.needle_id)
                }
            }
        }
    }
    ok
}
