//! `rdma-bench read`: needle reads through the engine's rings beside plain
//! `pread` of the same records, at 4 KiB, 64 KiB and 1 MiB of data and
//! queue depths 1 and 32.
//!
//! The floor is `pread` of each needle's whole record into a heap buffer,
//! in this process, with nothing else (no ring, no validation). `pread` is
//! synchronous, so depth is treated as parallelism: depth 1 is one thread
//! reading sequentially; depth 32 is `min(32, CPUs)` threads (2 on the
//! 2-vCPU VM) each reading sequentially from its share of the needles. The
//! volumes are normally in the page cache (just written by volgen, or warmed
//! by the first round), so both sides measure memory copies, not a disk.

use super::needles::{find_needles, NeedleRef};
use super::pipeline::{measure_round_trips, Pipeline};
use super::{command_line, interference_warning, BenchError, Schedule, Series, SliceResult, Summary};
use crate::affinity;
use crate::machine::{Interference, MachineFacts};
use crate::ringstat::take_snapshot;
use crate::timing::TickClock;
use rdma_client::{AttachOptions, Buffer, Client, CompletionError, ErrorCode, Operation, QueuePair};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Data sizes measured, with their labels.
pub const SIZES: [(u64, &str); 3] = [(4096, "4KiB"), (65536, "64KiB"), (1 << 20, "1MiB")];
/// Queue depths measured.
pub const DEPTHS: [u32; 2] = [1, 32];
/// Needles of each size cycled through.
const NEEDLES_PER_SIZE: usize = 64;
/// Bound on waiting for one completion.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Local,
    Ucx,
}

#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub socket: PathBuf,
    pub transport: Transport,
    pub volume_dir: PathBuf,
    pub duration_ms: u64,
    pub rounds: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReadResult {
    pub size_bytes: u64,
    pub size_label: &'static str,
    pub depth: u32,
    pub reads_per_sec: f64,
    pub bytes_per_sec: Option<f64>,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub floor_reads_per_sec: f64,
    pub floor_bytes_per_sec: Option<f64>,
    pub floor_p50_ns: Option<f64>,
    pub floor_p99_ns: Option<f64>,
    /// Engine reads/s over floor reads/s (median of per-round ratios).
    pub reads_ratio: Option<f64>,
    pub bytes_ratio: Option<f64>,
    /// Engine p50 over floor p50 (median of per-round ratios).
    pub p50_ratio: Option<f64>,
    pub floor_threads: usize,
    /// One thread, pread + CRC-32C: the engine's necessary work.
    pub checked_floor_reads_per_sec: f64,
    pub checked_floor_p50_ns: Option<f64>,
    pub reads_ratio_vs_checked: Option<f64>,
    pub p50_ratio_vs_checked: Option<f64>,
    pub engine: Summary,
    pub floor: Summary,
    pub checked_floor: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub file_id: String,
    pub data_size_bytes: u64,
    pub source: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReadReport {
    pub tool: &'static str,
    pub command: String,
    pub transport: Transport,
    pub volume_dir: String,
    pub results: Vec<ReadResult>,
    pub floor_method: String,
    /// One read per size, compared byte for byte with the file.
    pub verified: Vec<Verified>,
    pub needles_per_size: usize,
    pub schedule: Schedule,
    pub poller_cpu: Option<usize>,
    pub clock_source: &'static str,
    pub steal_percent: f64,
    /// CPU time other processes used during the run, % of all CPUs.
    pub other_cpu_percent: f64,
    pub interference_warning: Option<String>,
    pub machine: MachineFacts,
    pub wall_time_ms: u64,
}

/// Buffers of one size, recycled as completions hand them back.
struct BufferPool {
    free: Vec<Buffer>,
}

struct ReadBench {
    clock: TickClock,
    schedule: Schedule,
    client: Client,
    queue_pair: QueuePair,
    needles: BTreeMap<u64, Vec<NeedleRef>>,
    pools: BTreeMap<u64, BufferPool>,
    /// Every CPU this process may use (before the main thread is pinned).
    all_cpus: Vec<usize>,
    series: BTreeMap<String, Series>,
    error_count: u64,
    first_error: Option<String>,
}

fn read_operation(needle: &NeedleRef, buffer: Buffer) -> Operation {
    Operation::ReadNeedle {
        volume_id: needle.file_id.volume_id,
        needle_id: needle.file_id.needle_id,
        cookie: needle.file_id.cookie,
        buffer,
    }
}

impl ReadBench {
    /// Reads `needle` once and compares the bytes with the file.
    fn verify(&mut self, size: u64) -> Result<Verified, BenchError> {
        let needle = self.needles[&size][0].clone();
        let expected = needle.expected_data().map_err(BenchError::Verify)?;
        let pool = self.pools.get_mut(&size).expect("a pool per size");
        let buffer = pool.free.pop().expect("pool holds 32 buffers");
        self.queue_pair
            .prepare(read_operation(&needle, buffer), 0)
            .and_then(|()| self.queue_pair.submit())
            .and_then(|()| self.queue_pair.wait(1, READ_TIMEOUT))
            .map_err(BenchError::Engine)?;
        let completion = self
            .queue_pair
            .reap_one()
            .map_err(BenchError::Engine)?
            .ok_or_else(|| BenchError::Verify("no completion after wait".into()))?;
        let result = completion.result();
        let source = completion.source().name();
        let data = completion
            .data_range()
            .and_then(|range| {
                let buffer = completion.buffer.as_ref()?;
                self.client.bytes(buffer).get(range).map(<[u8]>::to_vec)
            })
            .unwrap_or_default();
        if let Some(buffer) = completion.buffer {
            pool.free.push(buffer);
        }
        match result {
            Ok(_) if data == expected => {
                Ok(Verified { file_id: needle.file_id.to_string(), data_size_bytes: expected.len() as u64, source })
            }
            Ok(_) => Err(BenchError::Verify(format!(
                "{}: the engine delivered {} bytes that differ from the file's {} data bytes",
                needle.file_id,
                data.len(),
                expected.len()
            ))),
            Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, needed_bytes }) => {
                Err(BenchError::Verify(format!(
                    "{}: the engine needs a {needed_bytes}-byte buffer for a {}-byte record",
                    needle.file_id, needle.record_size_bytes
                )))
            }
            Err(error) => Err(BenchError::Verify(format!("{}: {error}", needle.file_id))),
        }
    }

    fn engine_slice(&mut self, size: u64, depth: u32) -> Result<SliceResult, BenchError> {
        let clock = self.clock;
        let needles = &self.needles[&size];
        let pool = self.pools.get_mut(&size).expect("a pool per size");
        let mut pipeline = Pipeline::new(
            &clock,
            Duration::from_millis(self.schedule.warmup_ms),
            Duration::from_millis(self.schedule.slice_ms),
        );
        let mut next = 0usize;
        let mut idle_spins = 0u32;
        while !pipeline.finished() {
            let wanted = depth.saturating_sub(pipeline.in_flight);
            if wanted > 0 {
                let stamp = clock.now();
                for _ in 0..wanted {
                    let Some(buffer) = pool.free.pop() else { break };
                    let needle = &needles[next % needles.len()];
                    next += 1;
                    self.queue_pair.prepare(read_operation(needle, buffer), 0).map_err(BenchError::Engine)?;
                    pipeline.submitted(stamp);
                }
                self.queue_pair.submit().map_err(BenchError::Engine)?;
            }
            let (mut reaped, mut bytes) = (0u32, 0u64);
            while let Some(completion) = self.queue_pair.reap_one().map_err(BenchError::Engine)? {
                match completion.result() {
                    Ok(count) => bytes += count,
                    Err(error) => {
                        self.error_count += 1;
                        self.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
                if let Some(buffer) = completion.buffer {
                    pool.free.push(buffer);
                }
                reaped += 1;
            }
            if reaped > 0 {
                pipeline.completed_bytes(reaped, bytes);
                idle_spins = 0;
                continue;
            }
            std::hint::spin_loop();
            pipeline.idle();
            idle_spins = idle_spins.wrapping_add(1);
            if idle_spins.is_multiple_of(65_536) {
                // A read takes µs to ms; after this many empty polls, wait
                // (bounded) instead of spinning.
                self.queue_pair.wait(1, READ_TIMEOUT).map_err(BenchError::Engine)?;
            }
        }
        while self.queue_pair.in_flight() > 0 {
            self.queue_pair.wait(1, READ_TIMEOUT).map_err(BenchError::Engine)?;
            while let Some(completion) = self.queue_pair.reap_one().map_err(BenchError::Engine)? {
                if let Some(buffer) = completion.buffer {
                    pool.free.push(buffer);
                }
            }
        }
        Ok(pipeline.into_result())
    }

    /// `threads` threads, each reading its share of the needles with
    /// `depth / threads` buffers in rotation.
    fn floor_slice(&self, size: u64, depth: u32, threads: usize, work: FloorWork) -> Result<SliceResult, BenchError> {
        let needles = &self.needles[&size];
        let threads = threads.clamp(1, depth.max(1) as usize);
        let buffers_per_thread = (depth as usize).div_ceil(threads);
        let (clock, schedule) = (self.clock, self.schedule);
        let all_cpus = self.all_cpus.clone();
        let results: Vec<Result<SliceResult, BenchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread_index| {
                    let all_cpus = all_cpus.clone();
                    scope.spawn(move || {
                        let _ = affinity::allow_cpus(&all_cpus);
                        let mine: Vec<&NeedleRef> = needles.iter().skip(thread_index).step_by(threads).collect();
                        pread_loop(&clock, &schedule, &mine, buffers_per_thread, work)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|_| Err(BenchError::Helper("pread thread panicked".into()))))
                .collect()
        });
        let mut merged = SliceResult::default();
        for result in results {
            merged.merge_parallel(&result?);
        }
        Ok(merged)
    }

    fn floor_threads(&self, depth: u32) -> usize {
        if depth == 1 {
            1
        } else {
            self.all_cpus.len().clamp(1, depth as usize)
        }
    }

    fn record(&mut self, name: String, slice: SliceResult) {
        self.series.entry(name).or_default().push(slice);
    }
}

/// What a floor thread does per read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FloorWork {
    /// `pread` of the whole record.
    Pread,
    /// `pread` of the whole record, then CRC-32C of its data: the work a
    /// validated read cannot skip.
    PreadCrc,
}

/// Sequential `pread`s of whole records on one thread, rotating through
/// `buffer_count` buffers (the memory a ring with that many reads in flight
/// writes into).
fn pread_loop(
    clock: &TickClock,
    schedule: &Schedule,
    needles: &[&NeedleRef],
    buffer_count: usize,
    work: FloorWork,
) -> Result<SliceResult, BenchError> {
    if needles.is_empty() {
        return Ok(SliceResult::default());
    }
    let largest = needles.iter().map(|n| n.record_size_bytes).max().unwrap_or(0) as usize;
    let mut buffers: Vec<Vec<u8>> = (0..buffer_count.max(1)).map(|_| vec![0u8; largest]).collect();
    let mut checksum = 0u32;
    let mut result = measure_round_trips(
        clock,
        Duration::from_millis(schedule.warmup_ms),
        Duration::from_millis(schedule.slice_ms),
        None,
        |sequence| {
            let needle = needles[sequence as usize % needles.len()];
            let buffer_index = sequence as usize % buffers.len();
            let record = &mut buffers[buffer_index][..needle.record_size_bytes as usize];
            needle
                .dat
                .read_exact_at(record, needle.record_offset_bytes)
                .map_err(|error| BenchError::Volumes(format!("pread failed: {error}")))?;
            if work == FloorWork::PreadCrc {
                let start = needle.data_offset_in_record as usize;
                let end = start + needle.data_size_bytes as usize;
                if let Some(data) = record.get(start..end) {
                    checksum ^= volume_format::crc::crc32c(data);
                }
            }
            Ok(())
        },
    )?;
    std::hint::black_box(checksum);
    // Every needle of a size has the same data size: count data bytes, as
    // the engine's completions do.
    result.bytes = needles[0].data_size_bytes * result.operations;
    Ok(result)
}

fn buffer_length(needles: &[NeedleRef]) -> u32 {
    let largest = needles.iter().map(|n| n.record_size_bytes).max().unwrap_or(4096);
    (largest.div_ceil(4096) * 4096).min(u32::MAX as u64) as u32
}

fn missing_sizes_message(dir: &std::path::Path, missing: &[u64]) -> String {
    format!(
        "no needle with {missing:?} data bytes in the volumes of {}; generate some with: \
         volgen --dir {} --volume-id 1 --count 192 --sizes 4096,65536,1048576",
        dir.display(),
        dir.display()
    )
}

/// Finds the needles, verifies one read per size, then measures.
pub fn run(options: &ReadOptions) -> Result<ReadReport, BenchError> {
    if options.transport == Transport::Ucx {
        return Err(BenchError::NotWired);
    }
    let wall_start = Instant::now();
    let machine = MachineFacts::collect();
    let sizes: Vec<u64> = SIZES.iter().map(|(size, _)| *size).collect();
    let needles = find_needles(&options.volume_dir, &sizes, NEEDLES_PER_SIZE).map_err(BenchError::Volumes)?;
    let missing: Vec<u64> = needles.iter().filter(|(_, list)| list.is_empty()).map(|(size, _)| *size).collect();
    if !missing.is_empty() {
        return Err(BenchError::Volumes(missing_sizes_message(&options.volume_dir, &missing)));
    }
    let max_depth = *DEPTHS.iter().max().unwrap_or(&1);
    let area_bytes: u64 =
        needles.values().map(|list| buffer_length(list) as u64 * max_depth as u64).sum::<u64>() + (1 << 20);
    let client = Client::attach(
        &options.socket,
        &AttachOptions {
            queue_pairs: 1,
            sq_entries: 64,
            buffer_size_bytes: area_bytes,
            client_name: "rdma-bench read".into(),
        },
    )
    .map_err(BenchError::Attach)?;
    let queue_pair = client.take_queue_pair(0).map_err(BenchError::Attach)?;
    let mut pools = BTreeMap::new();
    for (size, list) in &needles {
        let length = buffer_length(list);
        let free = (0..max_depth)
            .map(|_| client.allocate(length))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BenchError::Attach)?;
        pools.insert(*size, BufferPool { free });
    }
    let all_cpus = affinity::allowed_cpus(0);
    let snapshot = take_snapshot(&options.socket)?;
    let poller_cpu = affinity::engine_poller_cpu(snapshot.engine_pid);
    if let Some((_, requester)) = poller_cpu.and_then(|cpu| affinity::cpu_pair(Some(cpu))) {
        let _ = affinity::pin_current_thread(requester);
    }
    let interference = Interference::start(&[snapshot.engine_pid]);
    let measurement_count = (SIZES.len() * DEPTHS.len() * 3) as u32;
    let mut bench = ReadBench {
        clock: TickClock::calibrate(),
        schedule: Schedule::new(options.duration_ms, options.rounds, measurement_count),
        client,
        queue_pair,
        needles,
        pools,
        all_cpus,
        series: BTreeMap::new(),
        error_count: 0,
        first_error: None,
    };
    let verified = sizes.iter().map(|&size| bench.verify(size)).collect::<Result<Vec<_>, _>>()?;
    for _ in 0..bench.schedule.rounds {
        for &size in &sizes {
            for depth in DEPTHS {
                let engine = bench.engine_slice(size, depth)?;
                bench.record(format!("engine_{size}_{depth}"), engine);
                let threads = bench.floor_threads(depth);
                let floor = bench.floor_slice(size, depth, threads, FloorWork::Pread)?;
                bench.record(format!("floor_{size}_{depth}"), floor);
                let checked = bench.floor_slice(size, depth, 1, FloorWork::PreadCrc)?;
                bench.record(format!("checked_{size}_{depth}"), checked);
            }
        }
    }
    if bench.error_count > 0 {
        return Err(BenchError::Completions {
            count: bench.error_count,
            first: bench.first_error.take().unwrap_or_default(),
        });
    }
    let results = results(&bench);
    let (other_cpu_percent, steal_percent) = interference.finish();
    Ok(ReadReport {
        tool: "rdma-bench read",
        command: command_line(),
        transport: options.transport,
        volume_dir: options.volume_dir.display().to_string(),
        results,
        floor_method: format!(
            "floor: pread of the same whole records into heap buffers (as many buffers \
             as reads in flight, in rotation); depth 1 = 1 thread, depth 32 = {} threads \
             reading sequentially (pread is synchronous). checked floor: 1 thread, pread \
             + CRC-32C of the data, the work a validated read cannot skip",
            bench.floor_threads(32)
        ),
        verified,
        needles_per_size: NEEDLES_PER_SIZE,
        schedule: bench.schedule,
        poller_cpu,
        clock_source: bench.clock.source(),
        steal_percent,
        other_cpu_percent,
        interference_warning: interference_warning(other_cpu_percent),
        machine,
        wall_time_ms: wall_start.elapsed().as_millis() as u64,
    })
}

fn results(bench: &ReadBench) -> Vec<ReadResult> {
    let empty = Series::default();
    let mut out = Vec::new();
    for (size, label) in SIZES {
        for depth in DEPTHS {
            let engine = bench.series.get(&format!("engine_{size}_{depth}")).unwrap_or(&empty);
            let floor = bench.series.get(&format!("floor_{size}_{depth}")).unwrap_or(&empty);
            let checked = bench.series.get(&format!("checked_{size}_{depth}")).unwrap_or(&empty);
            let checked_summary = checked.summary(&bench.clock, true);
            let engine_summary = engine.summary(&bench.clock, true);
            let floor_summary = floor.summary(&bench.clock, true);
            out.push(ReadResult {
                size_bytes: size,
                size_label: label,
                depth,
                reads_per_sec: engine_summary.ops_per_sec,
                bytes_per_sec: engine_summary.bytes_per_sec,
                p50_ns: engine_summary.p50_ns,
                p99_ns: engine_summary.p99_ns,
                floor_reads_per_sec: floor_summary.ops_per_sec,
                floor_bytes_per_sec: floor_summary.bytes_per_sec,
                floor_p50_ns: floor_summary.p50_ns,
                floor_p99_ns: floor_summary.p99_ns,
                reads_ratio: engine.ops_ratio(floor, &bench.clock),
                bytes_ratio: engine.bytes_ratio(floor, &bench.clock),
                p50_ratio: engine.p50_ratio(floor, &bench.clock),
                floor_threads: bench.floor_threads(depth),
                checked_floor_reads_per_sec: checked_summary.ops_per_sec,
                checked_floor_p50_ns: checked_summary.p50_ns,
                reads_ratio_vs_checked: engine.ops_ratio(checked, &bench.clock),
                p50_ratio_vs_checked: engine.p50_ratio(checked, &bench.clock),
                engine: engine_summary,
                floor: floor_summary,
                checked_floor: checked_summary,
            });
        }
    }
    out
}
