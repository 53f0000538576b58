//! One attached region as the poller serves it: its queue pairs' engine-side
//! rings, the CQ slots reserved by requests still in flight, the counters.

use crate::execute::{BatchClock, Executed, Executor, Outcome, Route};
use crate::region::RegionMemory;
use rdma_ipc::futex;
use shm_layout::entry::{Cqe, ErrorCode, Sqe};
use shm_layout::header::{fence_reason, region_state};
use shm_layout::queue_pair::cq_flags;
use shm_layout::region::{EngineRings, RegionView};
use shm_layout::ring::{Consumer, IndexError, Producer, SharedSlots};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most SQEs taken from one queue pair before moving to the next: bounds the
/// time one busy client can hold the poller.
const MAX_BATCH: u32 = 64;
/// Completions done at once are published (and the SQ released) every this many within a
/// batch, not only at its end: at depth 32 a client that saw nothing until the batch ended
/// went to sleep, and waking it cost the poller more than the reads (at 4 KiB depth 32,
/// `futex_wake` of a sleeper on an idle vCPU took 24 % of the poller's time on the
/// development VM: about one wake per batch, each tens of µs).
const PUBLISH_EVERY: u32 = 8;

/// The engine's running totals for one queue pair, stored (not added) into
/// the shared stats block once per batch.
#[derive(Debug, Default)]
struct Counters {
    sqes_taken: u64,
    cqes_posted: u64,
    errors: u64,
    invalid_entries: u64,
    bytes_read: u64,
    sleeps: u64,
    client_wakeups: u64,
}

impl Counters {
    fn count(&mut self, cqe: &Cqe, outcome: &Outcome) {
        crate::metrics::METRICS.count_completion(cqe);
        self.cqes_posted += 1;
        self.errors += (cqe.result < 0) as u64;
        self.invalid_entries += outcome.invalid as u64;
        self.bytes_read += outcome.bytes_read;
    }
}

pub(super) struct ServedQueuePair {
    pub(super) index: u32,
    pub(super) sq: Consumer<Sqe, SharedSlots<Sqe>>,
    cq: Producer<Cqe, SharedSlots<Cqe>>,
    /// Requests taken and not yet completed: each holds one CQ slot, so the
    /// CQ never overflows (`pending <= free CQ slots` at all times).
    pending: u32,
    /// Completions pushed on the CQ and not published yet.
    unpublished: u32,
    counters: Counters,
}

impl std::fmt::Debug for ServedQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedQueuePair").field("index", &self.index).field("pending", &self.pending).finish()
    }
}

/// Result of serving one queue pair once.
pub(super) enum Served {
    Entries(u32),
    Fence(u32, IndexError),
}

#[derive(Debug)]
pub(super) struct ServedRegion {
    pub(super) memory: Arc<RegionMemory>,
    pub(super) queue_pairs: Vec<ServedQueuePair>,
    pub(super) fenced: bool,
    /// The client is gone: serve nothing more, release once nothing is in flight.
    pub(super) detaching: bool,
}

impl ServedRegion {
    pub(super) fn new(memory: Arc<RegionMemory>) -> ServedRegion {
        let queue_pairs = (0..memory.geometry.queue_pair_count)
            .map(|index| {
                // SAFETY: the poller is the only engine-side user of these
                // rings, and ServedRegion holds the Arc that keeps the
                // mapping alive for as long as the rings exist.
                let (sq, cq): EngineRings = unsafe { memory.view.engine_rings(index) };
                ServedQueuePair { index, sq, cq, pending: 0, unpublished: 0, counters: Counters::default() }
            })
            .collect();
        ServedRegion { memory, queue_pairs, fenced: false, detaching: false }
    }

    pub(super) fn region_id(&self) -> u64 {
        self.memory.identity.region_id
    }

    pub(super) fn view(&self) -> &RegionView {
        &self.memory.view
    }

    pub(super) fn serving(&self) -> bool {
        !self.fenced && !self.detaching
    }

    /// A mark that changes when the client reaps completions (the sum of its
    /// CQ heads): how a spinning poller sees that the client runs.
    pub(super) fn client_progress(&self) -> u32 {
        self.queue_pairs.iter().fold(0u32, |mark, queue_pair| mark.wrapping_add(queue_pair.cq.consumer_head_hint()))
    }

    pub(super) fn pending(&self) -> u32 {
        self.queue_pairs.iter().map(|queue_pair| queue_pair.pending).sum()
    }

    pub(super) fn fence(&mut self, reason: u32, error: impl std::fmt::Display) {
        let live = self.memory.view.live();
        live.fence_reason.store(reason, Ordering::Relaxed);
        live.region_state.store(region_state::FENCED, Ordering::Release);
        self.fenced = true;
        crate::metrics::METRICS.count_fenced();
        tracing::warn!(
            region_id = self.region_id(),
            client_pid = self.memory.identity.client_pid,
            client = %self.memory.identity.client_name,
            %error,
            "client fenced off: {}",
            fence_reason::describe(reason)
        );
        self.wake_all_waiters();
    }

    pub(super) fn wake_all_waiters(&self) {
        for queue_pair in &self.queue_pairs {
            futex::wake(queue_pair.cq.tail_word(), u32::MAX);
        }
    }

    pub(super) fn set_engine_state(&self, state: u32) {
        self.memory.view.live().engine_state.store(state, Ordering::Release);
    }

    /// Serves every queue pair once; fences the region on a protocol breach.
    pub(super) fn serve(&mut self, executor: &mut Executor) -> u32 {
        if self.memory.pages_lost() {
            self.fence(fence_reason::PAGES_LOST, "the engine's SIGBUS guard replaced a page of the region");
            return 0;
        }
        let mut total = 0;
        let region_id = self.region_id();
        for queue_pair in self.queue_pairs.iter_mut() {
            match queue_pair.serve(&self.memory.view, region_id, executor) {
                Served::Entries(count) => total += count,
                Served::Fence(reason, error) => {
                    self.fence(reason, error);
                    break;
                }
            }
        }
        total
    }

    /// Posts the completion of a request that was pending. It is published with the next
    /// [`ServedRegion::publish_completed`] (the poller calls it once the transports have
    /// handed over what they finished), or at once when [`PUBLISH_EVERY`] are waiting: one
    /// publish and one wake-up check for many completions, not one each.
    pub(super) fn complete_pending(&mut self, queue_pair: u32, cqe: Cqe, outcome: &Outcome) {
        let Some(served) = self.queue_pairs.get_mut(queue_pair as usize) else { return };
        served.pending = served.pending.saturating_sub(1);
        // Cannot fail: the slot was reserved when the request was taken.
        if served.cq.push(cqe).is_ok() {
            served.counters.count(&cqe, outcome);
            served.unpublished += 1;
        }
        if served.unpublished >= PUBLISH_EVERY {
            served.publish(&self.memory.view);
        }
    }

    /// Publishes the completions pushed by [`ServedRegion::complete_pending`] and not
    /// published yet, waking the clients that sleep on them.
    pub(super) fn publish_completed(&mut self) {
        for queue_pair in self.queue_pairs.iter_mut().filter(|queue_pair| queue_pair.unpublished > 0) {
            queue_pair.publish(&self.memory.view);
        }
    }

    pub(super) fn publish_counters(&self) {
        for queue_pair in &self.queue_pairs {
            queue_pair.publish_counters(&self.memory.view);
        }
    }

    pub(super) fn count_sleep(&mut self, queue_pair: usize) {
        if let Some(served) = self.queue_pairs.get_mut(queue_pair) {
            served.counters.sleeps += 1;
        }
    }
}

impl ServedQueuePair {
    /// Takes up to `MAX_BATCH` SQEs (only as many as the CQ has unreserved
    /// room for), executes each, publishes both rings once, and wakes a
    /// waiting client.
    fn serve(&mut self, view: &RegionView, region_id: u64, executor: &mut Executor) -> Served {
        let available = match self.sq.available() {
            Ok(0) => return Served::Entries(0),
            Ok(available) => available,
            Err(error) => return Served::Fence(fence_reason::SQ_TAIL_INVALID, error),
        };
        let want = available.min(MAX_BATCH) + self.pending;
        let room = match self.cq.free(want) {
            Ok(room) => room.saturating_sub(self.pending),
            Err(error) => return Served::Fence(fence_reason::CQ_HEAD_INVALID, error),
        };
        let count = available.min(room).min(MAX_BATCH);
        let route = Route { region_id, queue_pair: self.index };
        let mut clock = BatchClock::default();
        for _ in 0..count {
            if !executor.has_room(self.pending) {
                break;
            }
            let sqe = match self.sq.pop() {
                Ok(Some(sqe)) => sqe,
                Ok(None) => break,
                Err(error) => return Served::Fence(fence_reason::SQ_TAIL_INVALID, error),
            };
            self.counters.sqes_taken += 1;
            match executor.execute(&sqe, view, route, &mut clock) {
                Executed::Done(cqe, outcome) => {
                    // Cannot fail: `room` unreserved slots were proven above.
                    if self.cq.push(cqe).is_ok() {
                        self.counters.count(&cqe, &outcome);
                        self.unpublished += 1;
                    }
                }
                Executed::Pending => self.pending += 1,
            }
            if self.unpublished >= PUBLISH_EVERY {
                // The client reaps and refills while the rest of the batch is served.
                self.sq.release();
                self.publish_completions(view);
            }
        }
        self.sq.release();
        if self.unpublished > 0 {
            self.publish_completions(view);
        }
        // Requests that went to a transport complete later: nothing to publish, and no
        // reason to wake a client that sleeps on its CQ (it used to be woken for nothing).
        self.publish_counters(view);
        Served::Entries(count)
    }

    /// Publishes the CQ, wakes the client if it sleeps on it, and publishes the counters.
    fn publish(&mut self, view: &RegionView) {
        self.publish_completions(view);
        self.publish_counters(view);
    }

    fn publish_completions(&mut self, view: &RegionView) {
        self.unpublished = 0;
        self.cq.publish();
        let control = view.queue_control(self.index);
        if self.cq.consumer_needs_wakeup(&control.cq_flags, cq_flags::NEED_WAKEUP) {
            futex::wake(&control.cq_tail, u32::MAX);
            self.counters.client_wakeups += 1;
        }
    }

    fn publish_counters(&self, view: &RegionView) {
        let stats = view.stats(self.index);
        let counters = &self.counters;
        stats.sqes_taken.store(counters.sqes_taken, Ordering::Relaxed);
        stats.cqes_posted.store(counters.cqes_posted, Ordering::Relaxed);
        stats.errors.store(counters.errors, Ordering::Relaxed);
        stats.invalid_entries.store(counters.invalid_entries, Ordering::Relaxed);
        stats.bytes_read.store(counters.bytes_read, Ordering::Relaxed);
        stats.sleeps.store(counters.sleeps, Ordering::Relaxed);
        stats.client_wakeups.store(counters.client_wakeups, Ordering::Relaxed);
        stats.in_flight.store(self.pending as u64, Ordering::Relaxed);
    }

    /// Completes every queued SQE with SHUTDOWN, waiting (up to the
    /// deadline) for the client to make CQ room.
    pub(super) fn drain_with_shutdown(&mut self, view: &RegionView, deadline_ns: u64) -> u64 {
        let mut completed = 0;
        while rdma_ipc::clock::monotonic_ns() < deadline_ns {
            let available = self.sq.available().unwrap_or(0);
            if available == 0 {
                break;
            }
            let room = self.cq.free(available + self.pending).unwrap_or(0).saturating_sub(self.pending);
            if room == 0 {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            for _ in 0..available.min(room) {
                if let Ok(Some(sqe)) = self.sq.pop() {
                    let cqe = Cqe::error(sqe.user_data, ErrorCode::SHUTDOWN);
                    if self.cq.push(cqe).is_ok() {
                        self.counters.count(&cqe, &Outcome::default());
                        completed += 1;
                    }
                }
            }
            self.sq.release();
            self.publish(view);
        }
        completed
    }
}
