//! Turning one SQE into one CQE: validation, deadlines, and dispatch to the
//! operation's service. Everything here runs on the poller thread and does
//! not allocate.

use shm_layout::entry::{Cqe, ErrorCode, Request, Sqe};
use shm_layout::region::RegionView;

/// `CLOCK_MONOTONIC`, read at most once per batch and only if an entry in the
/// batch has a deadline.
#[derive(Debug, Default)]
pub struct BatchClock {
    now_ns: Option<u64>,
}

impl BatchClock {
    pub fn now_ns(&mut self) -> u64 {
        *self.now_ns.get_or_insert_with(rdma_ipc::clock::monotonic_ns)
    }
}

/// What one entry did, for the queue pair's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub invalid: bool,
    pub bytes_read: u64,
}

/// Serves requests. Read transports plug in here (local files; UCX).
#[derive(Debug, Default)]
pub struct Executor {
    reads: Option<crate::read::ReadService>,
}

impl Executor {
    pub fn new(reads: Option<crate::read::ReadService>) -> Executor {
        Executor { reads }
    }

    /// Periodic work of the read transports (index refresh), called by the
    /// poller about once a second, never per entry.
    pub fn housekeeping(&mut self) {
        if let Some(reads) = self.reads.as_mut() {
            reads.housekeeping();
        }
    }

    /// Executes one entry copied out of `view`'s SQ. Writes, if at all, only
    /// inside the buffer range the validated entry names.
    pub fn execute(&mut self, sqe: &Sqe, view: &RegionView, clock: &mut BatchClock) -> (Cqe, Outcome) {
        let request = match sqe.validate(view.geometry().buffer_size_bytes) {
            Ok(request) => request,
            Err(code) => return (Cqe::error(sqe.user_data, code), Outcome { invalid: true, bytes_read: 0 }),
        };
        if sqe.deadline_ns != 0 && clock.now_ns() > sqe.deadline_ns {
            return (Cqe::error(sqe.user_data, ErrorCode::DEADLINE_EXCEEDED), Outcome::default());
        }
        match request {
            Request::Nop => (Cqe { user_data: sqe.user_data, ..Cqe::default() }, Outcome::default()),
            // Every operation completes before its CQE is posted, so there is
            // never anything in flight to cancel.
            Request::Cancel { .. } => (Cqe::error(sqe.user_data, ErrorCode::NOTHING_TO_CANCEL), Outcome::default()),
            Request::ReadNeedle(read) => match self.reads.as_mut() {
                Some(reads) => reads.read(sqe.user_data, &read, view),
                None => (Cqe::error(sqe.user_data, ErrorCode::NO_SUCH_VOLUME), Outcome::default()),
            },
        }
    }
}
