//! `rdma-bench reader`: the client library's high-level [`Reader`] beside the raw queue
//! pair it is built on, in one run against the same engine and needles: reads a second of
//! 4 KiB and 1 MiB needles at 1 and 32 at once. Raw: one queue pair kept `c` reads deep by
//! one thread (the floor: nothing but the ring). Reader: `c` threads calling
//! [`Reader::read_view`] (zero-copy; the pool of queue pairs, its lanes and the retry logic
//! are what is measured), and one thread calling [`Reader::read_many_views`] with `c` file
//! ids at a time. Cells alternate over rounds; figures are medians. The target
//! (issue 18, reported, never asserted): the Reader at ≥ 0.9× the raw queue pair.

use super::needles::{find_needles, NeedleRef};
use super::{median, BenchError};
use rdma_client::{AttachOptions, Client, Operation, Reader, ReaderOptions};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Data sizes measured.
const SIZES: [u64; 2] = [4096, 1 << 20];
/// Reads in flight (raw) and threads (Reader).
const CONCURRENCY: [u32; 2] = [1, 32];
/// Needles of each size read in turn.
const NEEDLES_PER_SIZE: usize = 32;
/// Longest wait for one completion.
const WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct ReaderCell {
    pub data_size_bytes: u64,
    pub concurrency: u32,
    pub raw_queue_pair_reads_per_s: f64,
    /// `concurrency` threads, each one read at a time.
    pub reader_reads_per_s: f64,
    /// Reader over raw.
    pub ratio: f64,
    /// One thread, `concurrency` reads at a time (`read_many_views`).
    pub reader_many_reads_per_s: f64,
    pub many_ratio: f64,
    /// `concurrency` threads of `read_file_id` (the data copied out, as the Go Reader's
    /// `ReadFileID`: the figure `client/go/bench.sh` sets the Go client beside).
    pub reader_copy_reads_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReaderReport {
    pub rounds: u32,
    pub seconds_per_cell: f64,
    pub cells: Vec<ReaderCell>,
}

/// One queue pair kept `depth` reads deep for `duration`; reads completed per second.
fn raw_rate(socket: &Path, needles: &[NeedleRef], depth: u32, duration: Duration) -> Result<f64, BenchError> {
    let record_bytes = needles.iter().map(|needle| needle.record_size_bytes).max().unwrap_or(4096);
    let buffer_bytes = u32::try_from(record_bytes.div_ceil(4096) * 4096).unwrap_or(u32::MAX);
    let options = AttachOptions {
        queue_pairs: 1,
        sq_entries: 64,
        buffer_size_bytes: u64::from(buffer_bytes) * u64::from(depth) * 2 + (1 << 20),
        client_name: "rdma-bench-raw".into(),
    };
    let client = Client::attach(socket, &options).map_err(BenchError::Attach)?;
    let mut queue_pair = client.take_queue_pair(0).map_err(BenchError::Attach)?;
    let mut buffers = Vec::new();
    for _ in 0..depth {
        buffers.push(client.allocate(buffer_bytes).map_err(BenchError::Attach)?);
    }
    let operation = |index: usize, buffer| {
        let needle = &needles[index % needles.len()];
        let id = needle.file_id;
        Operation::ReadNeedle { volume_id: id.volume_id, needle_id: id.needle_id, cookie: id.cookie, buffer }
    };
    let mut next = 0usize;
    for buffer in buffers {
        queue_pair.prepare(operation(next, buffer), next as u64).map_err(BenchError::Engine)?;
        next += 1;
    }
    queue_pair.submit().map_err(BenchError::Engine)?;
    let start = Instant::now();
    let mut done = 0u64;
    // Bounded by `duration` (each wait by WAIT_MAX).
    while start.elapsed() < duration {
        queue_pair.wait(1, WAIT_MAX).map_err(BenchError::Engine)?;
        while let Some(completion) = queue_pair.reap_one().map_err(BenchError::Engine)? {
            completion.result().map_err(|error| BenchError::Verify(format!("raw read: {error}")))?;
            done += 1;
            let buffer = completion.buffer.ok_or_else(|| BenchError::Verify("no buffer came back".into()))?;
            queue_pair.prepare(operation(next, buffer), next as u64).map_err(BenchError::Engine)?;
            next += 1;
        }
        queue_pair.submit().map_err(BenchError::Engine)?;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    // Let the last reads land before the region goes.
    while queue_pair.in_flight() > 0 {
        queue_pair.wait(1, WAIT_MAX).map_err(BenchError::Engine)?;
        while queue_pair.reap_one().map_err(BenchError::Engine)?.is_some() {}
    }
    Ok(rate)
}

/// `threads` threads reading through `reader` for `duration` (zero-copy views, or copies
/// with `copy`); reads per second.
fn reader_rate(
    reader: &Reader,
    fids: &[String],
    threads: u32,
    duration: Duration,
    copy: bool,
) -> Result<f64, BenchError> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads as usize {
            let (done, failed) = (done.clone(), failed.clone());
            scope.spawn(move || {
                let mut index = thread;
                while start.elapsed() < duration && !failed.load(Ordering::Relaxed) {
                    let fid = &fids[index % fids.len()];
                    let length = match copy {
                        true => reader.read_file_id(fid).map(|data| data.len()),
                        false => reader.read_view(fid).map(|view| view.len()),
                    };
                    match length {
                        Ok(length) => {
                            std::hint::black_box(length);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => failed.store(true, Ordering::Relaxed),
                    }
                    index += 1;
                }
            });
        }
    });
    if failed.load(Ordering::Relaxed) {
        return Err(BenchError::Verify("a read through the Reader failed".into()));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// One thread reading `batch` needles at a time with `read_many_views`; reads per second.
fn reader_many_rate(reader: &Reader, fids: &[String], batch: u32, duration: Duration) -> Result<f64, BenchError> {
    let start = Instant::now();
    let (mut done, mut index) = (0u64, 0usize);
    while start.elapsed() < duration {
        let batch: Vec<&str> = (0..batch as usize).map(|step| fids[(index + step) % fids.len()].as_str()).collect();
        index += batch.len();
        for view in reader.read_many_views(&batch) {
            let view =
                view.map_err(|error| BenchError::Verify(format!("a batched read through the Reader: {error}")))?;
            std::hint::black_box(view.len());
            done += 1;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

pub fn run(socket: &Path, volume_dir: &Path, rounds: u32, seconds_per_cell: f64) -> Result<ReaderReport, BenchError> {
    let needles = find_needles(volume_dir, &SIZES, NEEDLES_PER_SIZE).map_err(BenchError::Volumes)?;
    let options = ReaderOptions {
        attach: AttachOptions {
            buffer_size_bytes: 96 << 20,
            client_name: "rdma-bench-reader".into(),
            ..ReaderOptions::default().attach
        },
        ..ReaderOptions::default()
    };
    let reader = Reader::connect(socket, options).map_err(|error| BenchError::Verify(error.to_string()))?;
    let duration = Duration::from_secs_f64(seconds_per_cell);
    let mut cells = Vec::new();
    for size in SIZES {
        let list = needles.get(&size).filter(|list| !list.is_empty()).ok_or_else(|| {
            BenchError::Volumes(format!(
                "no needle of {size} bytes in {}; make some with: volgen --dir {} --volume-id 7 --count 96 --sizes 4096,1048576",
                volume_dir.display(),
                volume_dir.display()
            ))
        })?;
        let fids: Vec<String> = list.iter().map(|needle| needle.file_id.to_string()).collect();
        // The Reader's bytes are the file's (checked once, not timed).
        for needle in list.iter().take(2) {
            let view =
                reader.read_view(&needle.file_id.to_string()).map_err(|error| BenchError::Verify(error.to_string()))?;
            if *view != needle.expected_data().map_err(BenchError::Verify)?[..] {
                return Err(BenchError::Verify(format!("{}: the Reader's bytes differ from the file", needle.file_id)));
            }
        }
        for concurrency in CONCURRENCY {
            let (mut raw, mut high, mut many, mut copies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                raw.push(raw_rate(socket, list, concurrency, duration)?);
                high.push(reader_rate(&reader, &fids, concurrency, duration, false)?);
                many.push(reader_many_rate(&reader, &fids, concurrency, duration)?);
                copies.push(reader_rate(&reader, &fids, concurrency, duration, true)?);
            }
            let median = |values: &[f64]| median(values).unwrap_or(0.0);
            let (raw, high, many, copies) = (median(&raw), median(&high), median(&many), median(&copies));
            cells.push(ReaderCell {
                data_size_bytes: size,
                concurrency,
                raw_queue_pair_reads_per_s: raw,
                reader_reads_per_s: high,
                ratio: high / raw,
                reader_many_reads_per_s: many,
                many_ratio: many / raw,
                reader_copy_reads_per_s: copies,
            });
        }
    }
    Ok(ReaderReport { rounds, seconds_per_cell, cells })
}

pub fn render(report: &ReaderReport) -> String {
    let mut text = format!(
        "Reader vs raw queue pair ({} rounds × {:.1} s cells, medians)\n",
        report.rounds, report.seconds_per_cell
    );
    for cell in &report.cells {
        text.push_str(&format!(
            "  {:>8} B  c={:<2}  raw {:>9.0}/s  Reader: c threads {:>9.0}/s {:.2}×, read_many_views of c {:>9.0}/s {:.2}×, c threads of read_file_id {:>9.0}/s\n",
            cell.data_size_bytes,
            cell.concurrency,
            cell.raw_queue_pair_reads_per_s,
            cell.reader_reads_per_s,
            cell.ratio,
            cell.reader_many_reads_per_s,
            cell.many_ratio,
            cell.reader_copy_reads_per_s
        ));
    }
    text
}
