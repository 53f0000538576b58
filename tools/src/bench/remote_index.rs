//! `rdma-bench remote-index`: what a UCX reader holds and pays for the remote volumes it
//! reads, in one run against a real exporter (`rdma_engine::rdma::export`, in this process,
//! UCX over tcp on loopback) and generated volumes:
//!
//! - **First read of a volume**: one needle of every volume, each the volume's first read,
//!   through the exporter's lookup (the default), beside the time a whole index pull takes
//!   for the same volumes (what every first read cost before lookups).
//! - **Memory**: the bytes of cached indexes the reader holds after that (lookups hold
//!   none), and after reading many needles of every volume (volumes read often get their
//!   index pulled, within the budget).
//! - **Random 4 KiB reads** of one volume at depth 1 and 32: with its index cached (a hit:
//!   no message before the gets) and through lookups only (a miss: one round trip first).
//!
//! Figures are reported, never asserted (issue 21's targets are in `docs/benchmarks.md`).

use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_engine::rdma::export::{self, ExportConfig, ExportHandle};
use rdma_engine::rdma::remote::{RemoteConfig, RemoteReads, DEFAULT_INDEX_PULL_AFTER_LOOKUPS};
use serde::Serialize;
use shm_layout::entry::NeedleRead;
use volume_format::generate::{generate_volume, GenerateSpec, SizePlan};
use volume_format::index::OffsetWidth;
use volume_format::volume::LocalVolume;

use super::{median, BenchError};

/// Reads in flight at most, and the buffer slots they land in.
const DEPTH_MAX: usize = 64;
/// Bytes of one read's buffer slot (a 4 KiB needle's record fits).
const SLOT_BYTES: usize = 8 << 10;
/// Data bytes of the needles of the many volumes (what matters there is their count).
const SMALL_NEEDLE_BYTES: u32 = 8;
/// Needles of the volume the random reads use.
const RANDOM_VOLUME_NEEDLES: u64 = 20_000;
/// Needles read of every volume for the "read often" memory figure (random picks among as
/// many spread over its ids).
const NEEDLES_READ_OFTEN: usize = 256;
/// Longest the bench waits for anything (a pull, a batch of reads).
const WAIT_MAX: Duration = Duration::from_secs(60);

/// What the run is asked for.
#[derive(Clone, Copy, Debug)]
pub struct RemoteIndexSpec {
    pub volumes: u32,
    pub needles: u64,
    pub budget_mib: u64,
    pub seconds_per_cell: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RandomReads {
    pub depth: usize,
    pub cached_index_reads_per_s: f64,
    pub lookup_reads_per_s: f64,
    /// Lookups over cached.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RemoteIndexReport {
    pub volumes: u32,
    pub needles_per_volume: u64,
    pub budget_bytes: u64,
    /// Median of each volume's first read, through a lookup.
    pub first_read_lookup_us: f64,
    /// Median of a first read and the whole index pull it starts, per volume (before lookups,
    /// a volume's first read waited for the pull).
    pub index_pull_us: f64,
    /// Cached index bytes after one read of every volume.
    pub held_after_one_read_each: u64,
    /// Cached index bytes after `needles_read_often` reads of every volume.
    pub held_after_reading_often: u64,
    pub needles_read_often: usize,
    pub evictions: u64,
    pub random_4k: Vec<RandomReads>,
}

/// A reader: `RemoteReads` and the buffer its reads land in.
struct Reader {
    reads: RemoteReads,
    area: Vec<u8>,
    generation: u64,
}

const AREA_ID: u64 = 1;

impl Reader {
    fn new(exporter: &ExportHandle, budget_bytes: u64, pull_after: u32) -> Result<Reader, BenchError> {
        let mut config = RemoteConfig::new(vec![exporter.local_addr()]);
        config.ucx = vec![("TLS".into(), "tcp".into())];
        config.max_in_flight = DEPTH_MAX;
        config.index_budget_bytes = budget_bytes as usize;
        config.index_pull_after_lookups = pull_after;
        let mut reads = RemoteReads::new(config).map_err(|error| BenchError::Exporter(error.to_string()))?;
        let mut area = vec![0u8; DEPTH_MAX * SLOT_BYTES];
        let base = NonNull::new(area.as_mut_ptr()).ok_or_else(|| BenchError::Volumes("no buffer".into()))?;
        // SAFETY: `area` lives in the Reader and is never reallocated; Drop releases the
        // registration (after every read completed) before the Vec is freed.
        unsafe { reads.register_buffer_area(AREA_ID, base, area.len() as u64) }
            .map_err(|error| BenchError::Exporter(error.to_string()))?;
        Ok(Reader { reads, area, generation: 0 })
    }

    /// Keeps `depth` reads in flight, taking them from `next` in turn, until `stop` says so;
    /// the reads completed. Every read must succeed.
    fn run(
        &mut self,
        depth: usize,
        mut next: impl FnMut() -> NeedleRead,
        mut stop: impl FnMut(u64) -> bool,
    ) -> Result<u64, BenchError> {
        let mut free: Vec<u64> = (0..depth as u64).collect();
        let (mut started, mut done) = (0u64, 0u64);
        let begun = Instant::now();
        while !(stop(started) && free.len() == depth) {
            if begun.elapsed() > WAIT_MAX {
                return Err(BenchError::Verify("remote reads did not finish".into()));
            }
            while !stop(started) {
                let Some(slot) = free.pop() else { break };
                let read = NeedleRead { buffer_offset: slot * SLOT_BYTES as u64, ..next() };
                self.generation = (self.generation + 1) % (1 << 31);
                let token = self.generation << 32 | slot;
                // SAFETY: the slot's range lies inside the area (slot < DEPTH_MAX).
                let buffer = unsafe { NonNull::new_unchecked(self.area.as_mut_ptr().add(slot as usize * SLOT_BYTES)) };
                self.reads
                    .start_read(token, AREA_ID, &read, buffer, None)
                    .map_err(|(code, _)| BenchError::Verify(format!("read refused: {code:?}")))?;
                started += 1;
            }
            self.reads.progress();
            while let Some((token, result)) = self.reads.poll_completion() {
                result.map_err(|(code, _)| BenchError::Verify(format!("remote read failed: {code:?}")))?;
                free.push(token & u64::from(u32::MAX));
                done += 1;
            }
        }
        Ok(done)
    }

    /// Progresses until an index was pulled and no pull runs (a reader dropped with gets in
    /// flight can abort UCX 1.13's exporter over tcp: `docs/ucx-bindings.md`).
    fn wait_for_a_pull(&mut self) -> Result<(), BenchError> {
        let begun = Instant::now();
        while self.reads.index_bytes() == 0 || self.reads.pulling_an_index() {
            if begun.elapsed() > WAIT_MAX {
                return Err(BenchError::Verify("the index pull never finished".into()));
            }
            self.reads.progress();
        }
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let begun = Instant::now();
        while !self.reads.release_buffer_area(AREA_ID) && begun.elapsed() < WAIT_MAX {
            self.reads.progress();
        }
    }
}

/// Whole reads of at most `most` live needles of a generated volume, spread over its ids,
/// buffers not set yet.
fn needle_reads(dir: &Path, volume_id: u32, most: usize) -> Result<Vec<NeedleRead>, BenchError> {
    let volume = LocalVolume::open(
        &dir.join(format!("{volume_id}.dat")),
        &dir.join(format!("{volume_id}.idx")),
        OffsetWidth::Four,
    )
    .map_err(|error| BenchError::Volumes(error.to_string()))?;
    let mut ids: Vec<u64> = volume.index().iter().map(|(needle_id, _)| needle_id).collect();
    ids.sort_unstable();
    let step = ids.len().div_ceil(most.max(1)).max(1);
    let mut reads = Vec::new();
    for needle_id in ids.into_iter().step_by(step) {
        let Some(location) = volume.locate(needle_id) else { continue };
        let record = volume.read_record(&location).map_err(|error| BenchError::Volumes(error.to_string()))?;
        let cookie = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        let buffer_length = u32::try_from(location.record_size_bytes).unwrap_or(u32::MAX).min(SLOT_BYTES as u32);
        reads.push(NeedleRead { volume_id, needle_id, cookie, buffer_offset: 0, buffer_length, range: None });
    }
    Ok(reads)
}

fn generate(dir: &Path, volume_id: u32, count: u64, bytes: u32) -> Result<(), BenchError> {
    let spec = GenerateSpec {
        dir: dir.to_path_buf(),
        volume_id,
        count,
        sizes: SizePlan::Fixed(bytes),
        seed: u64::from(volume_id),
        collection: None,
        offset_width: OffsetWidth::Four,
        overwrite: true,
    };
    generate_volume(&spec, &mut |_| Ok(())).map_err(|error| BenchError::Volumes(error.to_string()))?;
    Ok(())
}

/// A small deterministic generator for the random needles.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn run(spec: RemoteIndexSpec) -> Result<RemoteIndexReport, BenchError> {
    let dir = tempfile::tempdir().map_err(|error| BenchError::Volumes(error.to_string()))?;
    let random_volume = spec.volumes + 1;
    for volume_id in 1..=spec.volumes {
        generate(dir.path(), volume_id, spec.needles, SMALL_NEEDLE_BYTES)?;
    }
    generate(dir.path(), random_volume, RANDOM_VOLUME_NEEDLES, 4096)?;
    let mut config = ExportConfig::new(vec![dir.path().to_path_buf()], "127.0.0.1:0".parse().expect("an address"));
    config.ucx = vec![("TLS".into(), "tcp".into())];
    let exporter = export::spawn(config, Arc::new(AtomicBool::new(false)))
        .map_err(|error| BenchError::Exporter(error.to_string()))?;
    let budget_bytes = spec.budget_mib << 20;
    let mut all_reads = Vec::new();
    for volume_id in 1..=spec.volumes {
        all_reads.push(needle_reads(dir.path(), volume_id, NEEDLES_READ_OFTEN)?);
    }

    // First reads through lookups, then many reads of every volume (default pull policy).
    let mut reader = Reader::new(&exporter, budget_bytes, DEFAULT_INDEX_PULL_AFTER_LOOKUPS)?;
    let mut first_reads_us = Vec::new();
    for reads in &all_reads {
        let read = reads[reads.len() / 2];
        let begun = Instant::now();
        reader.run(1, || read, |started| started >= 1)?;
        first_reads_us.push(begun.elapsed().as_secs_f64() * 1e6);
    }
    let held_after_one_read_each = reader.reads.index_bytes() as u64;
    let mut random = 1u64;
    for reads in &all_reads {
        let count = NEEDLES_READ_OFTEN as u64;
        reader.run(
            32,
            || reads[(next_random(&mut random) % reads.len() as u64) as usize],
            |started| started >= count,
        )?;
    }
    reader.wait_for_a_pull()?;
    let held_after_reading_often = reader.reads.index_bytes() as u64;
    let evictions = rdma_engine::metrics::METRICS.remote_index_evictions();
    drop(reader);

    // What a first read cost before: the volume's whole index pulled (one lookup starts it).
    let mut pulls_us = Vec::new();
    for reads in all_reads.iter().take(100) {
        let mut reader = Reader::new(&exporter, budget_bytes, 1)?;
        let read = reads[reads.len() / 2];
        let begun = Instant::now();
        reader.run(1, || read, |started| started >= 1)?;
        reader.wait_for_a_pull()?;
        pulls_us.push(begun.elapsed().as_secs_f64() * 1e6);
    }

    // Random 4 KiB reads: index cached, and lookups only.
    let random_reads = needle_reads(dir.path(), random_volume, RANDOM_VOLUME_NEEDLES as usize)?;
    let cell = Duration::from_secs_f64(spec.seconds_per_cell);
    let mut cached = Reader::new(&exporter, budget_bytes, 1)?;
    cached.run(1, || random_reads[0], |started| started >= 1)?;
    cached.wait_for_a_pull()?;
    let mut lookups = Reader::new(&exporter, budget_bytes, 0)?;
    let mut random_4k = Vec::new();
    for depth in [1, 32] {
        let mut rate = |reader: &mut Reader| -> Result<f64, BenchError> {
            let begun = Instant::now();
            let pick = || random_reads[(next_random(&mut random) % random_reads.len() as u64) as usize];
            let done = reader.run(depth, pick, |_| begun.elapsed() >= cell)?;
            Ok(done as f64 / begun.elapsed().as_secs_f64())
        };
        // Alternating halves, so drift on a noisy machine hits both alike.
        let (mut hit, mut miss) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            hit.push(rate(&mut cached)?);
            miss.push(rate(&mut lookups)?);
        }
        let (hit, miss) = (median(&hit).unwrap_or(0.0), median(&miss).unwrap_or(0.0));
        random_4k.push(RandomReads {
            depth,
            cached_index_reads_per_s: hit,
            lookup_reads_per_s: miss,
            ratio: miss / hit,
        });
    }
    drop((cached, lookups));
    exporter.join().map_err(|error| BenchError::Exporter(error.to_string()))?;
    Ok(RemoteIndexReport {
        volumes: spec.volumes,
        needles_per_volume: spec.needles,
        budget_bytes,
        first_read_lookup_us: median(&first_reads_us).unwrap_or(0.0),
        index_pull_us: median(&pulls_us).unwrap_or(0.0),
        held_after_one_read_each,
        held_after_reading_often,
        needles_read_often: NEEDLES_READ_OFTEN,
        evictions,
        random_4k,
    })
}

pub fn render(report: &RemoteIndexReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut text = format!(
        "{} volumes × {} needles, index budget {:.0} MiB\n\
         first read of a volume (exporter's lookup): {:.0} µs median; with a whole index pull: {:.0} µs median\n\
         cached index bytes: {:.2} MiB after one read of every volume, {:.2} MiB after {} reads of every volume ({} dropped over the budget)\n\
         random 4 KiB reads of one volume ({} needles):\n",
        report.volumes,
        report.needles_per_volume,
        mib(report.budget_bytes),
        report.first_read_lookup_us,
        report.index_pull_us,
        mib(report.held_after_one_read_each),
        mib(report.held_after_reading_often),
        report.needles_read_often,
        report.evictions,
        RANDOM_VOLUME_NEEDLES,
    );
    for cell in &report.random_4k {
        text.push_str(&format!(
            "  depth {:>2}: index cached {:>8.0}/s, lookups {:>8.0}/s, {:.2}×\n",
            cell.depth, cell.cached_index_reads_per_s, cell.lookup_reads_per_s, cell.ratio
        ));
    }
    text
}
