//! The read pool: one attachment, several queue pairs, many reads in flight.
//!
//! A queue pair is driven by one thread (its *lane*). HTTP workers hand a
//! lane a [`Job`] through a bounded channel and wait for the completion on a
//! one-shot reply channel; the lane prepares every job it has, publishes
//! them with one submit, and reaps completions as they come, so each queue
//! pair carries up to its capacity of reads at once. Jobs are spread over
//! the lanes round-robin.
//!
//! A lane with reads in flight waits on its CQ in slices of at most
//! [`CQ_WAIT_SLICE`], then looks for new jobs: a job that arrives while
//! others are in flight waits at most that long to be submitted. An idle
//! lane sleeps on its channel. When the engine goes away (stopped, fenced,
//! socket closed) every lane fails its reads and every later job with
//! [`ReadError::Disconnected`]; the pool does not re-attach (one attach per
//! process: restart the sidecar with the engine).

use crate::needle_read::{ReadError, ReadSpec, SubmitRead};
use rdma_client::{Client, ClientError, Completion, QueuePair};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest CQ wait of a lane with reads in flight before it looks for new jobs.
pub const CQ_WAIT_SLICE: Duration = Duration::from_micros(200);
/// How long an idle lane sleeps on its channel before it checks the engine.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Jobs waiting in one lane's channel at most (workers block beyond it).
const LANE_CHANNEL_JOBS: usize = 256;
/// Time a worker waits for its reply beyond the read's own timeout.
const REPLY_GRACE: Duration = Duration::from_millis(500);

/// One read handed to a lane.
struct Job {
    spec: ReadSpec,
    deadline_ns: u64,
    reply: SyncSender<Result<Completion, ReadError>>,
}

/// Shared state of the pool: whether the engine is still there.
#[derive(Debug, Default)]
struct PoolState {
    disconnected: AtomicBool,
    reason: Mutex<String>,
}

impl PoolState {
    fn disconnect(&self, reason: String) {
        if let Ok(mut slot) = self.reason.lock() {
            if slot.is_empty() {
                tracing::error!(%reason, "engine connection lost; reads fail until the sidecar is restarted");
                *slot = reason;
            }
        }
        self.disconnected.store(true, Ordering::Release);
    }

    fn error(&self) -> ReadError {
        ReadError::Disconnected(self.reason.lock().map(|reason| reason.clone()).unwrap_or_default())
    }
}

/// The pool of lanes over one attachment.
#[derive(Debug)]
pub struct ReadPool {
    client: Client,
    lanes: Vec<SyncSender<Job>>,
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
            let lane = Lane::new(client.clone(), queue_pair, receiver, state.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sidecar-lane-{index}"))
                .spawn(move || lane.run())
                .map_err(|error| ClientError::BadRegion(format!("cannot start a lane thread: {error}")))?;
            lanes.push(sender);
            threads.push(thread);
        }
        Ok(ReadPool { client, lanes, next_lane: AtomicUsize::new(0), state, timeout, threads: Mutex::new(threads) })
    }

    /// Whether the engine is attached and alive.
    pub fn connected(&self) -> bool {
        !self.state.disconnected.load(Ordering::Acquire) && self.client.check_alive().is_ok()
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// A reader for one request (implements [`SubmitRead`]).
    pub fn reader(&self) -> PoolReader<'_> {
        PoolReader { pool: self }
    }

    fn submit(&self, spec: &ReadSpec) -> Result<Completion, ReadError> {
        if self.state.disconnected.load(Ordering::Acquire) {
            return Err(self.state.error());
        }
        let (reply, receiver) = mpsc::sync_channel(1);
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + self.timeout.as_nanos() as u64;
        let mut job = Job { spec: *spec, deadline_ns, reply };
        // Try every lane without blocking, starting at the next in turn;
        // block on the first only if all are full.
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed);
        for step in 0..self.lanes.len() {
            match self.lanes[(start + step) % self.lanes.len()].try_send(job) {
                Ok(()) => return self.await_reply(&receiver),
                Err(TrySendError::Full(back)) => job = back,
                Err(TrySendError::Disconnected(_)) => return Err(self.state.error()),
            }
        }
        self.lanes[start % self.lanes.len()].send(job).map_err(|_| self.state.error())?;
        self.await_reply(&receiver)
    }

    fn await_reply(&self, receiver: &Receiver<Result<Completion, ReadError>>) -> Result<Completion, ReadError> {
        match receiver.recv_timeout(self.timeout + REPLY_GRACE) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ReadError::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(self.state.error()),
        }
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        // Closing the channels ends the lanes once their reads have landed.
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
}

impl SubmitRead for PoolReader<'_> {
    fn submit_read(&mut self, spec: &ReadSpec) -> Result<Completion, ReadError> {
        self.pool.submit(spec)
    }

    fn client(&self) -> &Client {
        &self.pool.client
    }
}

/// One queue pair and the thread state that drives it.
struct Lane {
    client: Client,
    queue_pair: QueuePair,
    jobs: Receiver<Job>,
    state: Arc<PoolState>,
    /// Jobs taken from the channel but not yet in the SQ (SQ, slot table or
    /// buffer area full); bounded by the channel's size plus what is in flight.
    backlog: VecDeque<Job>,
    /// Reply channel of each tag (= slot) in flight; tags index this table.
    replies: Vec<Option<SyncSender<Result<Completion, ReadError>>>>,
    free_tags: Vec<usize>,
}

impl Lane {
    fn new(client: Client, queue_pair: QueuePair, jobs: Receiver<Job>, state: Arc<PoolState>) -> Lane {
        let capacity = queue_pair.capacity() as usize;
        Lane {
            client,
            queue_pair,
            jobs,
            state,
            backlog: VecDeque::new(),
            replies: (0..capacity).map(|_| None).collect(),
            free_tags: (0..capacity).rev().collect(),
        }
    }

    fn in_flight(&self) -> usize {
        self.replies.len() - self.free_tags.len()
    }

    fn run(mut self) {
        loop {
            if self.in_flight() == 0 && self.backlog.is_empty() {
                match self.jobs.recv_timeout(IDLE_CHECK_INTERVAL) {
                    Ok(job) => self.backlog.push_back(job),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(error) = self.client.check_alive() {
                            self.fail_everything(error.to_string());
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // Bounded: the channel holds at most LANE_CHANNEL_JOBS.
            while let Ok(job) = self.jobs.try_recv() {
                self.backlog.push_back(job);
            }
            if self.state.disconnected.load(Ordering::Acquire) {
                self.fail_everything(String::new());
                continue;
            }
            self.submit_backlog();
            if self.in_flight() > 0 {
                self.wait_and_reap();
            }
        }
    }

    /// Prepares as many backlog jobs as the SQ, slot table and buffer area
    /// take, then publishes them with one submit.
    fn submit_backlog(&mut self) {
        let mut prepared = 0;
        while let Some(job) = self.backlog.pop_front() {
            let Some(&tag) = self.free_tags.last() else {
                self.backlog.push_front(job);
                break;
            };
            let buffer = match self.client.allocate(job.spec.buffer_bytes) {
                Ok(buffer) => buffer,
                // The area is full of reads in flight: try again once some land.
                Err(ClientError::OutOfBufferSpace { .. }) if self.in_flight() > 0 => {
                    self.backlog.push_front(job);
                    break;
                }
                Err(error) => {
                    let _ = job.reply.send(Err(ReadError::Buffer(error)));
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
                    let _ = job.reply.send(Err(ReadError::Engine(error)));
                }
            }
        }
        if prepared > 0 {
            if let Err(error) = self.queue_pair.submit() {
                self.fail_everything(error.to_string());
            }
        }
    }

    fn wait_and_reap(&mut self) {
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
                        // A worker that gave up has dropped its receiver:
                        // the completion (and its buffer) is dropped here.
                        let _ = reply.send(Ok(completion));
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
        let error = || self.state.error();
        for reply in self.replies.iter_mut().filter_map(Option::take) {
            let _ = reply.send(Err(error()));
        }
        for job in self.backlog.drain(..) {
            let _ = job.reply.send(Err(error()));
        }
        self.free_tags = (0..self.replies.len()).rev().collect();
    }
}
