//! The data path: one thread that serves every attached region's queue
//! pairs, spins briefly when idle, then sleeps on all SQ tails at once
//! (`futex_waitv`) with `NEED_WAKEUP` set. How long it spins is adapted to
//! what the last idle spells cost (`rdma_ipc::spin`): on a busy host the
//! poller sleeps sooner, so the clients it waits for get the CPU.
//!
//! The control thread hands regions over through a bounded command queue and
//! rings a private doorbell futex; the poller hands detached regions back the
//! same way, so mappings are created and destroyed off the data path. The
//! loop itself does not allocate: the region table, the sleep word list and
//! both queues are sized from the configuration at start-up.

mod served;

use crate::execute::{Executor, Route};
use crate::region::RegionMemory;
use crossbeam_queue::ArrayQueue;
use rdma_ipc::futex::{self, WaitWord};
use rdma_ipc::spin::{Spin, SpinPolicy};
use served::ServedRegion;
use shm_layout::header::{engine_state, fence_reason};
use shm_layout::queue_pair::sq_flags;
use shm_layout::ring::SleepCheck;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Passes between two heartbeat/clock checks while busy.
const PASSES_PER_HOUSEKEEPING: u32 = 256;

/// Idle passes between two clock reads while spinning, with one queue pair
/// served; with more, fewer (one pass looks at every queue pair), so that the
/// looks stay well under `rdma_ipc::spin::DESCHEDULED_GAP_NS` apart.
const IDLE_PASSES_PER_CLOCK_READ: u32 = 32;

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

#[derive(Debug)]
pub struct Poller {
    link: Arc<PollerLink>,
    executor: Executor,
    regions: Vec<ServedRegion>,
    wait_words: Vec<WaitWord>,
    /// How long an idle spell spins before the poller sleeps (at most `--idle-spin-us`).
    spin: SpinPolicy,
    /// [`IDLE_PASSES_PER_CLOCK_READ`] over the queue pairs served (at least 1).
    passes_per_clock_read: u32,
    heartbeat: Duration,
    max_regions: usize,
    last_read_housekeeping_ns: u64,
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
            spin: SpinPolicy::new(idle_spin),
            passes_per_clock_read: IDLE_PASSES_PER_CLOCK_READ,
            heartbeat,
            max_regions,
            last_read_housekeeping_ns: 0,
        }
    }

    /// Runs until shutdown is requested, then drains.
    pub fn run(mut self) {
        let mut last_housekeeping_ns = rdma_ipc::clock::monotonic_ns();
        // The idle spell in progress: `idle_passes` empty passes so far, and
        // the spin from its first look at the clock.
        let mut idle_passes = 0u32;
        let mut spin: Option<Spin> = None;
        let mut passes = 0u32;
        loop {
            self.apply_commands();
            if self.link.shutdown.load(Ordering::Acquire) {
                self.drain();
                return;
            }
            let served = self.serve_all() + self.complete_pending();
            self.release_detached();
            passes = passes.wrapping_add(1);
            if served > 0 || self.executor.needs_polling() {
                // Work done, or reads in flight whose completions need
                // progress (RDMA): stay awake. Completions of the transports
                // that run on threads of their own ring the doorbell.
                if served > 0 && idle_passes > 0 {
                    // The work came while spinning: spinning paid.
                    let now_ns = if spin.is_some() { rdma_ipc::clock::monotonic_ns() } else { 0 };
                    self.spin.won(spin.as_ref(), now_ns);
                }
                (idle_passes, spin) = (0, None);
                if passes.is_multiple_of(PASSES_PER_HOUSEKEEPING) {
                    last_housekeeping_ns = self.housekeeping();
                }
                continue;
            }
            idle_passes = idle_passes.saturating_add(1);
            // Look at the clock only every few idle passes: a clock read
            // costs as much as a pass and would delay noticing new work.
            if !passes.is_multiple_of(self.passes_per_clock_read) {
                std::hint::spin_loop();
                continue;
            }
            let now_ns = rdma_ipc::clock::monotonic_ns();
            let progress = self.client_progress();
            let current = spin.get_or_insert_with(|| self.spin.begin(now_ns, progress));
            let keep_spinning = self.spin.keep_spinning(current, now_ns, progress);
            if now_ns.saturating_sub(last_housekeeping_ns) >= self.heartbeat.as_nanos() as u64 / 2 {
                last_housekeeping_ns = self.housekeeping();
                current.resume(last_housekeeping_ns);
            }
            if keep_spinning {
                std::hint::spin_loop();
                continue;
            }
            let slept_ns = self.sleep();
            self.spin.slept(current, slept_ns);
            (idle_passes, spin) = (0, None);
            last_housekeeping_ns = self.housekeeping();
        }
    }

    /// The clients' progress marks, summed (see [`ServedRegion::client_progress`]).
    fn client_progress(&self) -> u32 {
        self.regions.iter().fold(0u32, |mark, region| mark.wrapping_add(region.client_progress()))
    }

    fn apply_commands(&mut self) {
        let mut changed = false;
        while let Some(command) = self.link.commands.pop() {
            changed = true;
            match command {
                Command::Attach(memory) if self.regions.len() < self.max_regions => {
                    self.executor.attach_region(memory.identity.region_id, &memory.view);
                    self.regions.push(ServedRegion::new(memory));
                }
                Command::Attach(memory) => {
                    tracing::error!(region_id = memory.identity.region_id, "region table full; region not served");
                    self.release(memory);
                }
                Command::Detach { region_id } => {
                    if let Some(region) = self.regions.iter_mut().find(|region| region.region_id() == region_id) {
                        region.detaching = true;
                    }
                }
            }
        }
        if changed {
            let queue_pairs: usize = self.regions.iter().map(|region| region.queue_pairs.len()).sum();
            self.passes_per_clock_read = (IDLE_PASSES_PER_CLOCK_READ / queue_pairs.max(1) as u32).max(1);
        }
    }

    /// Hands back every detaching region nothing can write into any more:
    /// no request of it pending and its buffer area released by the
    /// transports (an RDMA GET may land after its requester died).
    fn release_detached(&mut self) {
        let mut index = 0;
        while index < self.regions.len() {
            let region = &self.regions[index];
            if region.detaching && region.pending() == 0 && self.executor.release_region(region.region_id()) {
                let region = self.regions.swap_remove(index);
                self.release(region.memory);
            } else {
                index += 1;
            }
        }
    }

    fn release(&self, memory: Arc<RegionMemory>) {
        if self.link.released.push(memory).is_err() {
            tracing::error!("released-region queue full; region dropped on the poller thread");
        }
    }

    fn serve_all(&mut self) -> u32 {
        self.executor.begin_pass();
        let executor = &mut self.executor;
        self.regions.iter_mut().filter(|region| region.serving()).map(|region| region.serve(executor)).sum()
    }

    /// Posts the completions of requests that finished asynchronously, and drives the
    /// transports while they need it with no read pending (an exporter connecting).
    fn complete_pending(&mut self) -> u32 {
        if self.executor.pending() == 0 && !self.executor.needs_polling() {
            return 0;
        }
        let regions = &mut self.regions;
        let mut completed = 0;
        self.executor.progress(&mut |route: Route, cqe, outcome| {
            if let Some(region) = regions.iter_mut().find(|region| region.region_id() == route.region_id) {
                region.complete_pending(route.queue_pair, cqe, &outcome);
            }
            completed += 1;
        });
        if completed > 0 {
            for region in regions.iter_mut() {
                region.publish_completed();
            }
        }
        completed
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
    /// tails and the doorbell for at most one heartbeat interval. Returns how
    /// long it slept (0 if work arrived before it could).
    fn sleep(&mut self) -> u64 {
        self.wait_words.clear();
        let doorbell = self.link.doorbell.load(Ordering::SeqCst);
        self.wait_words.push(WaitWord::private(&self.link.doorbell, doorbell));
        // Read after the doorbell: the control thread queues a command and a transport thread
        // its completion, then ring. If the ring came after the load above, the futex wait
        // returns at once; if before, what was queued is visible here.
        let mut work_arrived = self.executor.has_ready() || !self.link.commands.is_empty();
        for region in self.regions.iter_mut().filter(|region| region.serving()) {
            // The mapping stays held while the view is borrowed (the region is changed below).
            let memory = Arc::clone(&region.memory);
            let view = &memory.view;
            for index in 0..region.queue_pairs.len() {
                let flags = &view.queue_control(index as u32).sq_flags;
                match region.queue_pairs[index].sq.prepare_sleep(flags, sq_flags::NEED_WAKEUP) {
                    Ok(SleepCheck::Sleep { expected_tail }) if self.wait_words.len() < futex::WAITV_MAX => {
                        let tail = region.queue_pairs[index].sq.tail_word();
                        self.wait_words.push(WaitWord::shared(tail, expected_tail));
                        region.count_sleep(index);
                    }
                    Ok(_) => work_arrived = true,
                    Err(error) => {
                        region.fence(fence_reason::SQ_TAIL_INVALID, error);
                        break;
                    }
                }
            }
        }
        let mut slept_ns = 0;
        if !work_arrived && !self.link.shutdown.load(Ordering::Acquire) {
            let start_ns = rdma_ipc::clock::monotonic_ns();
            // SAFETY: every word is in a mapping held by self.regions (not
            // changed during the call) or in self.link, both alive here.
            unsafe { futex::wait_any(&self.wait_words, self.heartbeat) };
            slept_ns = rdma_ipc::clock::monotonic_ns().saturating_sub(start_ns);
        }
        for region in self.regions.iter_mut() {
            let view = &region.memory.view;
            for queue_pair in region.queue_pairs.iter_mut() {
                queue_pair.sq.finish_sleep(&view.queue_control(queue_pair.index).sq_flags);
            }
            region.publish_counters();
        }
        slept_ns
    }

    /// SIGTERM: waits (bounded) for requests in flight, completes everything
    /// still queued with SHUTDOWN, marks every region STOPPED and wakes
    /// every waiting client.
    fn drain(&mut self) {
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + DRAIN_TIMEOUT.as_nanos() as u64;
        for region in self.regions.iter_mut() {
            region.set_engine_state(engine_state::DRAINING);
        }
        while self.executor.pending() > 0 && rdma_ipc::clock::monotonic_ns() < deadline_ns {
            self.complete_pending();
            std::hint::spin_loop();
        }
        let mut completed = 0u64;
        for region in self.regions.iter_mut().filter(|region| !region.fenced) {
            let view = &region.memory.view;
            for queue_pair in region.queue_pairs.iter_mut() {
                completed += queue_pair.drain_with_shutdown(view, deadline_ns);
            }
        }
        for region in &self.regions {
            region.set_engine_state(engine_state::STOPPED);
            region.wake_all_waiters();
        }
        self.executor.log_counters();
        tracing::info!(
            regions = self.regions.len(),
            completed_with_shutdown = completed,
            still_in_flight = self.executor.pending(),
            "poller drained"
        );
    }
}
