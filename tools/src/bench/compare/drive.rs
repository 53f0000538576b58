//! The load of one cell of `rdma-bench compare`: `concurrency` reads in flight for a fixed
//! time, over HTTP (one keep-alive connection per request in flight, as a Go client with a
//! connection pool does) or through an engine (one queue pair, `concurrency` reads in flight).
//! Every read's bytes are counted only when it succeeded; the first failure ends the cell.

use super::CompareError;
use crate::histogram::Histogram;
use rdma_client::{AttachOptions, Buffer, Client, Operation};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

/// Longest one read may take before the cell fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one cell measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub reads: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Latency of each read, in ns.
    pub latency_ns: Histogram,
}

impl Measured {
    pub fn reads_per_sec(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Measured) {
        self.reads += other.reads;
        self.bytes += other.bytes;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latency_ns.merge(&other.latency_ns);
    }
}

/// `GET http://{server}/{fid}` for `duration` with `concurrency` threads, each with its own
/// keep-alive connection; each body must be `expected_bytes` long.
pub fn http_reads(
    server: &str,
    fids: &[String],
    expected_bytes: usize,
    concurrency: usize,
    duration: Duration,
) -> Result<Measured, CompareError> {
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Arc<Vec<String>> = Arc::new(fids.iter().map(|fid| format!("http://{server}/{fid}")).collect());
    let threads: Vec<_> = (0..concurrency)
        .map(|thread_index| {
            let (stop, urls) = (stop.clone(), urls.clone());
            std::thread::spawn(move || http_thread(&urls, thread_index, expected_bytes, &stop))
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = Measured::default();
    for thread in threads {
        let measured = thread.join().map_err(|_| CompareError::Load("an HTTP load thread panicked".into()))??;
        total.merge(measured);
    }
    Ok(total)
}

fn http_thread(
    urls: &[String],
    first: usize,
    expected_bytes: usize,
    stop: &AtomicBool,
) -> Result<Measured, CompareError> {
    let agent = ureq::AgentBuilder::new().timeout(READ_TIMEOUT).max_idle_connections_per_host(1).build();
    let mut body = Vec::with_capacity(expected_bytes + 1);
    let mut measured = Measured::default();
    let started = Instant::now();
    let mut index = first;
    while !stop.load(Ordering::Relaxed) {
        let url = &urls[index % urls.len()];
        index += 1;
        let sent = Instant::now();
        let response = agent.get(url).call().map_err(|error| CompareError::Load(format!("GET {url}: {error}")))?;
        body.clear();
        response
            .into_reader()
            .take(expected_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|error| CompareError::Load(format!("GET {url}: {error}")))?;
        if body.len() != expected_bytes {
            return Err(CompareError::Load(format!("GET {url}: {} bytes, expected {expected_bytes}", body.len())));
        }
        measured.latency_ns.record(sent.elapsed().as_nanos() as u64);
        measured.reads += 1;
        measured.bytes += body.len() as u64;
    }
    measured.elapsed = started.elapsed();
    Ok(measured)
}

/// Whole-needle reads through the engine at `socket`, `concurrency` in flight on one queue
/// pair, for `duration`; each must give `expected_bytes` of data.
pub fn engine_reads(
    socket: &Path,
    fids: &[FileId],
    expected_bytes: usize,
    concurrency: usize,
    duration: Duration,
) -> Result<Measured, CompareError> {
    // The whole record (header, data, name, mime, timestamps, CRC, padding) lands in the buffer.
    let buffer_bytes = (expected_bytes as u32).div_ceil(4096) * 4096 + 4096;
    let options = AttachOptions {
        queue_pairs: 1,
        sq_entries: (concurrency as u32 * 2).next_power_of_two().max(64),
        buffer_size_bytes: buffer_bytes as u64 * concurrency as u64 + (1 << 20),
        client_name: "rdma-bench-compare".into(),
    };
    let engine_error = |error| CompareError::Load(format!("engine at {}: {error}", socket.display()));
    let client = Client::attach(socket, &options).map_err(engine_error)?;
    let mut queue_pair = client.take_queue_pair(0).map_err(engine_error)?;
    let mut sent_at = vec![Instant::now(); concurrency];
    let mut next = 0usize;
    let submit = |queue_pair: &mut rdma_client::QueuePair, buffer: Buffer, tag: usize, next: &mut usize| {
        let fid = fids[*next % fids.len()];
        *next += 1;
        let operation =
            Operation::ReadNeedle { volume_id: fid.volume_id, needle_id: fid.needle_id, cookie: fid.cookie, buffer };
        queue_pair.prepare(operation, tag as u64)
    };
    for (tag, sent) in sent_at.iter_mut().enumerate() {
        let buffer = client.allocate(buffer_bytes).map_err(engine_error)?;
        submit(&mut queue_pair, buffer, tag, &mut next).map_err(engine_error)?;
        *sent = Instant::now();
    }
    queue_pair.submit().map_err(engine_error)?;
    let mut measured = Measured::default();
    let started = Instant::now();
    let end = started + duration;
    // Bounded by `duration` plus one read timeout.
    while Instant::now() < end {
        queue_pair.wait(1, READ_TIMEOUT).map_err(engine_error)?;
        let mut reaped = 0;
        while let Some(completion) = queue_pair.reap_one().map_err(engine_error)? {
            reaped += 1;
            let tag = completion.tag as usize;
            let length =
                completion.result().map_err(|error| CompareError::Load(format!("engine read failed: {error}")))?;
            if length != expected_bytes as u64 {
                return Err(CompareError::Load(format!("engine read gave {length} bytes, expected {expected_bytes}")));
            }
            measured.latency_ns.record(sent_at[tag].elapsed().as_nanos() as u64);
            measured.reads += 1;
            measured.bytes += length;
            let buffer =
                completion.buffer.ok_or_else(|| CompareError::Load("a read came back without its buffer".into()))?;
            submit(&mut queue_pair, buffer, tag, &mut next).map_err(engine_error)?;
            sent_at[tag] = Instant::now();
        }
        if reaped == 0 {
            return Err(CompareError::Load(format!("no completion within {READ_TIMEOUT:?}")));
        }
        queue_pair.submit().map_err(engine_error)?;
    }
    measured.elapsed = started.elapsed();
    // Let the reads still in flight finish before the buffers go.
    let _ = queue_pair.wait(queue_pair.in_flight(), READ_TIMEOUT);
    Ok(measured)
}
