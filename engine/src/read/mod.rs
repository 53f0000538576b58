//! Needle reads: which transport serves a volume, and turning a transport's
//! result into a completion. Local volumes are read synchronously with
//! `pread`; remote volumes over UCX asynchronously (their completions come
//! from [`ReadService::progress`]). Every transport checks the needle with
//! [`check`] before a read completes.

pub mod check;
pub mod local;
mod routes;

use crate::config::Config;
use crate::execute::{Executed, Outcome, Route};
use crate::rdma::remote::{RemoteConfig, RemoteReads};
use routes::{PendingRead, RouteTable};
use shm_layout::entry::{cqe_flags, Cqe, ErrorCode, NeedleRead};
use shm_layout::region::RegionView;
use std::path::PathBuf;
use volume_format::index::OffsetWidth;

#[derive(Debug, thiserror::Error)]
pub enum ReadSetupError {
    #[error("cannot read volume directory {dir}: {source}")]
    VolumeDir { dir: String, source: std::io::Error },
    #[error("cannot start the RDMA read role: {0}")]
    Remote(#[from] crate::rdma::remote::RemoteError),
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

/// What the read transports need to start: built on the control thread,
/// turned into a [`ReadService`] on the poller thread (UCX objects stay on
/// the thread that made them).
#[derive(Debug)]
pub struct ReadSetup {
    local: local::LocalVolumes,
    remote: Option<RemoteConfig>,
    reads_per_queue_pair: usize,
}

impl ReadSetup {
    /// Loads `--volume-dir` volumes and prepares the `--peer` settings;
    /// `None` when no read transport is configured.
    pub fn from_config(config: &Config) -> Result<Option<ReadSetup>, ReadSetupError> {
        if config.volume_dir.is_empty() && config.peer.is_empty() {
            return Ok(None);
        }
        let width = if config.offset_bytes == 5 { OffsetWidth::Five } else { OffsetWidth::Four };
        let local = local::LocalVolumes::load(&config.volume_dir, width)
            .map_err(|source| ReadSetupError::VolumeDir { dir: join_paths(&config.volume_dir), source })?;
        if !config.volume_dir.is_empty() {
            tracing::info!(volumes = local.len(), "local volumes loaded");
        }
        let remote = (!config.peer.is_empty()).then(|| RemoteConfig {
            max_in_flight: config.max_rdma_in_flight().max(crate::rdma::remote::MAX_IN_FLIGHT_MIN),
            ..RemoteConfig::new(config.peer.clone())
        });
        Ok(Some(ReadSetup { local, remote, reads_per_queue_pair: config.rdma_reads_per_queue_pair }))
    }

    /// Starts the transports. Call on the thread that will use them.
    pub fn start(self) -> Result<ReadService, ReadSetupError> {
        let (remote, routes) = match self.remote {
            Some(config) => {
                let routes = RouteTable::new(config.max_in_flight);
                let peers = config.peers.len();
                let remote = RemoteReads::new(config)?;
                tracing::info!(peers, "RDMA read role started");
                (Some(remote), routes)
            }
            None => (None, RouteTable::new(0)),
        };
        Ok(ReadService { local: self.local, remote, routes, reads_per_queue_pair: self.reads_per_queue_pair })
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// The read transports this engine was configured with.
#[derive(Debug)]
pub struct ReadService {
    local: local::LocalVolumes,
    remote: Option<RemoteReads>,
    routes: RouteTable,
    /// A queue pair's share of the RDMA table.
    reads_per_queue_pair: usize,
}

impl ReadService {
    /// Whether another read can start now for a queue pair with `pending`
    /// reads in flight: the RDMA table has a free slot and the queue pair is
    /// within its share, so one busy queue pair cannot starve the others.
    /// When not, the poller leaves entries in the SQ until one completes.
    pub fn has_room(&self, pending: u32) -> bool {
        self.remote.as_ref().is_none_or(|remote| {
            remote.has_room() && self.routes.has_room() && (pending as usize) < self.reads_per_queue_pair
        })
    }

    /// Serves one validated read into `view`'s buffer area: locally and at
    /// once, or over RDMA with the completion to come.
    pub fn read(&mut self, user_data: u64, read: &NeedleRead, view: &RegionView, route: Route) -> Executed {
        // Sqe::validate proved the range is inside the buffer area.
        let Some(buffer) = view.buffer_range(read.buffer_offset, read.buffer_length as u64) else {
            let cqe = Cqe::error(user_data, ErrorCode::BAD_BUFFER);
            return Executed::Done(cqe, Outcome { invalid: true, bytes_read: 0 });
        };
        if self.local.serves(read.volume_id) {
            let result = self.local.read(read, buffer);
            let (cqe, outcome) = completion(user_data, read.buffer_offset, cqe_flags::SOURCE_LOCAL, result);
            return Executed::Done(cqe, outcome);
        }
        let Some(remote) = self.remote.as_mut() else {
            return Executed::Done(Cqe::error(user_data, ErrorCode::NO_SUCH_VOLUME), Outcome::default());
        };
        let pending = PendingRead { route, user_data, buffer_offset: read.buffer_offset };
        let Some(token) = self.routes.insert(pending) else {
            // Not reached: the poller checks has_room() before taking an entry.
            return Executed::Done(Cqe::error(user_data, ErrorCode::IO_ERROR), Outcome::default());
        };
        match remote.start_read(token, route.region_id, read, buffer) {
            Ok(()) => Executed::Pending,
            Err(error) => {
                self.routes.remove(token);
                let (cqe, outcome) = completion(user_data, read.buffer_offset, cqe_flags::SOURCE_RDMA, Err(error));
                Executed::Done(cqe, outcome)
            }
        }
    }

    /// Reads in flight in the RDMA transport.
    pub fn pending(&self) -> usize {
        self.routes.in_use()
    }

    /// Drives the RDMA transport and hands over each finished read's completion.
    pub fn progress(&mut self, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        let Some(remote) = self.remote.as_mut() else { return };
        remote.progress();
        // Bounded: each pass removes one completion from a queue that holds
        // at most max_in_flight.
        while let Some((token, result)) = remote.poll_completion() {
            let Some(read) = self.routes.remove(token) else { continue };
            let (cqe, outcome) = completion(read.user_data, read.buffer_offset, cqe_flags::SOURCE_RDMA, result);
            sink(read.route, cqe, outcome);
        }
    }

    /// Cancels the read `target_user_data` of `route` if it is in flight; its
    /// completion (CANCELED) still comes through `progress`, after any GET
    /// already posted into the buffer has landed.
    pub fn cancel(&mut self, route: Route, target_user_data: u64) -> bool {
        let Some(token) = self.routes.find(route, target_user_data) else { return false };
        self.remote.as_mut().is_some_and(|remote| remote.cancel(token))
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
        self.remote.as_mut().is_none_or(|remote| remote.release_buffer_area(region_id))
    }

    /// Periodic work off the read path: pick up appended index entries, and
    /// let the RDMA transport reconnect to peers while no read drives it.
    pub fn housekeeping(&mut self) {
        self.local.refresh_all();
        if let Some(remote) = self.remote.as_mut() {
            remote.refresh_catalogues();
            remote.progress();
        }
    }
}
