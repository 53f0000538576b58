//! The data path: one thread that serves every attached region's queue
//! pairs, spins briefly when idle, then sleeps on all SQ tails at once
//! (`futex_waitv`) with `NEED_WAKEUP` set.
//!
//! The control thread hands regions over through a bounded command queue and
//! rings a private doorbell futex; the poller hands detached regions back the
//! same way, so mappings are created and destroyed off the data path. The
//! loop itself does not allocate: the region table, the sleep word list and
//! both queues are sized from the configuration at start-up.

use crate::execute::{BatchClock, Executor};
use crate::region::RegionMemory;
use crossbeam_queue::ArrayQueue;
use rdma_ipc::futex::{self, WaitWord};
use shm_layout::entry::{Cqe, ErrorCode, Sqe};
use shm_layout::header::{engine_state, fence_reason, region_state};
use shm_layout::queue_pair::{cq_flags, sq_flags};
use shm_layout::region::{EngineRings, RegionView};
use shm_layout::ring::{Consumer, IndexError, Producer, SharedSlots, SleepCheck};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most SQEs taken from one queue pair before moving to the next: bounds the
/// time one busy client can hold the poller.
const MAX_BATCH: u32 = 64;

/// Passes between two heartbeat/clock checks while busy.
const PASSES_PER_HOUSEKEEPING: u32 = 256;

/// How often the read transports refresh their indexes.
const READ_HOUSEKEEPING_INTERVAL_NS: u64 = 1_000_000_000;

/// Longest the drain on SIGTERM waits for clients to make CQ room.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the control thread tells the poller.
#[derive(Debug)]
pub enum Command {
    Attach(Arc<RegionMemory>),
    Detach { region_id: u64 },
}

/// The queues and flags shared by the control thread and the poller.
#[derive(Debug)]
pub struct PollerLink {
    pub commands: ArrayQueue<Command>,
    /// Regions the poller no longer uses; the control thread drops them.
    pub released: ArrayQueue<Arc<RegionMemory>>,
    /// Private futex the poller also sleeps on; bumped for each command.
    pub doorbell: AtomicU32,
    pub shutdown: AtomicBool,
}

impl PollerLink {
    pub fn new(max_regions: usize) -> PollerLink {
        PollerLink {
            // Each region needs at most an attach and a detach in the queue.
            commands: ArrayQueue::new(max_regions * 2),
            released: ArrayQueue::new(max_regions * 2),
            doorbell: AtomicU32::new(0),
            shutdown: AtomicBool::new(false),
        }
    }

    /// Queues a command and wakes the poller. The queue cannot overflow: the
    /// control thread sends at most two commands per region slot.
    pub fn send(&self, command: Command) {
        if let Err(command) = self.commands.push(command) {
            tracing::error!(?command, "poller command queue full; command dropped");
        }
        self.ring_doorbell();
    }

    pub fn ring_doorbell(&self) {
        self.doorbell.fetch_add(1, Ordering::SeqCst);
        futex::wake_private(&self.doorbell, 1);
    }
}

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

struct ServedQueuePair {
    index: u32,
    sq: Consumer<Sqe, SharedSlots<Sqe>>,
    cq: Producer<Cqe, SharedSlots<Cqe>>,
    counters: Counters,
}

impl std::fmt::Debug for ServedQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedQueuePair").field("index", &self.index).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ServedRegion {
    memory: Arc<RegionMemory>,
    queue_pairs: Vec<ServedQueuePair>,
    fenced: bool,
}

#[derive(Debug)]
pub struct Poller {
    link: Arc<PollerLink>,
    executor: Executor,
    regions: Vec<ServedRegion>,
    wait_words: Vec<WaitWord>,
    idle_spin: Duration,
    heartbeat: Duration,
    max_regions: usize,
    last_read_housekeeping_ns: u64,
}

/// Result of serving one queue pair once.
enum Served {
    Entries(u32),
    Fence(u32, IndexError),
}

impl ServedRegion {
    fn new(memory: Arc<RegionMemory>) -> ServedRegion {
        let queue_pairs = (0..memory.geometry.queue_pair_count)
            .map(|index| {
                // SAFETY: the poller is the only engine-side user of these
                // rings, and ServedRegion holds the Arc that keeps the
                // mapping alive for as long as the rings exist.
                let (sq, cq): EngineRings = unsafe { memory.view.engine_rings(index) };
                ServedQueuePair { index, sq, cq, counters: Counters::default() }
            })
            .collect();
        ServedRegion { memory, queue_pairs, fenced: false }
    }

    fn view(&self) -> &RegionView {
        &self.memory.view
    }

    fn fence(&mut self, reason: u32, error: IndexError) {
        let live = self.memory.view.live();
        live.fence_reason.store(reason, Ordering::Relaxed);
        live.region_state.store(region_state::FENCED, Ordering::Release);
        self.fenced = true;
        tracing::warn!(
            region_id = self.memory.identity.region_id,
            client_pid = self.memory.identity.client_pid,
            client = %self.memory.identity.client_name,
            %error,
            "client fenced off: {}",
            fence_reason::describe(reason)
        );
        self.wake_all_waiters();
    }

    fn wake_all_waiters(&self) {
        for queue_pair in &self.queue_pairs {
            futex::wake(queue_pair.cq.tail_word(), u32::MAX);
        }
    }

    fn set_engine_state(&self, state: u32) {
        self.memory.view.live().engine_state.store(state, Ordering::Release);
    }
}

fn publish_counters(view: &RegionView, queue_pair: &ServedQueuePair) {
    let stats = view.stats(queue_pair.index);
    let counters = &queue_pair.counters;
    stats.sqes_taken.store(counters.sqes_taken, Ordering::Relaxed);
    stats.cqes_posted.store(counters.cqes_posted, Ordering::Relaxed);
    stats.errors.store(counters.errors, Ordering::Relaxed);
    stats.invalid_entries.store(counters.invalid_entries, Ordering::Relaxed);
    stats.bytes_read.store(counters.bytes_read, Ordering::Relaxed);
    stats.sleeps.store(counters.sleeps, Ordering::Relaxed);
    stats.client_wakeups.store(counters.client_wakeups, Ordering::Relaxed);
}

/// Takes up to `MAX_BATCH` SQEs (only as many as the CQ has room for),
/// completes each, publishes both rings once, and wakes a waiting client.
fn serve_queue_pair(queue_pair: &mut ServedQueuePair, view: &RegionView, executor: &mut Executor) -> Served {
    let available = match queue_pair.sq.available() {
        Ok(0) => return Served::Entries(0),
        Ok(available) => available,
        Err(error) => return Served::Fence(fence_reason::SQ_TAIL_INVALID, error),
    };
    let room = match queue_pair.cq.free(available.min(MAX_BATCH)) {
        Ok(room) => room,
        Err(error) => return Served::Fence(fence_reason::CQ_HEAD_INVALID, error),
    };
    let count = available.min(room).min(MAX_BATCH);
    let mut clock = BatchClock::default();
    for _ in 0..count {
        let sqe = match queue_pair.sq.pop() {
            Ok(Some(sqe)) => sqe,
            Ok(None) => break,
            Err(error) => return Served::Fence(fence_reason::SQ_TAIL_INVALID, error),
        };
        let (cqe, outcome) = executor.execute(&sqe, view, &mut clock);
        let counters = &mut queue_pair.counters;
        counters.sqes_taken += 1;
        counters.errors += (cqe.result < 0) as u64;
        counters.invalid_entries += outcome.invalid as u64;
        counters.bytes_read += outcome.bytes_read;
        // Cannot fail: `room` free slots were proven above and nothing else
        // produces on this CQ.
        if queue_pair.cq.push(cqe).is_ok() {
            counters.cqes_posted += 1;
        }
    }
    queue_pair.sq.release();
    queue_pair.cq.publish();
    let control = view.queue_control(queue_pair.index);
    if queue_pair.cq.consumer_needs_wakeup(&control.cq_flags, cq_flags::NEED_WAKEUP) {
        futex::wake(&control.cq_tail, u32::MAX);
        queue_pair.counters.client_wakeups += 1;
    }
    publish_counters(view, queue_pair);
    Served::Entries(count)
}

impl Poller {
    pub fn new(
        link: Arc<PollerLink>,
        executor: Executor,
        idle_spin: Duration,
        heartbeat: Duration,
        max_regions: usize,
    ) -> Poller {
        Poller {
            link,
            executor,
            regions: Vec::with_capacity(max_regions),
            wait_words: Vec::with_capacity(futex::WAITV_MAX),
            idle_spin,
            heartbeat,
            max_regions,
            last_read_housekeeping_ns: 0,
        }
    }

    /// Runs until shutdown is requested, then drains.
    pub fn run(mut self) {
        let mut last_housekeeping_ns = rdma_ipc::clock::monotonic_ns();
        let mut idle_since_ns: Option<u64> = None;
        let mut passes = 0u32;
        loop {
            self.apply_commands();
            if self.link.shutdown.load(Ordering::Acquire) {
                self.drain();
                return;
            }
            let served = self.serve_all();
            passes = passes.wrapping_add(1);
            if served > 0 {
                idle_since_ns = None;
                if passes % PASSES_PER_HOUSEKEEPING == 0 {
                    last_housekeeping_ns = self.housekeeping();
                }
                continue;
            }
            let now_ns = rdma_ipc::clock::monotonic_ns();
            let idle_start = *idle_since_ns.get_or_insert(now_ns);
            if now_ns.saturating_sub(last_housekeeping_ns) >= self.heartbeat.as_nanos() as u64 / 2 {
                last_housekeeping_ns = self.housekeeping();
            }
            if now_ns - idle_start < self.idle_spin.as_nanos() as u64 {
                std::hint::spin_loop();
                continue;
            }
            self.sleep();
            idle_since_ns = None;
            last_housekeeping_ns = self.housekeeping();
        }
    }

    fn apply_commands(&mut self) {
        while let Some(command) = self.link.commands.pop() {
            match command {
                Command::Attach(memory) if self.regions.len() < self.max_regions => {
                    self.regions.push(ServedRegion::new(memory));
                }
                Command::Attach(memory) => {
                    tracing::error!(region_id = memory.identity.region_id, "region table full; region not served");
                    self.release(memory);
                }
                Command::Detach { region_id } => {
                    if let Some(position) = self.regions.iter().position(|r| r.memory.identity.region_id == region_id) {
                        let region = self.regions.swap_remove(position);
                        self.release(region.memory);
                    }
                }
            }
        }
    }

    fn release(&self, memory: Arc<RegionMemory>) {
        if self.link.released.push(memory).is_err() {
            tracing::error!("released-region queue full; region dropped on the poller thread");
        }
    }

    fn serve_all(&mut self) -> u32 {
        let mut total = 0;
        for region in self.regions.iter_mut().filter(|region| !region.fenced) {
            let mut fence = None;
            for queue_pair in region.queue_pairs.iter_mut() {
                match serve_queue_pair(queue_pair, &region.memory.view, &mut self.executor) {
                    Served::Entries(count) => total += count,
                    Served::Fence(reason, error) => {
                        fence = Some((reason, error));
                        break;
                    }
                }
            }
            if let Some((reason, error)) = fence {
                region.fence(reason, error);
            }
        }
        total
    }

    /// Writes the heartbeat into every region and, about once a second,
    /// lets the read transports refresh. Returns the time it used.
    fn housekeeping(&mut self) -> u64 {
        let now_ns = rdma_ipc::clock::monotonic_ns();
        for region in &self.regions {
            region.view().live().heartbeat_ns.store(now_ns, Ordering::Relaxed);
        }
        if now_ns.saturating_sub(self.last_read_housekeeping_ns) >= READ_HOUSEKEEPING_INTERVAL_NS {
            self.executor.housekeeping();
            self.last_read_housekeeping_ns = now_ns;
        }
        now_ns
    }

    /// Sets NEED_WAKEUP on every served SQ, re-checks, and sleeps on all SQ
    /// tails and the doorbell for at most one heartbeat interval.
    fn sleep(&mut self) {
        self.wait_words.clear();
        let doorbell = self.link.doorbell.load(Ordering::SeqCst);
        self.wait_words.push(WaitWord::private(&self.link.doorbell, doorbell));
        let mut work_arrived = false;
        let mut fences = Vec::new();
        for (region_index, region) in self.regions.iter_mut().enumerate().filter(|(_, region)| !region.fenced) {
            for queue_pair in region.queue_pairs.iter_mut() {
                let flags = &region.memory.view.queue_control(queue_pair.index).sq_flags;
                match queue_pair.sq.prepare_sleep(flags, sq_flags::NEED_WAKEUP) {
                    Ok(SleepCheck::Sleep { expected_tail }) if self.wait_words.len() < futex::WAITV_MAX => {
                        self.wait_words.push(WaitWord::shared(queue_pair.sq.tail_word(), expected_tail));
                        queue_pair.counters.sleeps += 1;
                    }
                    Ok(SleepCheck::Sleep { .. }) | Ok(SleepCheck::WorkArrived) => work_arrived = true,
                    Err(error) => fences.push((region_index, error)),
                }
            }
        }
        for (region_index, error) in fences {
            self.regions[region_index].fence(fence_reason::SQ_TAIL_INVALID, error);
        }
        if !work_arrived && !self.link.shutdown.load(Ordering::Acquire) {
            // SAFETY: every word is in a mapping held by self.regions (not
            // changed during the call) or in self.link, both alive here.
            unsafe { futex::wait_any(&self.wait_words, self.heartbeat) };
        }
        for region in self.regions.iter_mut() {
            for queue_pair in region.queue_pairs.iter_mut() {
                queue_pair.sq.finish_sleep(&region.memory.view.queue_control(queue_pair.index).sq_flags);
                publish_counters(&region.memory.view, queue_pair);
            }
        }
    }

    /// SIGTERM: completes everything still queued with SHUTDOWN (all work
    /// taken earlier has already completed), marks every region STOPPED and
    /// wakes every waiting client.
    fn drain(&mut self) {
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + DRAIN_TIMEOUT.as_nanos() as u64;
        for region in self.regions.iter_mut() {
            region.set_engine_state(engine_state::DRAINING);
        }
        let mut completed = 0u64;
        for region in self.regions.iter_mut().filter(|region| !region.fenced) {
            for queue_pair in region.queue_pairs.iter_mut() {
                completed += drain_queue_pair(queue_pair, &region.memory.view, deadline_ns);
            }
        }
        for region in &self.regions {
            region.set_engine_state(engine_state::STOPPED);
            region.wake_all_waiters();
        }
        tracing::info!(regions = self.regions.len(), completed_with_shutdown = completed, "poller drained");
    }
}

/// Completes every queued SQE of one queue pair with SHUTDOWN, waiting (up
/// to the deadline) for the client to make CQ room.
fn drain_queue_pair(queue_pair: &mut ServedQueuePair, view: &RegionView, deadline_ns: u64) -> u64 {
    let mut completed = 0;
    while rdma_ipc::clock::monotonic_ns() < deadline_ns {
        let available = queue_pair.sq.available().unwrap_or(0);
        if available == 0 {
            return completed;
        }
        let room = queue_pair.cq.free(available).unwrap_or(0);
        if room == 0 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for _ in 0..available.min(room) {
            if let Ok(Some(sqe)) = queue_pair.sq.pop() {
                if queue_pair.cq.push(Cqe::error(sqe.user_data, ErrorCode::SHUTDOWN)).is_ok() {
                    completed += 1;
                }
            }
        }
        queue_pair.sq.release();
        queue_pair.cq.publish();
        futex::wake(&view.queue_control(queue_pair.index).cq_tail, u32::MAX);
    }
    completed
}
