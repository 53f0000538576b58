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
pub mod http;
pub mod local;
pub mod locate;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::execute::{Executed, Outcome, Route};
use crate::rdma::remote::{PeerStatus, RemoteConfig, RemoteReads, PEERS_MAX};
use http::{HttpConfig, HttpReads, Waker};
use locate::{Known, Locator};
use routes::{PendingRead, RouteTable, Stage};
use shm_layout::entry::{cqe_flags, Cqe, ErrorCode, NeedleRead};
use shm_layout::region::RegionView;
use volume_format::index::OffsetWidth;

/// How long a read whose entry has no deadline may take, in whatever stage.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(30);
/// Exporters found through the master that one engine connects to at most.
const MASTER_PEERS_MAX: usize = 64;
/// How often reads in the RDMA transport are checked against their deadlines.
const DEADLINE_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// How often the read-path counters are logged (when they changed).
const COUNTERS_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReadSetupError {
    #[error("cannot read volume directory {dir}: {source}")]
    VolumeDir { dir: String, source: std::io::Error },
    #[error("cannot start the RDMA read role: {0}")]
    Remote(#[from] crate::rdma::remote::RemoteError),
    #[error("cannot start the {what} threads: {source}")]
    Threads { what: &'static str, source: std::io::Error },
}

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

/// Errors of a faster path after which the HTTP fallback is tried: the exporter or the file
/// could not be read, or the bytes failed their check after the retry. Answers about the
/// needle itself (missing, deleted, wrong cookie, range) are final.
fn falls_back(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::PEER_UNAVAILABLE
            | ErrorCode::IO_ERROR
            | ErrorCode::CRC_MISMATCH
            | ErrorCode::CORRUPT_NEEDLE
            | ErrorCode::NO_SUCH_VOLUME
    )
}

/// Why a read went to the HTTP fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// No exporter serves the volume (none configured, none at its host, or it is down).
    NoExporter,
    /// The RDMA or local read failed with this code.
    Failed(ErrorCode),
}

/// How many reads each path completed and why reads fell back. Written by the poller only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadCounters {
    pub local: u64,
    pub rdma: u64,
    pub http: u64,
    pub fallback_no_exporter: u64,
    pub fallback_peer_unavailable: u64,
    pub fallback_check_failed: u64,
    pub fallback_other: u64,
}

impl ReadCounters {
    fn count_fallback(&mut self, reason: FallbackReason) {
        match reason {
            FallbackReason::NoExporter => self.fallback_no_exporter += 1,
            FallbackReason::Failed(ErrorCode::PEER_UNAVAILABLE) => self.fallback_peer_unavailable += 1,
            FallbackReason::Failed(ErrorCode::CRC_MISMATCH | ErrorCode::CORRUPT_NEEDLE) => {
                self.fallback_check_failed += 1
            }
            FallbackReason::Failed(_) => self.fallback_other += 1,
        }
    }

    fn count_completion(&mut self, source: u32) {
        match source {
            cqe_flags::SOURCE_LOCAL => self.local += 1,
            cqe_flags::SOURCE_RDMA => self.rdma += 1,
            cqe_flags::SOURCE_HTTP => self.http += 1,
            _ => {}
        }
    }
}

/// What the read transports need to start: built on the control thread,
/// turned into a [`ReadService`] on the poller thread (UCX objects stay on
/// the thread that made them).
#[derive(Debug)]
pub struct ReadSetup {
    local: local::LocalVolumes,
    remote: Option<RemoteConfig>,
    master: Option<String>,
    export_port: Option<u16>,
    volume_server: Option<Arc<str>>,
    http_threads: Option<usize>,
    table_capacity: usize,
    reads_per_queue_pair: usize,
}

impl ReadSetup {
    /// Loads `--volume-dir` volumes and prepares the other transports' settings; `None` when
    /// no read transport is configured.
    pub fn from_config(config: &Config) -> Result<Option<ReadSetup>, ReadSetupError> {
        if config.volume_dir.is_empty()
            && config.peer.is_empty()
            && config.master.is_none()
            && config.volume_server.is_none()
        {
            return Ok(None);
        }
        let width = if config.offset_bytes == 5 { OffsetWidth::Five } else { OffsetWidth::Four };
        let local = local::LocalVolumes::load(&config.volume_dir, width)
            .map_err(|source| ReadSetupError::VolumeDir { dir: join_paths(&config.volume_dir), source })?;
        if !config.volume_dir.is_empty() {
            tracing::info!(volumes = local.len(), "local volumes loaded");
        }
        let table_capacity = config.max_rdma_in_flight().max(crate::rdma::remote::MAX_IN_FLIGHT_MIN);
        let master_peers = if config.master.is_some() && config.export_port.is_some() { MASTER_PEERS_MAX } else { 0 };
        let remote = (!config.peer.is_empty() || master_peers > 0).then(|| RemoteConfig {
            max_in_flight: table_capacity,
            max_peers: (config.peer.len() + master_peers).min(PEERS_MAX),
            ..RemoteConfig::new(config.peer.clone())
        });
        let http_wanted = !config.no_http_fallback && (config.master.is_some() || config.volume_server.is_some());
        Ok(Some(ReadSetup {
            local,
            remote,
            master: config.master.clone(),
            export_port: config.export_port,
            volume_server: config.volume_server.as_deref().map(Arc::from),
            http_threads: http_wanted.then_some(config.http_fallback_threads),
            table_capacity,
            reads_per_queue_pair: config.rdma_reads_per_queue_pair,
        }))
    }

    /// Starts the transports. Call on the thread that will use them; `wake` rings its
    /// doorbell (other threads call it when they queued a completion for it).
    pub fn start(self, wake: Waker) -> Result<ReadService, ReadSetupError> {
        let remote = match self.remote {
            Some(config) => {
                let peers = config.peers.len();
                let remote = RemoteReads::new(config)?;
                tracing::info!(peers, "RDMA read role started");
                Some(remote)
            }
            None => None,
        };
        let threads = |what| move |source| ReadSetupError::Threads { what, source };
        let locator = match self.master {
            Some(master) => {
                tracing::info!(%master, export_port = self.export_port, "volumes are located through the master");
                Some(Locator::start(master, wake.clone()).map_err(threads("master lookup"))?)
            }
            None => None,
        };
        let http = match self.http_threads {
            Some(threads_count) => {
                let config = HttpConfig { threads: threads_count, capacity: self.table_capacity };
                tracing::info!(threads = threads_count, "HTTP fallback ready");
                Some(HttpReads::spawn(config, wake).map_err(threads("HTTP fallback"))?)
            }
            None => None,
        };
        let asynchronous = remote.is_some() || http.is_some() || locator.is_some();
        let capacity = if asynchronous { self.table_capacity } else { 0 };
        Ok(ReadService {
            local: self.local,
            remote,
            http,
            locator,
            export_port: self.export_port,
            volume_server: self.volume_server,
            routes: RouteTable::new(capacity),
            parked: Vec::with_capacity(capacity),
            waiting_peers: 0,
            reads_per_queue_pair: self.reads_per_queue_pair,
            counters: ReadCounters::default(),
            logged_counters: ReadCounters::default(),
            last_counters_log: Instant::now(),
            last_deadline_scan: Instant::now(),
        })
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Where a read goes next.
#[derive(Debug)]
enum Decision {
    /// Over RDMA, from this exporter (`None`: whichever announced the volume).
    Rdma(Option<SocketAddr>),
    Wait(Stage),
    Http(Arc<str>, FallbackReason),
    Fail(ErrorCode),
}

/// What routing a read did.
enum Routed {
    /// It is in a transport or parked.
    Going,
    /// It is finished: remove it and complete it with this source and result.
    Finished(u32, ReadResult),
}

/// The read transports this engine was configured with.
#[derive(Debug)]
pub struct ReadService {
    local: local::LocalVolumes,
    remote: Option<RemoteReads>,
    http: Option<HttpReads>,
    locator: Option<Locator>,
    export_port: Option<u16>,
    volume_server: Option<Arc<str>>,
    routes: RouteTable,
    /// Scratch list of parked tokens (capacity: the table's).
    parked: Vec<u64>,
    /// Parked reads waiting for an exporter to connect (the poller stays awake for them).
    waiting_peers: usize,
    /// A queue pair's share of the table.
    reads_per_queue_pair: usize,
    counters: ReadCounters,
    logged_counters: ReadCounters,
    last_counters_log: Instant,
    last_deadline_scan: Instant,
}

impl ReadService {
    /// Whether another read can start now for a queue pair with `pending`
    /// reads in flight: the table has a free slot and the queue pair is
    /// within its share, so one busy queue pair cannot starve the others.
    /// When not, the poller leaves entries in the SQ until one completes.
    pub fn has_room(&self, pending: u32) -> bool {
        self.routes.capacity() == 0 || (self.routes.has_room() && (pending as usize) < self.reads_per_queue_pair)
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
        let mut failed_locally = None;
        if self.local.serves(read.volume_id) {
            let result = self.local.read(read, buffer);
            match result {
                Err((code, _)) if falls_back(code) && self.can_fall_back() => failed_locally = Some(code),
                _ => {
                    self.counters.count_completion(cqe_flags::SOURCE_LOCAL);
                    let (cqe, outcome) = completion(user_data, read.buffer_offset, cqe_flags::SOURCE_LOCAL, result);
                    return Executed::Done(cqe, outcome);
                }
            }
        }
        let now = Instant::now();
        let deadline = match deadline_ns {
            0 => now + DEFAULT_READ_DEADLINE,
            _ => now + Duration::from_nanos(deadline_ns.saturating_sub(rdma_ipc::clock::monotonic_ns())),
        };
        let pending = PendingRead {
            route,
            user_data,
            read: *read,
            buffer,
            deadline,
            stage: Stage::Locating,
            rdma_failure: failed_locally,
            canceled: false,
            expired: false,
        };
        let Some(token) = self.routes.insert(pending) else {
            let source = if self.routes.capacity() == 0 { 0 } else { cqe_flags::SOURCE_RDMA };
            let code = if source == 0 { ErrorCode::NO_SUCH_VOLUME } else { ErrorCode::IO_ERROR };
            // Not reached with a table: the poller checks has_room() before taking an entry.
            return Executed::Done(Cqe { flags: source, ..Cqe::error(user_data, code) }, Outcome::default());
        };
        match self.dispatch(token, now) {
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

    fn can_fall_back(&self) -> bool {
        self.http.is_some() && (self.locator.is_some() || self.volume_server.is_some())
    }

    /// Decides where read `token` goes and starts it there.
    fn dispatch(&mut self, token: u64, now: Instant) -> Routed {
        let Some(pending) = self.routes.get_mut(token).map(|pending| *pending) else { return Routed::Going };
        if pending.canceled {
            return Routed::Finished(0, Err((ErrorCode::CANCELED, 0)));
        }
        if now >= pending.deadline {
            return Routed::Finished(0, Err((ErrorCode::DEADLINE_EXCEEDED, 0)));
        }
        let decision = self.decide(&pending, now);
        let stage = match decision {
            Decision::Fail(code) => return Routed::Finished(0, Err((code, 0))),
            Decision::Wait(stage) => stage,
            Decision::Rdma(at) => {
                let Some(remote) = self.remote.as_mut() else {
                    return Routed::Finished(0, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
                };
                if let Err(error) = remote.start_read(token, pending.route.region_id, &pending.read, pending.buffer, at)
                {
                    return self.after_rdma_failure(token, error, now);
                }
                Stage::Rdma
            }
            Decision::Http(server, reason) => {
                let Some(http) = self.http.as_mut() else {
                    return Routed::Finished(0, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
                };
                let started =
                    http.start(token, pending.route.region_id, server, &pending.read, pending.buffer, pending.deadline);
                if let Err(error) = started {
                    return Routed::Finished(cqe_flags::SOURCE_HTTP, Err(error));
                }
                self.counters.count_fallback(reason);
                Stage::Http
            }
        };
        if let Some(pending) = self.routes.get_mut(token) {
            pending.stage = stage;
        }
        Routed::Going
    }

    /// The routing decision (see the module docs).
    fn decide(&mut self, pending: &PendingRead, now: Instant) -> Decision {
        let volume_id = pending.read.volume_id;
        let rdma_allowed = pending.rdma_failure.is_none();
        let reason = pending.rdma_failure.map_or(FallbackReason::NoExporter, FallbackReason::Failed);
        // An exporter that is up and announced the volume: no lookup needed. (A volume that
        // moved is found again when a read of it fails: the location is refreshed then.)
        if let (true, Some(remote)) = (rdma_allowed, self.remote.as_ref()) {
            if remote.serves_up(volume_id) {
                return Decision::Rdma(None);
            }
        }
        if let Some(locator) = self.locator.as_mut() {
            let locations = match locator.locate(volume_id, now) {
                Known::Pending => return Decision::Wait(Stage::Locating),
                Known::Failed(code) => {
                    return match (&self.volume_server, self.http.is_some()) {
                        (Some(server), true) => Decision::Http(server.clone(), reason),
                        _ => Decision::Fail(pending.rdma_failure.unwrap_or(code)),
                    }
                }
                Known::Found(locations) => locations,
            };
            if let (true, Some(remote), Some(port)) = (rdma_allowed, self.remote.as_mut(), self.export_port) {
                for ip in locations.iter().filter_map(|location| location.ip) {
                    let exporter = SocketAddr::new(ip, port);
                    match remote.peer_status(exporter) {
                        Some(PeerStatus::Up) if remote.serves_at(volume_id, exporter) => {
                            return Decision::Rdma(Some(exporter))
                        }
                        Some(PeerStatus::Connecting) => return Decision::Wait(Stage::WaitingPeer(exporter)),
                        None => match remote.add_peer(exporter) {
                            Ok(()) => return Decision::Wait(Stage::WaitingPeer(exporter)),
                            Err(error) => tracing::warn!(%error, "volume served over HTTP instead"),
                        },
                        Some(_) => {}
                    }
                }
            }
            if self.http.is_some() {
                return Decision::Http(locations[0].url.clone(), reason);
            }
            return Decision::Fail(pending.rdma_failure.unwrap_or(ErrorCode::PEER_UNAVAILABLE));
        }
        if let (true, Some(remote)) = (rdma_allowed, self.remote.as_ref()) {
            if remote.serves(volume_id) {
                return Decision::Rdma(None);
            }
        }
        match (&self.volume_server, self.http.is_some()) {
            (Some(server), true) => Decision::Http(server.clone(), reason),
            _ => Decision::Fail(pending.rdma_failure.unwrap_or(ErrorCode::NO_SUCH_VOLUME)),
        }
    }

    /// An RDMA read of `token` failed with `error`: fall back to HTTP when that may help.
    fn after_rdma_failure(&mut self, token: u64, error: (ErrorCode, u64), now: Instant) -> Routed {
        let can_fall_back = self.can_fall_back();
        let Some(pending) = self.routes.get_mut(token) else { return Routed::Going };
        if pending.canceled || pending.expired || !falls_back(error.0) || !can_fall_back {
            return Routed::Finished(cqe_flags::SOURCE_RDMA, Err(error));
        }
        pending.rdma_failure = Some(error.0);
        pending.stage = Stage::Locating;
        let volume_id = pending.read.volume_id;
        if let Some(locator) = self.locator.as_mut() {
            locator.invalidate(volume_id);
        }
        self.dispatch(token, now)
    }

    /// Reads in flight (in a transport or parked).
    pub fn pending(&self) -> usize {
        self.routes.in_use()
    }

    /// Whether the poller must keep polling: RDMA gets in flight or exporters connecting need
    /// UCX progress. (HTTP and lookup threads ring the doorbell instead.)
    pub fn needs_polling(&self) -> bool {
        self.waiting_peers > 0 || self.remote.as_ref().is_some_and(|remote| remote.in_flight() > 0)
    }

    /// Whether another thread queued something the poller must pick up (checked after the
    /// poller read its doorbell and before it sleeps, so nothing queued is missed).
    pub fn has_ready(&self) -> bool {
        self.http.as_ref().is_some_and(HttpReads::has_completions)
            || self.locator.as_ref().is_some_and(Locator::has_answers)
    }

    /// Drives the asynchronous transports and hands over each finished read's completion.
    pub fn progress(&mut self, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        let now = Instant::now();
        if let Some(remote) = self.remote.as_mut() {
            remote.progress();
        }
        // Bounded: each pass removes one completion from a queue that holds at most the
        // table's capacity.
        while let Some((token, result)) = self.remote.as_mut().and_then(RemoteReads::poll_completion) {
            let routed = match result {
                Err(error) => self.after_rdma_failure(token, error, now),
                Ok(_) => Routed::Finished(cqe_flags::SOURCE_RDMA, result),
            };
            self.finish_if_done(token, routed, sink);
        }
        while let Some((token, result)) = self.http.as_mut().and_then(HttpReads::poll_completion) {
            self.finish_if_done(token, Routed::Finished(cqe_flags::SOURCE_HTTP, result), sink);
        }
        if now.duration_since(self.last_deadline_scan) >= DEADLINE_SCAN_INTERVAL {
            self.last_deadline_scan = now;
            self.expire_rdma_reads(now);
        }
        let answers = self.locator.as_mut().map_or(0, |locator| locator.poll(now));
        if answers > 0 || self.waiting_peers > 0 || !self.parked.is_empty() {
            self.advance_parked(now, sink);
        }
    }

    /// Cancels the RDMA reads whose deadline passed (whatever they wait for inside the
    /// transport: a catalogue, an index pull, their gets); each completes with
    /// `DEADLINE_EXCEEDED` once no get can land in its buffer any more.
    fn expire_rdma_reads(&mut self, now: Instant) {
        let Some(remote) = self.remote.as_mut() else { return };
        let mut expired = std::mem::take(&mut self.parked);
        self.routes.expire(Stage::Rdma, now, &mut expired);
        for &token in &expired {
            remote.cancel(token);
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
        if result.is_ok() {
            self.counters.count_completion(source);
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
            tracing::warn!(region_id, %error, "cannot register a region for RDMA; its remote reads will fail");
        }
    }

    /// True once no transport can write into the region's buffers any more.
    pub fn release_region(&mut self, region_id: u64) -> bool {
        let http_done = self.http.as_ref().is_none_or(|http| http.release_region(region_id));
        http_done && self.remote.as_mut().is_none_or(|remote| remote.release_buffer_area(region_id))
    }

    /// How many reads each path served and why reads fell back.
    pub fn counters(&self) -> &ReadCounters {
        &self.counters
    }

    /// Periodic work off the read path: pick up appended index entries, let the RDMA transport
    /// reconnect to peers while no read drives it, and log the path counters now and then.
    pub fn housekeeping(&mut self) {
        self.local.refresh_all();
        if let Some(remote) = self.remote.as_mut() {
            remote.refresh_catalogues();
            remote.progress();
        }
        if self.last_counters_log.elapsed() >= COUNTERS_LOG_INTERVAL && self.counters != self.logged_counters {
            self.log_counters();
        }
    }

    /// One log line with the path counters.
    pub fn log_counters(&mut self) {
        let counters = &self.counters;
        tracing::info!(
            local = counters.local,
            rdma = counters.rdma,
            http = counters.http,
            fallback_no_exporter = counters.fallback_no_exporter,
            fallback_peer_unavailable = counters.fallback_peer_unavailable,
            fallback_check_failed = counters.fallback_check_failed,
            fallback_other = counters.fallback_other,
            lookups = self.locator.as_ref().map_or(0, Locator::lookups_done),
            "reads by path"
        );
        self.logged_counters = self.counters.clone();
        self.last_counters_log = Instant::now();
    }
}
