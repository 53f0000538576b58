//! Needle reads: which transport serves a volume, and turning a transport's
//! result into a completion. Every transport checks the needle with
//! [`check`] before a read completes.

pub mod check;
pub mod local;

use crate::config::Config;
use crate::execute::{Executed, Outcome, Route};
use shm_layout::entry::{cqe_flags, Cqe, ErrorCode, NeedleRead};
use shm_layout::region::RegionView;
use volume_format::index::OffsetWidth;

#[derive(Debug, thiserror::Error)]
pub enum ReadSetupError {
    #[error("cannot read volume directory {dir}: {source}")]
    VolumeDir { dir: String, source: std::io::Error },
}

/// A checked read: where the data starts (relative to the buffer the SQE
/// named) and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadDone {
    pub data_offset_in_buffer: u64,
    pub data_length: u64,
    pub gzipped: bool,
}

/// The completion for a finished read.
pub fn completion(
    user_data: u64,
    read: &NeedleRead,
    source: u32,
    result: Result<ReadDone, (ErrorCode, u64)>,
) -> (Cqe, Outcome) {
    match result {
        Ok(done) => {
            let gzip_flag = if done.gzipped { cqe_flags::NEEDLE_GZIPPED } else { 0 };
            let cqe = Cqe {
                user_data,
                result: done.data_length as i32,
                flags: source | gzip_flag,
                data_offset: read.buffer_offset + done.data_offset_in_buffer,
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
    local: local::LocalVolumes,
}

impl ReadService {
    /// The service for `--volume-dir`; `None` when no read transport is configured.
    pub fn from_config(config: &Config) -> Result<Option<ReadService>, ReadSetupError> {
        if config.volume_dir.is_empty() {
            return Ok(None);
        }
        let width = if config.offset_bytes == 5 { OffsetWidth::Five } else { OffsetWidth::Four };
        let local =
            local::LocalVolumes::load(&config.volume_dir, width).map_err(|source| ReadSetupError::VolumeDir {
                dir: config.volume_dir.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                source,
            })?;
        tracing::info!(volumes = local.len(), "local volumes loaded");
        Ok(Some(ReadService { local }))
    }

    /// Serves one validated read into `view`'s buffer area.
    pub fn read(
        &mut self,
        user_data: u64,
        read: &NeedleRead,
        view: &RegionView,
        _route: Route,
        _deadline_ns: u64,
    ) -> Executed {
        // Sqe::validate proved the range is inside the buffer area.
        let Some(buffer) = view.buffer_range(read.buffer_offset, read.buffer_length as u64) else {
            return Executed::Done(
                Cqe::error(user_data, ErrorCode::BAD_BUFFER),
                Outcome { invalid: true, bytes_read: 0 },
            );
        };
        if self.local.serves(read.volume_id) {
            let result = self.local.read(read, buffer);
            let (cqe, outcome) = completion(user_data, read, cqe_flags::SOURCE_LOCAL, result);
            return Executed::Done(cqe, outcome);
        }
        Executed::Done(Cqe::error(user_data, ErrorCode::NO_SUCH_VOLUME), Outcome::default())
    }

    /// Reads in flight (asynchronous transports only).
    pub fn pending(&self) -> usize {
        0
    }

    /// Completions of reads that finished asynchronously.
    pub fn progress(&mut self, _sink: &mut dyn FnMut(Route, Cqe, Outcome)) {}

    /// Cancels the read `target_user_data` of `route` if it is in flight.
    pub fn cancel(&mut self, _route: Route, _target_user_data: u64) -> bool {
        false
    }

    pub fn attach_region(&mut self, _region_id: u64, _view: &RegionView) {}

    pub fn release_region(&mut self, _region_id: u64) -> bool {
        true
    }

    /// Periodic work off the read path: pick up appended index entries.
    pub fn housekeeping(&mut self) {
        self.local.refresh_all();
    }
}
