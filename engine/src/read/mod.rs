//! Needle reads: which transport serves a read, and turning a transport's result into a
//! completion.
//!
//! One routing decision for every read, in this order: a volume of this host is read locally
//! (`pread`, synchronously); a volume an exporter announced (static `--peer`, or found through
//! the master at the volume server's host and `--export-port`) is read over RDMA; everything
//! else, and a read whose faster path failed (exporter down, UCX error, a needle failing its
//! check after the retry), falls back to the volume server's HTTP. The reads that do not
//! complete at once live in one table ([`routes`]) with one deadline each, whatever stage they
//! are in: locating the volume, waiting for an exporter to connect, in the RDMA transport, in
//! the HTTP fallback. Every transport checks the needle before a read completes
//! ([`check`] for the bytes of a record; the HTTP fallback against the CRC the volume server
//! puts in its `ETag`).

pub mod check;
mod counters;
pub mod fetch;
pub mod http;
pub mod local;
pub mod locate;
pub mod remote;
pub mod routes;
mod routing;
mod setup;

use counters::falls_back;
pub use counters::{FallbackReason, ReadCounters};
use routing::Routed;
pub use setup::{ReadSetup, ReadSetupError};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::execute::{Executed, Outcome, Route};
use crate::metrics::METRICS;
use http::HttpReads;
use local::Started;
use locate::Locator;
use remote::Remote;
use routes::{PendingRead, RouteTable, Stage};
use shm_layout::entry::{cqe_flags, Cqe, ErrorCode, NeedleRead};
use shm_layout::region::RegionView;

/// How long a read whose entry has no deadline may take, in whatever stage.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(30);
/// How often reads in the RDMA transport are checked against their deadlines.
const DEADLINE_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// Most volumes counted by volume in the metrics.
pub(super) const VOLUMES_COUNTED_MAX: usize = 4096;
/// How often the read-path counters are logged (when they changed).
const COUNTERS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A checked read: where the data starts (relative to the buffer the SQE
/// named) and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadDone {
    pub data_offset_in_buffer: u64,
    pub data_length: u64,
    pub gzipped: bool,
}

/// A transport's answer: the read, or an error code and (for
/// `BUFFER_TOO_SMALL`) the size needed.
pub type ReadResult = Result<ReadDone, (ErrorCode, u64)>;

/// The completion for a finished read into the buffer at `buffer_offset`.
pub fn completion(user_data: u64, buffer_offset: u64, source: u32, result: ReadResult) -> (Cqe, Outcome) {
    match result {
        Ok(done) => {
            let gzip_flag = if done.gzipped { cqe_flags::NEEDLE_GZIPPED } else { 0 };
            let cqe = Cqe {
                user_data,
                result: done.data_length as i32,
                flags: source | gzip_flag,
                data_offset: buffer_offset + done.data_offset_in_buffer,
                aux: 0,
            };
            (cqe, Outcome { invalid: false, bytes_read: done.data_length })
        }
        Err((code, needed_bytes)) => {
            let cqe = Cqe { aux: needed_bytes, flags: source, ..Cqe::error(user_data, code) };
            (cqe, Outcome::default())
        }
    }
}

/// The read transports this engine was configured with.
#[derive(Debug)]
pub struct ReadService {
    pub(super) local: local::LocalVolumes,
    pub(super) remote: Option<Remote>,
    pub(super) http: Option<HttpReads>,
    pub(super) locator: Option<Locator>,
    pub(super) export_port: Option<u16>,
    pub(super) volume_server: Option<Arc<str>>,
    pub(super) routes: RouteTable,
    /// Scratch list of parked tokens (capacity: the table's).
    pub(super) parked: Vec<u64>,
    /// Parked reads waiting for an exporter to connect (the poller stays awake for them).
    pub(super) waiting_peers: usize,
    /// A queue pair's share of the table.
    pub(super) reads_per_queue_pair: usize,
    /// Reads and data bytes by volume, published to the metrics in housekeeping.
    pub(super) by_volume: HashMap<u32, (u64, u64)>,
    pub(super) logged_counters: ReadCounters,
    pub(super) last_counters_log: Instant,
    pub(super) last_deadline_scan: Instant,
}

impl ReadService {
    /// Whether another read can start now for a queue pair with `pending`
    /// reads in flight: the table has a free slot and the queue pair is
    /// within its share, so one busy queue pair cannot starve the others.
    /// When not, the poller leaves entries in the SQ until one completes.
    pub fn has_room(&self, pending: u32) -> bool {
        self.routes.has_room() && (pending as usize) < self.reads_per_queue_pair
    }

    /// Serves one validated read into `view`'s buffer area: locally and at once, or through
    /// the asynchronous transports with the completion to come. `deadline_ns` is the entry's
    /// (`CLOCK_MONOTONIC`, 0 for none; not passed: the caller checked).
    pub fn read(
        &mut self,
        user_data: u64,
        read: &NeedleRead,
        view: &RegionView,
        route: Route,
        deadline_ns: u64,
    ) -> Executed {
        // Sqe::validate proved the range is inside the buffer area.
        let Some(buffer) = view.buffer_range(read.buffer_offset, read.buffer_length as u64) else {
            let cqe = Cqe::error(user_data, ErrorCode::BAD_BUFFER);
            return Executed::Done(cqe, Outcome { invalid: true, bytes_read: 0 });
        };
        let now = Instant::now();
        let mut local = self.local.serves(read.volume_id);
        let mut failed_locally = None;
        if local {
            match self.local.try_inline(read, buffer, now) {
                Some(Err((code, _))) if falls_back(code) && self.can_fall_back() => {
                    (local, failed_locally) = (false, Some(code));
                }
                Some(result) => {
                    METRICS.record_latency(cqe_flags::SOURCE_LOCAL, now.elapsed().as_nanos() as u64);
                    if let Ok(done) = &result {
                        self.count_volume(read.volume_id, done.data_length);
                    }
                    let (cqe, outcome) = completion(user_data, read.buffer_offset, cqe_flags::SOURCE_LOCAL, result);
                    return Executed::Done(cqe, outcome);
                }
                None => {}
            }
        }
        let deadline = match deadline_ns {
            0 => now + DEFAULT_READ_DEADLINE,
            _ => now + Duration::from_nanos(deadline_ns.saturating_sub(rdma_ipc::clock::monotonic_ns())),
        };
        let pending = PendingRead {
            route,
            user_data,
            read: *read,
            buffer,
            started: now,
            deadline,
            stage: if local { Stage::Local } else { Stage::Locating },
            rdma_failure: failed_locally,
            canceled: false,
            expired: false,
        };
        let Some(token) = self.routes.insert(pending) else {
            let source = if local { cqe_flags::SOURCE_LOCAL } else { self.remote_source() };
            // Not reached: the poller checks has_room() before taking an entry.
            return Executed::Done(
                Cqe { flags: source, ..Cqe::error(user_data, ErrorCode::IO_ERROR) },
                Outcome::default(),
            );
        };
        let routed = if local {
            match self.local.start(token, route.region_id, read, buffer) {
                Started::InFlight => Routed::Going,
                Started::Done(result) => self.after_local(token, result, now),
            }
        } else {
            self.dispatch(token, now)
        };
        match routed {
            Routed::Going => {
                // A parked read is looked at again on every pass (its deadline, a lookup that
                // could not be queued yet), even when no answer comes to wake it.
                if self.routes.get(token).is_some_and(|pending| pending.stage.is_parked())
                    && self.parked.len() < self.parked.capacity()
                {
                    self.parked.push(token);
                }
                Executed::Pending
            }
            Routed::Finished(source, result) => {
                let mut done = None;
                self.finish_if_done(token, Routed::Finished(source, result), &mut |_, cqe, outcome| {
                    done = Some((cqe, outcome))
                });
                let (cqe, outcome) = done.unwrap_or((Cqe::error(user_data, ErrorCode::IO_ERROR), Outcome::default()));
                Executed::Done(cqe, outcome)
            }
        }
    }

    /// A poller pass begins (the local transport's inline byte budget starts again).
    pub fn begin_pass(&mut self) {
        self.local.begin_pass();
    }

    /// Reads in flight (in a transport or parked).
    pub fn pending(&self) -> usize {
        self.routes.in_use()
    }

    /// Whether the poller must keep polling: RDMA gets in flight or exporters connecting need
    /// UCX progress. (HTTP and lookup threads, and the stream transport's watch, ring the
    /// doorbell instead.)
    pub fn needs_polling(&self) -> bool {
        self.waiting_peers > 0 || self.remote.as_ref().is_some_and(Remote::needs_polling)
    }

    /// Whether another thread queued something the poller must pick up (checked after the
    /// poller read its doorbell and before it sleeps, so nothing queued is missed). Arms the
    /// stream transport's socket watch for the sleep that follows.
    pub fn has_ready(&mut self) -> bool {
        self.remote.as_ref().is_some_and(Remote::prepare_sleep)
            || self.local.has_completions()
            || self.http.as_ref().is_some_and(HttpReads::has_completions)
            || self.locator.as_ref().is_some_and(Locator::has_answers)
    }

    /// Drives the asynchronous transports and hands over each finished read's completion.
    pub fn progress(&mut self, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        let now = Instant::now();
        METRICS.set_reads_in_flight(self.routes.in_use());
        self.local.progress();
        // Bounded (this loop and the next two): each pass removes one completion from a queue
        // that holds at most the table's capacity.
        while let Some((token, result)) = self.local.poll_completion() {
            let routed = self.after_local(token, result, now);
            self.finish_if_done(token, routed, sink);
        }
        if let Some(remote) = self.remote.as_mut() {
            remote.progress();
        }
        let remote_source = self.remote_source();
        while let Some((token, result)) = self.remote.as_mut().and_then(Remote::poll_completion) {
            let routed = match result {
                Err(error) => self.after_rdma_failure(token, error, now),
                Ok(_) => Routed::Finished(remote_source, result),
            };
            self.finish_if_done(token, routed, sink);
        }
        while let Some((token, result)) = self.http.as_mut().and_then(HttpReads::poll_completion) {
            self.finish_if_done(token, Routed::Finished(cqe_flags::SOURCE_HTTP, result), sink);
        }
        if now.duration_since(self.last_deadline_scan) >= DEADLINE_SCAN_INTERVAL {
            self.last_deadline_scan = now;
            self.expire_transport_reads(now);
        }
        let answers = self.locator.as_mut().map_or(0, |locator| locator.poll(now));
        if answers > 0 || self.waiting_peers > 0 || !self.parked.is_empty() {
            self.advance_parked(now, sink);
        }
    }

    /// Cancels the local and RDMA reads whose deadline passed (whatever they wait for inside
    /// the transport: a disk, a catalogue, an index pull, their gets); each completes with
    /// `DEADLINE_EXCEEDED` once nothing can land in its buffer any more.
    fn expire_transport_reads(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.parked);
        self.routes.expire(Stage::Local, now, &mut expired);
        for &token in &expired {
            self.local.cancel(token);
        }
        if let Some(remote) = self.remote.as_mut() {
            self.routes.expire(Stage::Rdma, now, &mut expired);
            for &token in &expired {
                remote.cancel(token);
            }
        }
        expired.clear();
        self.parked = expired;
        self.routes.parked(&mut self.parked);
    }

    /// Routes parked reads again (a lookup answered, an exporter connected or failed, a
    /// deadline passed).
    fn advance_parked(&mut self, now: Instant, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        let mut parked = std::mem::take(&mut self.parked);
        self.routes.parked(&mut parked);
        for &token in &parked {
            let routed = self.dispatch(token, now);
            self.finish_if_done(token, routed, sink);
        }
        self.routes.parked(&mut parked);
        self.waiting_peers = parked
            .iter()
            .filter(|&&token| {
                self.routes.get(token).is_some_and(|pending| matches!(pending.stage, Stage::WaitingPeer(_)))
            })
            .count();
        self.parked = parked;
    }

    fn finish_if_done(&mut self, token: u64, routed: Routed, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        let Routed::Finished(source, result) = routed else { return };
        let Some(pending) = self.routes.remove(token) else { return };
        let result = match () {
            _ if pending.expired && result.is_err() => Err((ErrorCode::DEADLINE_EXCEEDED, 0)),
            _ if pending.canceled => Err((ErrorCode::CANCELED, 0)),
            _ => result,
        };
        if source != cqe_flags::SOURCE_NONE {
            METRICS.record_latency(source, pending.started.elapsed().as_nanos() as u64);
        }
        if let Ok(done) = &result {
            self.count_volume(pending.read.volume_id, done.data_length);
        }
        let (cqe, outcome) = completion(pending.user_data, pending.read.buffer_offset, source, result);
        sink(pending.route, cqe, outcome);
    }

    /// Cancels the read `target_user_data` of `route` if it is in flight; its
    /// completion (CANCELED) still comes through `progress`, after any GET
    /// already posted into the buffer has landed.
    pub fn cancel(&mut self, route: Route, target_user_data: u64) -> bool {
        let Some(token) = self.routes.find(route, target_user_data) else { return false };
        let Some(pending) = self.routes.get_mut(token) else { return false };
        pending.canceled = true;
        match pending.stage {
            Stage::Local => self.local.cancel(token),
            Stage::Rdma => {
                if let Some(remote) = self.remote.as_mut() {
                    remote.cancel(token);
                }
            }
            Stage::Http => {
                if let Some(http) = self.http.as_mut() {
                    http.cancel(token);
                }
            }
            // Parked: finished on the next pass.
            Stage::Locating | Stage::WaitingPeer(_) => {
                if self.parked.capacity() > self.parked.len() {
                    self.parked.push(token);
                }
            }
        }
        true
    }

    /// Registers a new region's buffer area with the RDMA transport.
    pub fn attach_region(&mut self, region_id: u64, view: &RegionView) {
        let Some(remote) = self.remote.as_mut() else { return };
        let size = view.geometry().buffer_size_bytes;
        let Some(base) = view.buffer_range(0, size) else { return };
        // SAFETY: the region stays mapped until the poller releases it, which
        // it does only after release_region() returned true.
        if let Err(error) = unsafe { remote.register_buffer_area(region_id, base, size) } {
            tracing::warn!(region_id, %error, "cannot register a region with the remote transport; its remote reads will fail");
        }
    }

    /// True once no transport can write into the region's buffers any more.
    pub fn release_region(&mut self, region_id: u64) -> bool {
        let http_done = self.local.release_region(region_id)
            && self.http.as_ref().is_none_or(|http| http.release_region(region_id));
        http_done && self.remote.as_mut().is_none_or(|remote| remote.release_buffer_area(region_id))
    }

    /// Periodic work off the read path: pick up appended index entries, let the RDMA transport
    /// reconnect to peers while no read drives it, and log the path counters now and then.
    pub fn housekeeping(&mut self) {
        self.local.refresh_all();
        if let Some(remote) = self.remote.as_mut() {
            remote.refresh_catalogues();
            remote.progress();
        }
        if let Some(locator) = self.locator.as_ref() {
            METRICS.set_lookups(locator.lookups_done());
        }
        METRICS
            .set_index_bytes(self.local.index_bytes(), self.remote.as_ref().map_or(0, |remote| remote.index_bytes()));
        if let Some(remote) = self.remote.as_ref() {
            let (up, down) = remote.peer_counts();
            METRICS.set_peers(up, down);
            METRICS.publish_peer_generations(
                remote.peer_generations().into_iter().map(|(address, generation)| (address.to_string(), generation)),
            );
        }
        METRICS.publish_by_volume(self.by_volume.iter().map(|(&volume_id, &(reads, bytes))| (volume_id, reads, bytes)));
        if self.last_counters_log.elapsed() >= COUNTERS_LOG_INTERVAL && ReadCounters::now() != self.logged_counters {
            self.log_counters();
        }
    }

    /// The completion source of the remote transport's reads.
    fn remote_source(&self) -> u32 {
        self.remote.as_ref().map_or(cqe_flags::SOURCE_RDMA, Remote::source)
    }

    /// Counts a completed read of `volume_id` (poller-local; published in housekeeping). At
    /// most [`VOLUMES_COUNTED_MAX`] volumes are counted: clients name volume ids.
    fn count_volume(&mut self, volume_id: u32, bytes: u64) {
        if self.by_volume.len() >= VOLUMES_COUNTED_MAX && !self.by_volume.contains_key(&volume_id) {
            return;
        }
        let entry = self.by_volume.entry(volume_id).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += bytes;
    }

    /// One log line with the path counters.
    pub fn log_counters(&mut self) {
        let counters = ReadCounters::now();
        tracing::info!(
            local = counters.local,
            rdma = counters.rdma,
            stream = counters.stream,
            http = counters.http,
            fallback_no_exporter = counters.fallback_no_exporter,
            fallback_peer_unavailable = counters.fallback_peer_unavailable,
            fallback_check_failed = counters.fallback_check_failed,
            fallback_other = counters.fallback_other,
            lookups = self.locator.as_ref().map_or(0, Locator::lookups_done),
            "reads by path"
        );
        self.logged_counters = counters;
        self.last_counters_log = Instant::now();
    }
}
