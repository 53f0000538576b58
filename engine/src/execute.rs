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

/// Which queue pair of which region a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub region_id: u64,
    pub queue_pair: u32,
}

/// What executing an entry gave.
#[derive(Clone, Copy, Debug)]
pub enum Executed {
    /// Completed now.
    Done(Cqe, Outcome),
    /// In flight; its completion comes from [`Executor::progress`]. The
    /// caller keeps one CQ slot reserved for it.
    Pending,
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
    pub fn execute(&mut self, sqe: &Sqe, view: &RegionView, route: Route, clock: &mut BatchClock) -> Executed {
        let request = match sqe.validate(view.geometry().buffer_size_bytes) {
            Ok(request) => request,
            Err(code) => {
                return Executed::Done(Cqe::error(sqe.user_data, code), Outcome { invalid: true, bytes_read: 0 })
            }
        };
        if sqe.deadline_ns != 0 && clock.now_ns() > sqe.deadline_ns {
            return Executed::Done(Cqe::error(sqe.user_data, ErrorCode::DEADLINE_EXCEEDED), Outcome::default());
        }
        let done = |cqe| Executed::Done(cqe, Outcome::default());
        match request {
            Request::Nop => done(Cqe { user_data: sqe.user_data, ..Cqe::default() }),
            Request::Cancel { target_user_data } => {
                let canceled = self.reads.as_mut().is_some_and(|reads| reads.cancel(route, target_user_data));
                if canceled {
                    done(Cqe { user_data: sqe.user_data, ..Cqe::default() })
                } else {
                    done(Cqe::error(sqe.user_data, ErrorCode::NOTHING_TO_CANCEL))
                }
            }
            Request::ReadNeedle(read) => match self.reads.as_mut() {
                Some(reads) => reads.read(sqe.user_data, &read, view, route, sqe.deadline_ns),
                None => done(Cqe::error(sqe.user_data, ErrorCode::NO_SUCH_VOLUME)),
            },
        }
    }

    /// Whether another entry can be taken now from a queue pair that has
    /// `pending` requests in flight (an asynchronous transport has room for
    /// one more, and the queue pair is within its share).
    pub fn has_room(&self, pending: u32) -> bool {
        self.reads.as_ref().is_none_or(|reads| reads.has_room(pending))
    }

    /// A poller pass begins: per-pass budgets start again.
    pub fn begin_pass(&mut self) {
        if let Some(reads) = self.reads.as_mut() {
            reads.begin_pass();
        }
    }

    /// Requests in flight in the transports.
    pub fn pending(&self) -> usize {
        self.reads.as_ref().map_or(0, |reads| reads.pending())
    }

    /// Whether requests in flight need the poller to keep polling (RDMA progress); the
    /// transports that run on threads of their own ring the doorbell instead.
    pub fn needs_polling(&self) -> bool {
        self.reads.as_ref().is_some_and(|reads| reads.needs_polling())
    }

    /// Whether a transport thread queued a completion the poller has not taken yet.
    pub fn has_ready(&mut self) -> bool {
        self.reads.as_mut().is_some_and(|reads| reads.has_ready())
    }

    /// Logs the read path counters (at shutdown).
    pub fn log_counters(&mut self) {
        if let Some(reads) = self.reads.as_mut() {
            reads.log_counters();
        }
    }

    /// Drives the asynchronous transports and hands each finished request's
    /// completion to `sink`.
    pub fn progress(&mut self, sink: &mut dyn FnMut(Route, Cqe, Outcome)) {
        if let Some(reads) = self.reads.as_mut() {
            reads.progress(sink);
        }
    }

    /// A region was attached: transports that write into buffers directly
    /// (RDMA) register its buffer area.
    pub fn attach_region(&mut self, region_id: u64, view: &RegionView) {
        if let Some(reads) = self.reads.as_mut() {
            reads.attach_region(region_id, view);
        }
    }

    /// A region is going away: true once no transport can write into it
    /// any more (its registrations are gone).
    pub fn release_region(&mut self, region_id: u64) -> bool {
        self.reads.as_mut().is_none_or(|reads| reads.release_region(region_id))
    }
}
