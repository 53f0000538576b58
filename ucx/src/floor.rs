//! The bare `ucp_get_nbx` floor: a get loop with nothing around it, so a benchmark can print
//! what UCX alone costs beside the engine's figures.
//!
//! The exporting side registers a buffer, sends its address and rkey, and keeps its worker
//! progressing (event-driven: `Worker::wait`), because UCX 1.13 emulates these gets in
//! software on the target. The reading side calls [`bare_get_loop`].

use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, GetStarted};
use crate::error::{Error, Result};
use crate::memory::{MemoryRegion, RemoteKey};
use crate::worker::Worker;

/// Most latency samples kept; later gets are still counted in `gets` and `bytes`.
pub const SAMPLES_MAX: usize = 1 << 20;
/// How long the loop waits for its last gets after `duration` has passed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct FloorConfig {
    /// Bytes per get.
    pub size_bytes: usize,
    /// Gets kept in flight (at most the worker's `max_in_flight`).
    pub depth: usize,
    /// How long to keep posting.
    pub duration: Duration,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct FloorReport {
    pub size_bytes: usize,
    pub depth: usize,
    pub gets: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Per-get latency (post to completion) in nanoseconds, sorted ascending.
    pub latencies_ns: Vec<u64>,
}

impl FloorReport {
    /// The latency at quantile `q` (0.0..=1.0), in nanoseconds; 0 with no samples.
    pub fn percentile_ns(&self, q: f64) -> u64 {
        if self.latencies_ns.is_empty() {
            return 0;
        }
        let last = self.latencies_ns.len() - 1;
        let index = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        self.latencies_ns[index]
    }

    pub fn bytes_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds == 0.0 {
            return 0.0;
        }
        (self.gets * self.size_bytes as u64) as f64 / seconds
    }
}

/// Runs gets of `size_bytes` from the remote region `[remote_address, + remote_length)`,
/// walking it in steps (so reads are cache-cold on the target), `depth` at a time, for
/// `duration`, on a worker with no other gets in flight. Slot `i` of the local region (`i * size_bytes`) is the destination of the
/// get in flight with token `i`.
///
/// # Safety
/// `local` must not be read or written by anything else during the call. On `Ok` every get
/// has completed; on `Err` some may still land in `local` until `endpoint` is closed.
pub unsafe fn bare_get_loop(
    worker: &Worker,
    endpoint: &Endpoint,
    remote_address: u64,
    remote_length: u64,
    rkey: &RemoteKey,
    local: &MemoryRegion,
    config: FloorConfig,
) -> Result<FloorReport> {
    let FloorConfig { size_bytes, depth, duration } = config;
    assert!(size_bytes > 0 && depth > 0, "size and depth must be positive");
    assert!(depth <= worker.max_in_flight(), "depth above the worker's in-flight bound");
    assert!(depth * size_bytes <= local.len(), "local region smaller than depth * size");
    // Completions are matched to slots by token: no other gets may share the worker's queue.
    assert_eq!(worker.in_flight(), 0, "other gets in flight on this worker");
    let remote_slots = (remote_length / size_bytes as u64).max(1);
    assert!(remote_length >= size_bytes as u64, "remote region smaller than one get");

    let local_base = local.address() as *mut u8;
    let mut started = vec![Instant::now(); depth];
    let mut latencies_ns = Vec::with_capacity(SAMPLES_MAX.min(1 << 16));
    let (mut gets, mut errors, mut posted) = (0u64, 0u64, 0u64);
    let begin = Instant::now();
    let mut in_flight = 0usize;
    let mut free_slots: Vec<usize> = (0..depth).rev().collect();
    let mut samples = Samples { latencies_ns: &mut latencies_ns, gets: &mut gets, errors: &mut errors };
    while begin.elapsed() < duration {
        while let Some(slot) = free_slots.pop() {
            let offset = (posted % remote_slots) * size_bytes as u64;
            posted += 1;
            started[slot] = Instant::now();
            // SAFETY: the slot lies inside `local` (asserted above) and is used by this one
            // get until its completion is popped; the caller keeps `local` to us.
            let destination = unsafe { local_base.add(slot * size_bytes) };
            // SAFETY: as above; the destination stays valid until completion (drained below).
            let started_get = unsafe {
                endpoint.get_nbx(destination, size_bytes, remote_address + offset, rkey, Some(local), slot as u64)
            }?;
            match started_get {
                GetStarted::Completed => {
                    samples.record(started[slot], true);
                    free_slots.push(slot);
                    break; // give progress a turn before posting into the same slot again
                }
                GetStarted::InFlight => in_flight += 1,
            }
        }
        worker.progress();
        in_flight -= reap(worker, &started, &mut free_slots, &mut samples);
    }
    let drain_start = Instant::now();
    while in_flight > 0 {
        if drain_start.elapsed() > DRAIN_TIMEOUT {
            return Err(Error::Timeout { what: "draining floor gets", timeout_ms: DRAIN_TIMEOUT.as_millis() as u64 });
        }
        worker.progress();
        in_flight -= reap(worker, &started, &mut free_slots, &mut samples);
    }
    let elapsed = begin.elapsed();
    latencies_ns.sort_unstable();
    Ok(FloorReport { size_bytes, depth, gets, errors, elapsed, latencies_ns })
}

struct Samples<'a> {
    latencies_ns: &'a mut Vec<u64>,
    gets: &'a mut u64,
    errors: &'a mut u64,
}

impl Samples<'_> {
    fn record(&mut self, start: Instant, ok: bool) {
        *self.gets += 1;
        *self.errors += u64::from(!ok);
        if self.latencies_ns.len() < SAMPLES_MAX {
            self.latencies_ns.push(start.elapsed().as_nanos() as u64);
        }
    }
}

/// Pops every ready completion, records it and frees its slot; returns how many.
fn reap(worker: &Worker, started: &[Instant], free_slots: &mut Vec<usize>, samples: &mut Samples<'_>) -> usize {
    let mut reaped = 0;
    while let Some(completion) = worker.pop_completion() {
        let slot = completion.token as usize;
        samples.record(started[slot], completion.status.is_ok());
        free_slots.push(slot);
        reaped += 1;
    }
    reaped
}
