//! The floors of `rdma-bench read --transport local`: `pread` of the same
//! whole records in this process, with nothing else (no ring, no
//! validation), and `pread` + CRC-32C (the work a validated read cannot
//! skip).
//!
//! `pread` is synchronous, so depth is treated as parallelism: depth 1 is
//! one thread reading sequentially; depth 32 is `min(32, CPUs)` threads (2
//! on the 2-vCPU VM) each reading sequentially from its share of the
//! needles. The volumes are normally in the page cache (just written by
//! volgen, or warmed by the first round), so both sides measure memory
//! copies, not a disk.

use super::{BenchError, NeedleRef, Schedule, SliceResult};
use crate::affinity;
use crate::bench::pipeline::measure_round_trips;
use crate::timing::TickClock;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// What a floor thread does per read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FloorWork {
    /// `pread` of the whole record.
    Pread,
    /// `pread` of the whole record, then CRC-32C of its data.
    PreadCrc,
}

/// Threads the `pread` floor uses at `depth` on a machine with `cpu_count` CPUs.
pub(super) fn floor_threads(depth: u32, cpu_count: usize) -> usize {
    if depth == 1 {
        1
    } else {
        cpu_count.clamp(1, depth as usize)
    }
}

/// `threads` threads (allowed on `all_cpus`), each reading its share of
/// `needles` with `depth / threads` buffers in rotation.
pub(super) fn floor_slice(
    clock: &TickClock,
    schedule: &Schedule,
    needles: &[NeedleRef],
    depth: u32,
    threads: usize,
    all_cpus: &[usize],
    work: FloorWork,
) -> Result<SliceResult, BenchError> {
    let threads = threads.clamp(1, depth.max(1) as usize);
    let buffers_per_thread = (depth as usize).div_ceil(threads);
    let results: Vec<Result<SliceResult, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread_index| {
                scope.spawn(move || {
                    let _ = affinity::allow_cpus(all_cpus);
                    let mine: Vec<&NeedleRef> = needles.iter().skip(thread_index).step_by(threads).collect();
                    pread_loop(clock, schedule, &mine, buffers_per_thread, work)
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
