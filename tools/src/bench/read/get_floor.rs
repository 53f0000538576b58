//! The floor of `rdma-bench read --transport ucx`: a bare `ucp_get_nbx` loop
//! (`ucx::floor::bare_get_loop`) in this process, from the same exporter,
//! over the same transport, out of the same exported `.dat` memory the
//! engine reads needles from.
//!
//! The connection is the read role's own ([`RemoteReads`], created here
//! with the bench's `UCX_*` environment): it connects to the exporter and
//! fetches its catalogue exactly as the reading engine does, and
//! [`RemoteReads::floor_target`] hands out the worker, endpoint, address and
//! rkey of a volume's `.dat`. Nothing here is `Send`: the floor lives and is
//! used on the bench's main thread.

use super::{BenchError, Schedule, SliceResult};
use crate::timing::TickClock;
use rdma_engine::rdma::remote::{RemoteConfig, RemoteReads};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use ucx::floor::{bare_get_loop, FloorConfig, FloorReport};
use ucx::MemoryRegion;

/// How long the floor waits for its connection to the exporter to be up
/// (catalogue received) with no gets in flight, before each slice.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the exporter and a registered local buffer of
/// `size_max_bytes × depth_max` bytes for the gets to land in.
pub(super) struct GetFloor {
    // Field order is drop order: the connection goes first (its endpoint is
    // closed with force and its gets drained), then the registration, then
    // the memory it covers. A failed `bare_get_loop` may leave gets landing
    // in the buffer until the endpoint is closed.
    remote: RemoteReads,
    region: MemoryRegion,
    _buffer: Box<[u8]>,
    peer: SocketAddr,
}

impl std::fmt::Debug for GetFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetFloor").field("peer", &self.peer).field("buffer_bytes", &self.region.len()).finish()
    }
}

impl GetFloor {
    /// Connects to `peer` (bounded by the read role's connect timeout) and
    /// registers the landing buffer.
    pub(super) fn connect(peer: SocketAddr, size_max_bytes: usize, depth_max: usize) -> Result<GetFloor, BenchError> {
        let remote = RemoteReads::new(RemoteConfig::new(vec![peer]))
            .map_err(|error| BenchError::Exporter(format!("cannot set up UCX for the floor: {error}")))?;
        let mut buffer = vec![0u8; size_max_bytes * depth_max].into_boxed_slice();
        // SAFETY: the buffer is heap memory owned by the returned GetFloor,
        // which drops it after the registration (field order above); only
        // bare_get_loop writes into it and nothing reads it.
        let region = unsafe { MemoryRegion::register(remote.context(), buffer.as_mut_ptr(), buffer.len()) }
            .map_err(|error| BenchError::Exporter(format!("cannot register the floor's buffer: {error}")))?;
        Ok(GetFloor { remote, region, _buffer: buffer, peer })
    }

    /// One slice: an unmeasured warm-up run, then a measured run of the
    /// bare loop at `size_bytes` and `depth`, from volume `volume_id`'s `.dat`.
    pub(super) fn slice(
        &mut self,
        clock: &TickClock,
        schedule: &Schedule,
        volume_id: u32,
        size_bytes: u64,
        depth: u32,
    ) -> Result<SliceResult, BenchError> {
        self.settle(volume_id)?;
        let target = self.remote.floor_target(volume_id).ok_or_else(|| self.unreachable(volume_id))?;
        if target.remote_length < size_bytes {
            return Err(BenchError::Exporter(format!(
                "volume {volume_id}'s exported .dat holds {} bytes, less than one {size_bytes}-byte get",
                target.remote_length
            )));
        }
        let config = |duration_ms| FloorConfig {
            size_bytes: size_bytes as usize,
            depth: depth as usize,
            duration: Duration::from_millis(duration_ms),
        };
        let run = |duration_ms: u64| -> Result<FloorReport, BenchError> {
            // SAFETY: the region is this floor's own buffer, used by nothing
            // else during the call; settle() saw no other gets in flight on
            // the worker; on Err the buffer outlives the endpoint (field
            // order of GetFloor). Size × depth fits the buffer (`connect`).
            let report = unsafe {
                bare_get_loop(
                    target.worker,
                    target.endpoint,
                    target.remote_address,
                    target.remote_length,
                    target.rkey,
                    &self.region,
                    config(duration_ms),
                )
            }
            .map_err(|error| BenchError::Exporter(format!("bare gets from {} failed: {error}", self.peer)))?;
            if report.errors > 0 {
                return Err(BenchError::Exporter(format!(
                    "{} of {} bare gets from {} completed with errors",
                    report.errors, report.gets, self.peer
                )));
            }
            Ok(report)
        };
        run(schedule.warmup_ms)?;
        Ok(slice_result(clock, &run(schedule.slice_ms)?))
    }

    /// Progresses the connection until the exporter is up with volume
    /// `volume_id` and no gets are in flight (bounded by [`SETTLE_TIMEOUT`]).
    fn settle(&mut self, volume_id: u32) -> Result<(), BenchError> {
        let start = Instant::now();
        loop {
            self.remote.progress();
            let ready = self.remote.floor_target(volume_id).is_some_and(|target| target.worker.in_flight() == 0);
            if ready {
                return Ok(());
            }
            if start.elapsed() > SETTLE_TIMEOUT {
                return Err(self.unreachable(volume_id));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn unreachable(&self, volume_id: u32) -> BenchError {
        BenchError::Exporter(format!(
            "the bench's own UCX connection to the exporter at {} is not up with volume {volume_id} \
             (is the exporter running, and do the bench and the reader run with the same UCX_TLS?)",
            self.peer
        ))
    }
}

/// The bare loop's report in the bench's units: ticks, and data bytes.
fn slice_result(clock: &TickClock, report: &FloorReport) -> SliceResult {
    let mut slice = SliceResult {
        operations: report.gets,
        bytes: report.gets * report.size_bytes as u64,
        elapsed_ticks: clock.ns_to_ticks(report.elapsed.as_nanos() as u64),
        ..SliceResult::default()
    };
    for &latency_ns in &report.latencies_ns {
        slice.latency_ticks.record(clock.ns_to_ticks(latency_ns));
    }
    slice
}
