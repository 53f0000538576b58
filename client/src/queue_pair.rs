//! One queue pair, owned by one thread: prepare entries, submit them with one
//! publish (waking the engine if it sleeps), reap completions, wait on the CQ.

use crate::{Buffer, ClientError, CompletionError, Shared};
use rdma_ipc::clock::monotonic_ns;
use rdma_ipc::futex;
use rdma_ipc::spin::SpinPolicy;
use shm_layout::entry::{cqe_flags, opcode, Cqe, ErrorCode, Sqe};
use shm_layout::queue_pair::{cq_flags, sq_flags};
use shm_layout::region::ClientRings;
use shm_layout::ring::{Consumer, Producer, PushError, SharedSlots, SleepCheck};
use std::sync::Arc;
use std::time::Duration;

/// The longest `wait` spins on the CQ before it sleeps on the futex; how long
/// it does spin adapts to the last waits (`rdma_ipc::spin`). Long enough for
/// a 1 MiB local read the engine holds (≈ 120 µs here) on a quiet host.
const WAIT_SPIN_MAX: Duration = Duration::from_micros(200);
/// Polls of the CQ between two clock reads while spinning in `wait`.
const POLLS_PER_CLOCK_READ: u32 = 32;
/// Longest single futex sleep in `wait`: the engine's liveness is checked
/// between slices, so a dead engine is noticed within this bound.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The tag `ping` gives its NOP (callers should not use it for their own requests).
pub const PING_TAG: u64 = u64::MAX;

/// An operation to submit.
#[derive(Debug)]
pub enum Operation {
    Nop,
    /// Read a whole needle into `buffer` (validated by the engine).
    ReadNeedle {
        volume_id: u32,
        needle_id: u64,
        cookie: u32,
        buffer: Buffer,
    },
    /// Read `length` bytes at `offset` of a needle's data into `buffer`.
    ReadRange {
        volume_id: u32,
        needle_id: u64,
        cookie: u32,
        offset: u64,
        length: u64,
        buffer: Buffer,
    },
    /// Cancel the request submitted with tag `target_tag`.
    Cancel {
        target_tag: u64,
    },
}

impl Operation {
    /// The buffer the operation lends the engine, if any.
    fn buffer(&self) -> Option<&Buffer> {
        match self {
            Operation::ReadNeedle { buffer, .. } | Operation::ReadRange { buffer, .. } => Some(buffer),
            Operation::Nop | Operation::Cancel { .. } => None,
        }
    }

    fn into_buffer(self) -> Option<Buffer> {
        match self {
            Operation::ReadNeedle { buffer, .. } | Operation::ReadRange { buffer, .. } => Some(buffer),
            Operation::Nop | Operation::Cancel { .. } => None,
        }
    }
}

/// Which path served a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSource {
    None,
    Local,
    Rdma,
    Http,
    /// The stream transport (our protocol over TCP, from an exporter).
    Stream,
}

impl ReadSource {
    pub fn name(self) -> &'static str {
        match self {
            ReadSource::None => "none",
            ReadSource::Local => "local",
            ReadSource::Rdma => "rdma",
            ReadSource::Http => "http",
            ReadSource::Stream => "stream",
        }
    }
}

/// A completed request, with the buffer it lent the engine (if any).
#[derive(Debug)]
pub struct Completion {
    /// The tag given at `prepare`.
    pub tag: u64,
    pub cqe: Cqe,
    pub buffer: Option<Buffer>,
}

impl Completion {
    /// The byte count, or the error.
    pub fn result(&self) -> Result<u64, CompletionError> {
        if self.cqe.result >= 0 {
            return Ok(self.cqe.result as u64);
        }
        match ErrorCode::from_result(self.cqe.result) {
            Some(code) => Err(CompletionError::Engine { code, needed_bytes: self.cqe.aux }),
            None => Err(CompletionError::Unknown(self.cqe.result)),
        }
    }

    pub fn source(&self) -> ReadSource {
        match self.cqe.source() {
            cqe_flags::SOURCE_LOCAL => ReadSource::Local,
            cqe_flags::SOURCE_RDMA => ReadSource::Rdma,
            cqe_flags::SOURCE_HTTP => ReadSource::Http,
            cqe_flags::SOURCE_STREAM => ReadSource::Stream,
            _ => ReadSource::None,
        }
    }

    /// The needle is stored gzip-compressed; the bytes are the stored ones.
    pub fn gzipped(&self) -> bool {
        self.cqe.flags & cqe_flags::NEEDLE_GZIPPED != 0
    }

    /// Where the data of a successful read lies in its buffer, as a range of
    /// the buffer's bytes. `None` if the read failed or the engine's answer
    /// does not lie inside the buffer.
    pub fn data_range(&self) -> Option<std::ops::Range<usize>> {
        let length = self.result().ok()?;
        let buffer = self.buffer.as_ref()?;
        let start = self.cqe.data_offset.checked_sub(buffer.offset())?;
        let end = start.checked_add(length)?;
        (end <= buffer.length() as u64).then_some(start as usize..end as usize)
    }
}

/// A request between `prepare` and its completion.
#[derive(Debug)]
struct InFlight {
    tag: u64,
    buffer: Option<Buffer>,
}

/// One queue pair. `Send`, not `Sync`: one thread drives it.
pub struct QueuePair {
    shared: Arc<Shared>,
    index: u32,
    sq: Producer<Sqe, SharedSlots<Sqe>>,
    cq: Consumer<Cqe, SharedSlots<Cqe>>,
    /// Slot table for requests in flight; the SQE's user_data is
    /// `generation << 32 | slot`, so a stale or forged completion is caught.
    slots: Vec<Option<InFlight>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    /// Completions reaped by `ping` that were not its own, handed out by `reap_one` first
    /// (at most one per slot).
    stash: std::collections::VecDeque<Completion>,
    /// How long `wait` spins before it sleeps, carried from wait to wait.
    spin: SpinPolicy,
}

impl Drop for QueuePair {
    /// Requests still in flight keep their buffers: completions already posted hand theirs
    /// back; the rest are quarantined until the region is detached, because the engine may
    /// still write into them and no one will reap their completions now.
    fn drop(&mut self) {
        // Bounded: the CQ holds at most twice the SQ's entries. A retired queue pair's rings
        // are another engine's now: not touched.
        while let Ok(Some(_)) = self.reap_one() {}
        // An engine that has exited writes nothing more: its requests' buffers are free.
        let engine_exited = self.shared.engine_exited(Duration::ZERO) == Some(true);
        for in_flight in self.slots.iter_mut().filter_map(Option::take) {
            match in_flight.buffer {
                Some(buffer) if !engine_exited => buffer.quarantine(),
                _ => {}
            }
        }
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair").field("index", &self.index).field("in_flight", &self.in_flight()).finish()
    }
}

impl QueuePair {
    pub(crate) fn new(shared: Arc<Shared>, index: u32) -> QueuePair {
        // SAFETY: Client::take_queue_pair hands each queue pair out once, so
        // this is the only client-side user of its rings; `shared` (held
        // here) keeps the mapping alive as long as the rings.
        let (sq, cq): ClientRings = unsafe { shared.memory.view.client_rings(index) };
        // The CQ holds twice the SQ: the most requests the engine can have
        // taken and not yet seen reaped.
        let capacity = shared.memory.view.geometry().cq_entries();
        QueuePair {
            shared,
            index,
            sq,
            cq,
            slots: (0..capacity).map(|_| None).collect(),
            generations: vec![0; capacity as usize],
            free_slots: (0..capacity).rev().collect(),
            stash: std::collections::VecDeque::with_capacity(capacity as usize),
            spin: SpinPolicy::new(WAIT_SPIN_MAX),
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Requests prepared and not yet reaped.
    pub fn in_flight(&self) -> u32 {
        (self.slots.len() - self.free_slots.len()) as u32
    }

    /// The most requests that can be in flight at once.
    pub fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Writes one entry into the SQ (visible to the engine at `submit`).
    #[inline]
    pub fn prepare(&mut self, operation: Operation, tag: u64) -> Result<(), ClientError> {
        self.prepare_with_deadline(operation, tag, 0)
    }

    /// As `prepare`, failing the request if it is not served by
    /// `deadline_ns` (`CLOCK_MONOTONIC`, see `rdma_ipc::clock`).
    #[inline]
    pub fn prepare_with_deadline(
        &mut self,
        operation: Operation,
        tag: u64,
        deadline_ns: u64,
    ) -> Result<(), ClientError> {
        if self.shared.retired() {
            return Err(ClientError::Retired);
        }
        let Some(&slot) = self.free_slots.last() else {
            return Err(ClientError::TooManyInFlight(self.capacity()));
        };
        if operation.buffer().is_some_and(|buffer| !buffer.belongs_to(&self.shared)) {
            return Err(ClientError::ForeignBuffer);
        }
        let user_data = (self.generations[slot as usize] as u64) << 32 | slot as u64;
        let sqe = Sqe { user_data, deadline_ns, ..self.entry(&operation) };
        match self.sq.push(sqe) {
            Ok(()) => {}
            Err(PushError::Full) => return Err(ClientError::SubmissionQueueFull),
            Err(PushError::Index(error)) => return Err(ClientError::EngineProtocol(error.to_string())),
        }
        self.free_slots.pop();
        self.slots[slot as usize] = Some(InFlight { tag, buffer: operation.into_buffer() });
        Ok(())
    }

    /// The entry for an operation (user data and deadline are set by the caller).
    #[inline]
    fn entry(&self, operation: &Operation) -> Sqe {
        let read = |op: u8, volume_id: u32, needle_id: u64, cookie: u32, buffer: &Buffer| Sqe {
            opcode: op,
            volume_id,
            needle_id,
            cookie,
            buffer_offset: buffer.offset(),
            buffer_length: buffer.length(),
            ..Sqe::default()
        };
        match operation {
            Operation::Nop => Sqe::nop(0),
            Operation::Cancel { target_tag } => Sqe::cancel(0, self.find_tag(*target_tag).unwrap_or(u64::MAX)),
            Operation::ReadNeedle { volume_id, needle_id, cookie, buffer } => {
                read(opcode::READ_NEEDLE, *volume_id, *needle_id, *cookie, buffer)
            }
            Operation::ReadRange { volume_id, needle_id, cookie, offset, length, buffer } => Sqe {
                range_offset: *offset,
                range_length: *length,
                ..read(opcode::READ_RANGE, *volume_id, *needle_id, *cookie, buffer)
            },
        }
    }

    fn find_tag(&self, tag: u64) -> Option<u64> {
        self.slots.iter().enumerate().find_map(|(slot, entry)| {
            entry.as_ref().filter(|entry| entry.tag == tag).map(|_| (self.generations[slot] as u64) << 32 | slot as u64)
        })
    }

    /// Publishes every prepared entry with one store, and wakes the engine
    /// if it announced it is going to sleep.
    pub fn submit(&mut self) -> Result<(), ClientError> {
        if self.shared.retired() {
            return Err(ClientError::Retired);
        }
        self.sq.publish();
        let control = self.shared.memory.view.queue_control(self.index);
        if self.sq.consumer_needs_wakeup(&control.sq_flags, sq_flags::NEED_WAKEUP) {
            futex::wake(&control.sq_tail, 1);
        }
        Ok(())
    }

    /// Takes one completion off the CQ, if there is one.
    #[inline]
    pub fn reap_one(&mut self) -> Result<Option<Completion>, ClientError> {
        if let Some(completion) = self.stash.pop_front() {
            return Ok(Some(completion));
        }
        if self.shared.retired() {
            return Err(ClientError::Retired);
        }
        self.reap_from_cq()
    }

    fn reap_from_cq(&mut self) -> Result<Option<Completion>, ClientError> {
        let cqe = match self.cq.pop() {
            Ok(Some(cqe)) => cqe,
            Ok(None) => return Ok(None),
            Err(error) => return Err(ClientError::EngineProtocol(error.to_string())),
        };
        self.cq.release();
        let slot = (cqe.user_data & u32::MAX as u64) as usize;
        let generation = (cqe.user_data >> 32) as u32;
        let in_flight = match self.slots.get_mut(slot) {
            Some(entry) if self.generations[slot] == generation => entry.take(),
            _ => None,
        };
        let Some(in_flight) = in_flight else {
            return Err(ClientError::EngineProtocol(format!(
                "completion for user_data {:#x}, which is not in flight",
                cqe.user_data
            )));
        };
        self.generations[slot] = generation.wrapping_add(1);
        self.free_slots.push(slot as u32);
        Ok(Some(Completion { tag: in_flight.tag, cqe, buffer: in_flight.buffer }))
    }

    /// Completions waiting on the CQ.
    pub fn ready(&mut self) -> Result<u32, ClientError> {
        let on_cq = self.cq.available().map_err(|error| ClientError::EngineProtocol(error.to_string()))?;
        Ok(on_cq + self.stash.len() as u32)
    }

    /// Waits until at least `count` completions are ready, at most `timeout`.
    /// Spins while spinning pays (see `rdma_ipc::spin`: the window adapts to
    /// the last waits, and ends early on a busy CPU), then sleeps on the CQ
    /// tail futex with NEED_WAKEUP set, in slices, checking between slices
    /// that the engine is alive.
    pub fn wait(&mut self, count: u32, timeout: Duration) -> Result<u32, ClientError> {
        let start_ns = monotonic_ns();
        let timeout_ns = timeout.as_nanos().min(u64::MAX as u128) as u64;
        let mut spin = self.spin.begin(start_ns, self.engine_progress());
        let mut spinning = true;
        let mut polls = 0u32;
        loop {
            let ready = self.ready()?;
            if ready >= count {
                if spinning {
                    self.spin.won(Some(&spin), monotonic_ns());
                }
                return Ok(ready);
            }
            // Read the clock only every few polls: it costs as much as a poll.
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(POLLS_PER_CLOCK_READ) {
                std::hint::spin_loop();
                continue;
            }
            let now_ns = monotonic_ns();
            let waited_ns = now_ns.saturating_sub(start_ns);
            if waited_ns >= timeout_ns {
                self.shared.check_alive()?;
                let waited_ms = waited_ns / 1_000_000;
                return Err(ClientError::TimedOut { waited_ms, wanted: count, available: ready });
            }
            if spinning {
                if self.sq_taken() {
                    // The engine holds every request: it works for us.
                    spin.peer_busy();
                }
                if self.spin.keep_spinning(&mut spin, now_ns, self.engine_progress()) {
                    std::hint::spin_loop();
                    continue;
                }
            }
            self.shared.check_alive()?;
            let wanted_on_cq = count.saturating_sub(self.stash.len() as u32);
            let slice = Duration::from_nanos(timeout_ns - waited_ns).min(WAIT_SLICE);
            let slept_ns = self.sleep_once(slice, wanted_on_cq)?;
            if spinning {
                // The first sleep tells the policy how the spin went.
                self.spin.slept(&spin, slept_ns);
                spinning = false;
            }
        }
    }

    /// A mark that changes when the engine takes requests or posts completions.
    fn engine_progress(&self) -> u32 {
        self.sq.consumer_head_hint().wrapping_add(self.cq.tail_word().load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The engine has taken every request published on the SQ.
    fn sq_taken(&self) -> bool {
        self.sq.consumer_head_hint() == self.sq.local_tail()
    }

    /// Sleeps (at most `slice`) until the CQ holds `wanted` completions or the engine posts.
    /// Returns how long it slept (0 if the completions were there before it could).
    fn sleep_once(&mut self, slice: Duration, wanted: u32) -> Result<u64, ClientError> {
        let control = self.shared.memory.view.queue_control(self.index);
        let check = self.cq.prepare_sleep_for(&control.cq_flags, cq_flags::NEED_WAKEUP, wanted);
        match check.map_err(|error| ClientError::EngineProtocol(error.to_string()))? {
            SleepCheck::Sleep { expected_tail } => {
                let start_ns = monotonic_ns();
                futex::wait(&control.cq_tail, expected_tail, slice);
                self.cq.finish_sleep(&control.cq_flags);
                Ok(monotonic_ns().saturating_sub(start_ns))
            }
            SleepCheck::WorkArrived => Ok(0),
        }
    }

    /// Submits a NOP and waits for it: a liveness probe. Other completions that arrive
    /// meanwhile are kept for `reap_one`, with their buffers.
    pub fn ping(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let start = std::time::Instant::now();
        self.prepare(Operation::Nop, PING_TAG)?;
        self.submit()?;
        // Bounded: every pass reaps at least one completion or waits at most what is left of
        // `timeout`; the queue pair has at most `capacity` requests in flight.
        loop {
            while let Some(completion) = self.reap_from_cq()? {
                if completion.tag == PING_TAG {
                    return Ok(());
                }
                self.stash.push_back(completion);
            }
            let left = timeout.saturating_sub(start.elapsed());
            self.wait(self.stash.len() as u32 + 1, left)?;
        }
    }
}
