//! The read pool: one attachment, several queue pairs, many reads in flight.
//!
//! Each queue pair is a *lane*: its ring state (the queue pair, the tags in
//! flight and their reply channels, a backlog) sits behind one mutex, and a
//! lane thread drives it whenever it has work. A request's read takes one
//! of two ways:
//!
//! - **direct**: if some lane is idle (its mutex free, nothing in flight),
//!   the request's own thread takes it and drives that one read itself:
//!   submit, wait on the CQ, reap, the reply left in the lane for it (no
//!   channel). No thread hand-off, which is what a lightly loaded sidecar
//!   pays most for (two wake-ups of four per read).
//! - **batched**: otherwise the read goes to a lane's bounded channel (lanes
//!   in turn); the lane thread prepares every job it has, publishes them
//!   with one submit, and reaps completions as they land, each to its
//!   request's one-shot reply channel. A queue pair then carries up to its
//!   CQ's capacity of reads at once.
//!
//! A lane thread holds its lane's mutex from the job that woke it until
//! nothing is in flight or waiting, so a direct read never shares a queue
//! pair with batched ones. It waits on the CQ in slices of at most
//! [`CQ_WAIT_SLICE`], taking new jobs between slices.
//!
//! When the engine goes away (stopped, fenced, socket closed) every read in
//! flight and every later one fails with [`ReadError::Disconnected`]; a pool
//! is one attachment, so the [`super::Reader`]'s keeper replaces the whole
//! pool once the engine is back.

use super::content::{ReadError, ReadSpec, SubmitRead};
use crate::{Client, ClientError, Completion, QueuePair};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest CQ wait of a lane with reads in flight before it looks for new jobs.
pub const CQ_WAIT_SLICE: Duration = Duration::from_micros(200);
/// How long an idle lane sleeps on its channel before it checks the engine.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Jobs waiting in one lane's channel at most (requests block beyond it).
const LANE_CHANNEL_JOBS: usize = 256;
/// Time a request waits for its reply beyond the read's own timeout.
const REPLY_GRACE: Duration = Duration::from_millis(500);

type Reply = Result<Completion, ReadError>;

/// One read handed to a lane.
struct Job {
    spec: ReadSpec,
    deadline_ns: u64,
    reply: ReplyTo,
}

/// Where a job's reply goes.
enum ReplyTo {
    /// A request waiting on a one-shot channel (batched reads).
    Channel(SyncSender<Reply>),
    /// The ring's `direct` slot: the request's own thread drives the lane and takes it from
    /// there (a direct read: no channel to make).
    Direct,
}

/// Whether the engine is still there, shared by every lane.
#[derive(Debug, Default)]
struct PoolState {
    disconnected: AtomicBool,
    reason: Mutex<String>,
    /// The thread to wake when the engine is found gone (the Reader's keeper).
    watcher: Mutex<Option<std::thread::Thread>>,
    /// The engine answered `SHUTDOWN`: it is on its way out, not fencing us off.
    leaving: AtomicBool,
}

impl PoolState {
    fn disconnect(&self, reason: String) {
        if let Ok(mut slot) = self.reason.lock() {
            if slot.is_empty() {
                tracing::error!(%reason, "engine connection lost; reads fail until the engine is back and attached again");
                *slot = reason;
            }
        }
        self.disconnected.store(true, Ordering::Release);
        if let Some(watcher) = self.watcher.lock().ok().and_then(|watcher| watcher.clone()) {
            watcher.unpark();
        }
    }

    fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    fn error(&self) -> ReadError {
        ReadError::Disconnected(self.reason.lock().map(|reason| reason.clone()).unwrap_or_default())
    }
}

/// A lane as the pool sees it: its channel and its ring state.
#[derive(Debug)]
struct LaneHandle {
    jobs: SyncSender<Job>,
    ring: Arc<Mutex<Ring>>,
}

/// The pool of lanes over one attachment.
#[derive(Debug)]
pub struct ReadPool {
    client: Client,
    lanes: Vec<LaneHandle>,
    next_lane: AtomicUsize,
    state: Arc<PoolState>,
    timeout: Duration,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ReadPool {
    /// Takes every queue pair of `client` and starts one lane thread per pair.
    pub fn start(client: Client, timeout: Duration) -> Result<ReadPool, ClientError> {
        let state = Arc::new(PoolState::default());
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for index in 0..client.description().queue_pair_count {
            let queue_pair = client.take_queue_pair(index)?;
            let (sender, receiver) = mpsc::sync_channel(LANE_CHANNEL_JOBS);
            let ring = Arc::new(Mutex::new(Ring::new(client.clone(), queue_pair, state.clone())));
            let lane = LaneThread { jobs: receiver, ring: ring.clone(), state: state.clone() };
            let thread = std::thread::Builder::new()
                .name(format!("rdma-reader-lane-{index}"))
                .spawn(move || lane.run())
                .map_err(|error| ClientError::BadRegion(format!("cannot start a lane thread: {error}")))?;
            lanes.push(LaneHandle { jobs: sender, ring });
            threads.push(thread);
        }
        Ok(ReadPool { client, lanes, next_lane: AtomicUsize::new(0), state, timeout, threads: Mutex::new(threads) })
    }

    /// The attachment this pool reads through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Unparks `thread` when a lane finds the engine gone (the Reader's keeper sleeps parked).
    pub(crate) fn watch(&self, thread: std::thread::Thread) {
        if let Ok(mut watcher) = self.state.watcher.lock() {
            *watcher = Some(thread);
        }
    }

    /// The engine answered that it is shutting down: the pool is as good as disconnected
    /// (reads wait for the next engine instead of meeting this one's refusals).
    pub fn engine_leaving(&self) {
        self.state.leaving.store(true, Ordering::Release);
        self.state.disconnect("the engine is shutting down".into());
    }

    /// Whether the engine said it is shutting down ([`ReadPool::engine_leaving`]).
    pub fn engine_is_leaving(&self) -> bool {
        self.state.leaving.load(Ordering::Acquire)
    }

    /// Stops every lane from touching its queue pair again (each lane's lock is taken, so
    /// no lane is between two ring accesses when this returns): what must hold before the
    /// region is handed to another engine. Reads waiting or in flight fail as disconnected.
    pub fn retire(&self) {
        self.state.disconnect("the engine went away; the region is being attached again".into());
        for lane in &self.lanes {
            // Bounded: a lane holding its lock ends its pass once it sees the disconnection.
            if let Ok(mut ring) = lane.ring.lock() {
                ring.fail_everything(String::new());
                ring.retired = true;
            }
        }
    }

    /// Whether the engine is attached and alive.
    pub fn connected(&self) -> bool {
        !self.state.is_disconnected() && self.client.check_alive().is_ok()
    }

    /// Whether a lane has found the engine gone (one atomic load: no system call, unlike
    /// [`ReadPool::connected`]).
    pub fn known_disconnected(&self) -> bool {
        self.state.is_disconnected()
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// A reader for one request (implements [`SubmitRead`]); each of its reads may take the
    /// pool's timeout.
    pub fn reader(&self) -> PoolReader<'_> {
        PoolReader { pool: self, deadline: None }
    }

    /// A reader for one request whose reads all end by `deadline` (or the pool's timeout,
    /// whichever comes first).
    pub fn reader_until(&self, deadline: Instant) -> PoolReader<'_> {
        PoolReader { pool: self, deadline: Some(deadline) }
    }

    fn submit(&self, spec: &ReadSpec, deadline: Option<Instant>) -> Reply {
        if self.state.is_disconnected() {
            return Err(self.state.error());
        }
        let timeout = deadline
            .map_or(self.timeout, |deadline| self.timeout.min(deadline.saturating_duration_since(Instant::now())));
        if timeout.is_zero() {
            return Err(ReadError::TimedOut);
        }
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + timeout.as_nanos() as u64;
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = self.try_direct(spec, deadline_ns, start, timeout) {
            return reply;
        }
        let (reply, receiver) = mpsc::sync_channel(1);
        self.send_to_a_lane(Job { spec: *spec, deadline_ns, reply: ReplyTo::Channel(reply) }, start)?;
        match receiver.recv_timeout(timeout + REPLY_GRACE) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ReadError::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(self.state.error()),
        }
    }

    /// Submits every read of `specs` at once (spread over the lanes, which batch them) and
    /// waits for all; the replies in order. What many reads in flight from one thread cost.
    pub fn submit_many(&self, specs: &[ReadSpec], deadline: Instant) -> Vec<Reply> {
        let timeout = self.timeout.min(deadline.saturating_duration_since(Instant::now()));
        if self.state.is_disconnected() || timeout.is_zero() {
            return specs.iter().map(|_| Err(self.state.error())).collect();
        }
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + timeout.as_nanos() as u64;
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed);
        let (jobs, receivers): (Vec<Job>, Vec<Receiver<Reply>>) = specs
            .iter()
            .map(|spec| {
                let (reply, receiver) = mpsc::sync_channel(1);
                (Job { spec: *spec, deadline_ns, reply: ReplyTo::Channel(reply) }, receiver)
            })
            .unzip();
        let give_up = Instant::now() + timeout + REPLY_GRACE;
        // An idle lane is driven from this thread (no hand-off); else the lanes take them.
        if let Err(jobs) = self.try_direct_many(jobs, &receivers, start, give_up) {
            for (index, job) in jobs.into_iter().enumerate() {
                // A lane that is gone answers through the receiver being dropped.
                let _ = self.send_to_a_lane(job, start + index);
            }
        }
        receivers
            .into_iter()
            .map(|receiver| match receiver.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
                Ok(result) => result,
                Err(RecvTimeoutError::Timeout) => Err(ReadError::TimedOut),
                Err(RecvTimeoutError::Disconnected) => Err(self.state.error()),
            })
            .collect()
    }

    /// Drives `jobs` on an idle lane from this thread until every one is answered (or
    /// `give_up`), if a lane is idle; else hands them back.
    fn try_direct_many(
        &self,
        jobs: Vec<Job>,
        receivers: &[Receiver<Reply>],
        start: usize,
        give_up: Instant,
    ) -> Result<(), Vec<Job>> {
        for step in 0..self.lanes.len() {
            let Ok(mut ring) = self.lanes[(start + step) % self.lanes.len()].ring.try_lock() else { continue };
            if !ring.is_idle() {
                continue;
            }
            ring.backlog.extend(jobs);
            // Bounded: every job is answered by its completion, its deadline in the engine,
            // or the lane's failure; and this thread gives up at `give_up`.
            while (ring.in_flight() > 0 || !ring.backlog.is_empty()) && Instant::now() < give_up {
                ring.submit_backlog();
                ring.wait_and_reap();
            }
            // Whatever is left answers TimedOut through its receiver (dropped with the ring's
            // table when the lane fails, or its completion lands later and is dropped).
            let _ = receivers;
            return Ok(());
        }
        Err(jobs)
    }

    /// Drives the read on an idle lane from this thread, if one is idle (`None`: none is).
    fn try_direct(&self, spec: &ReadSpec, deadline_ns: u64, start: usize, timeout: Duration) -> Option<Reply> {
        for step in 0..self.lanes.len() {
            let Ok(mut ring) = self.lanes[(start + step) % self.lanes.len()].ring.try_lock() else { continue };
            if !ring.is_idle() {
                continue;
            }
            // Nothing is in flight: a reply left here belongs to a direct read that gave up.
            ring.direct = None;
            ring.backlog.push_back(Job { spec: *spec, deadline_ns, reply: ReplyTo::Direct });
            ring.submit_backlog();
            // Bounded: the read's own deadline ends it in the engine, and
            // this wait gives up shortly after.
            let give_up_ns = rdma_ipc::clock::monotonic_ns() + (timeout + REPLY_GRACE).as_nanos() as u64;
            return Some(loop {
                if let Some(reply) = ring.direct.take() {
                    break reply;
                }
                if ring.in_flight() == 0 && ring.backlog.is_empty() {
                    // Answered with an error before it was in flight.
                    break Err(self.state.error());
                }
                if rdma_ipc::clock::monotonic_ns() > give_up_ns {
                    break Err(ReadError::TimedOut);
                }
                // Still waiting for room in the buffer area.
                ring.submit_backlog();
                ring.wait_and_reap();
            });
        }
        None
    }

    /// Hands the job to a lane's channel without blocking, lanes in turn;
    /// blocks on the first only if all are full.
    fn send_to_a_lane(&self, mut job: Job, start: usize) -> Result<(), ReadError> {
        for step in 0..self.lanes.len() {
            match self.lanes[(start + step) % self.lanes.len()].jobs.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => job = back,
                Err(TrySendError::Disconnected(_)) => return Err(self.state.error()),
            }
        }
        self.lanes[start % self.lanes.len()].jobs.send(job).map_err(|_| self.state.error())
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        // Closing the channels ends the lane threads once their reads have landed.
        self.lanes.clear();
        if let Ok(mut threads) = self.threads.lock() {
            for thread in threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}

/// The [`SubmitRead`] face of the pool for one request.
#[derive(Debug)]
pub struct PoolReader<'a> {
    pool: &'a ReadPool,
    deadline: Option<Instant>,
}

impl SubmitRead for PoolReader<'_> {
    fn submit_read(&mut self, spec: &ReadSpec) -> Reply {
        self.pool.submit(spec, self.deadline)
    }

    fn client(&self) -> &Client {
        &self.pool.client
    }
}

/// The thread of one lane: sleeps on the channel, drives the ring when woken.
struct LaneThread {
    jobs: Receiver<Job>,
    ring: Arc<Mutex<Ring>>,
    state: Arc<PoolState>,
}

impl LaneThread {
    fn run(self) {
        loop {
            let first = match self.jobs.recv_timeout(IDLE_CHECK_INTERVAL) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let Ok(mut ring) = self.ring.lock() else {
                self.state.disconnect("a lane's lock was poisoned by a panic".into());
                return;
            };
            match first {
                Some(job) => ring.backlog.push_back(job),
                None => {
                    if let Err(error) = ring.client.check_alive() {
                        ring.fail_everything(error.to_string());
                    }
                }
            }
            // Bounded: each pass submits or reaps; the channel holds at most
            // LANE_CHANNEL_JOBS, and the loop ends once nothing is left.
            loop {
                while let Ok(job) = self.jobs.try_recv() {
                    ring.backlog.push_back(job);
                }
                if self.state.is_disconnected() {
                    ring.fail_everything(String::new());
                }
                ring.submit_backlog();
                if ring.in_flight() == 0 && ring.backlog.is_empty() {
                    break;
                }
                ring.wait_and_reap();
            }
        }
    }
}

/// One queue pair's ring state.
struct Ring {
    client: Client,
    queue_pair: QueuePair,
    state: Arc<PoolState>,
    /// Jobs taken but not yet in the SQ (SQ, slot table or buffer area
    /// full); bounded by the channel's size plus what is in flight.
    backlog: VecDeque<Job>,
    /// Where the reply of each tag (= slot) in flight goes; tags index this table.
    replies: Vec<Option<ReplyTo>>,
    free_tags: Vec<usize>,
    /// The reply of a direct read (`ReplyTo::Direct`), for its thread to take.
    direct: Option<Reply>,
    /// The region went to another engine ([`ReadPool::retire`]): the queue pair is not
    /// touched again.
    retired: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("queue_pair", &self.queue_pair).field("backlog", &self.backlog.len()).finish()
    }
}

impl Ring {
    fn new(client: Client, queue_pair: QueuePair, state: Arc<PoolState>) -> Ring {
        let capacity = queue_pair.capacity() as usize;
        Ring {
            client,
            queue_pair,
            state,
            backlog: VecDeque::new(),
            replies: (0..capacity).map(|_| None).collect(),
            direct: None,
            retired: false,
            free_tags: (0..capacity).rev().collect(),
        }
    }

    fn in_flight(&self) -> usize {
        self.replies.len() - self.free_tags.len()
    }

    fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.backlog.is_empty() && !self.state.is_disconnected()
    }

    /// Prepares as many backlog jobs as the SQ, slot table and buffer area
    /// take, then publishes them with one submit.
    fn submit_backlog(&mut self) {
        if self.retired {
            return self.fail_everything(String::new());
        }
        let mut prepared = 0;
        while let Some(job) = self.backlog.pop_front() {
            let Some(&tag) = self.free_tags.last() else {
                self.backlog.push_front(job);
                break;
            };
            let buffer = match self.client.allocate(job.spec.buffer_bytes) {
                Ok(buffer) => buffer,
                // The area is full of reads in flight (this lane's, or other lanes' and threads'):
                // try again once some land, until the read's deadline. A read larger than the
                // whole area fails at once.
                Err(ClientError::OutOfBufferSpace { .. })
                    if self.in_flight() > 0
                        || (u64::from(job.spec.buffer_bytes) <= self.client.description().buffer_size_bytes
                            && rdma_ipc::clock::monotonic_ns() < job.deadline_ns) =>
                {
                    self.backlog.push_front(job);
                    break;
                }
                Err(error) => {
                    self.deliver(job.reply, Err(ReadError::Buffer(error)));
                    continue;
                }
            };
            match self.queue_pair.prepare_with_deadline(job.spec.operation(buffer), tag as u64, job.deadline_ns) {
                Ok(()) => {
                    self.free_tags.pop();
                    self.replies[tag] = Some(job.reply);
                    prepared += 1;
                }
                Err(ClientError::SubmissionQueueFull | ClientError::TooManyInFlight(_)) => {
                    self.backlog.push_front(job);
                    break;
                }
                Err(error) => {
                    self.deliver(job.reply, Err(ReadError::Engine(error)));
                }
            }
        }
        if prepared > 0 {
            if let Err(error) = self.queue_pair.submit() {
                self.fail_everything(error.to_string());
            }
        }
    }

    /// Waits (one slice at most) for completions and hands each to its reply channel.
    fn wait_and_reap(&mut self) {
        if self.retired {
            return self.fail_everything(String::new());
        }
        match self.queue_pair.wait(1, CQ_WAIT_SLICE) {
            Ok(_) | Err(ClientError::TimedOut { .. }) => {}
            Err(error) => return self.fail_everything(error.to_string()),
        }
        loop {
            match self.queue_pair.reap_one() {
                Ok(Some(completion)) => {
                    let tag = completion.tag as usize;
                    if let Some(reply) = self.replies.get_mut(tag).and_then(Option::take) {
                        self.free_tags.push(tag);
                        // A request that gave up has dropped its receiver:
                        // the completion (and its buffer) is dropped here.
                        self.deliver(reply, Ok(completion));
                    }
                }
                Ok(None) => return,
                Err(error) => return self.fail_everything(error.to_string()),
            }
        }
    }

    /// The engine is gone: every read in flight or waiting fails, and so
    /// does every later one. Buffers of reads in flight stay with the
    /// queue pair (the engine may still write them) until the region goes.
    fn fail_everything(&mut self, reason: String) {
        if !reason.is_empty() {
            self.state.disconnect(reason);
        }
        let replies: Vec<ReplyTo> = self.replies.iter_mut().filter_map(Option::take).collect();
        let jobs: Vec<Job> = self.backlog.drain(..).collect();
        for reply in replies.into_iter().chain(jobs.into_iter().map(|job| job.reply)) {
            let error = self.state.error();
            self.deliver(reply, Err(error));
        }
        self.free_tags = (0..self.replies.len()).rev().collect();
    }

    /// Hands a reply to its request: through its channel (a request that gave up has
    /// dropped the receiver, and the reply, with its buffer, is dropped here), or into the
    /// `direct` slot.
    fn deliver(&mut self, to: ReplyTo, reply: Reply) {
        match to {
            ReplyTo::Channel(sender) => {
                let _ = sender.send(reply);
            }
            ReplyTo::Direct => self.direct = Some(reply),
        }
    }
}
