//! The I/O under the local transport: positioned reads of a `.dat` straight into the client's
//! buffer (or a read's scratch), many in flight, with completions reaped by the poller. Two
//! backends do the same job:
//!
//! - **io_uring** (the default): one ring owned by the poller thread. Reads are queued while
//!   the poller takes entries off the rings and submitted with one `io_uring_enter` per pass;
//!   a read of cached pages completes inside that call, so its completion is there in the same
//!   pass. A read that must wait for the disk goes on in the kernel's workers, and its
//!   completion wakes the poller through an eventfd registered for asynchronous completions
//!   only (a small thread waits on it and rings the poller's doorbell). Past a byte budget per
//!   pass, reads are handed to the kernel's workers at once (`IOSQE_ASYNC`), so one client's
//!   large reads do not hold up the poller's pass and the others' small reads.
//! - **pread threads**, where io_uring is unavailable (old kernel, seccomp,
//!   `kernel.io_uring_disabled`) or `--local-io threads` asks for it: a few threads run
//!   `pread` and ring the doorbell when they finish.
//!
//! Nothing here knows about needles: an operation is `(user_data, file, destination, length,
//! offset)` and its answer the byte count or an errno, as `pread` would return it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_queue::ArrayQueue;
use io_uring::{opcode, squeue, types, IoUring};

pub use crate::config::LocalIoKind;
use crate::read::http::Waker;

/// Submission queue entries of the ring (a full queue is submitted and refilled; what still
/// does not fit waits in the backlog).
const RING_ENTRIES: u32 = 256;
/// Completion queue entries (the kernel keeps overflowing completions, IORING_FEAT_NODROP).
const RING_COMPLETIONS: u32 = 1024;
/// Largest single operation; longer reads are split by the caller.
pub const OPERATION_BYTES_MAX: u64 = 1 << 30;

/// One positioned read. Its destination must stay valid and untouched by anyone else, and its
/// file open (the caller keeps a clone of the Arc), until its answer is reaped.
#[derive(Debug)]
pub struct Operation {
    pub user_data: u64,
    pub file: Arc<File>,
    pub destination: *mut u8,
    pub length_bytes: u32,
    pub file_offset: u64,
}

// SAFETY: an Operation is handed to a pread thread with a destination that stays mapped and
// unused by anyone else until its answer was reaped (the local transport holds the region
// until then); the file is shared by Arc.
unsafe impl Send for Operation {}

/// The backend in use.
#[derive(Debug)]
pub enum LocalIo {
    Uring(Box<UringIo>),
    Threads(ThreadIo),
}

impl LocalIo {
    /// Starts the backend `kind` asks for; io_uring falls back to threads, with one log line.
    pub fn start(kind: LocalIoKind, threads: usize, capacity: usize, wake: Waker) -> std::io::Result<LocalIo> {
        if kind == LocalIoKind::IoUring {
            match UringIo::start(wake.clone()) {
                Ok(uring) => return Ok(LocalIo::Uring(Box::new(uring))),
                Err(error) => tracing::warn!(
                    %error,
                    threads,
                    "io_uring is unavailable; local reads go through a pool of pread threads instead"
                ),
            }
        }
        ThreadIo::start(threads, capacity, wake).map(LocalIo::Threads)
    }

    pub fn name(&self) -> &'static str {
        match self {
            LocalIo::Uring(_) => "io_uring",
            LocalIo::Threads(_) => "pread threads",
        }
    }

    /// Queues an operation (started by the next [`LocalIo::submit`]).
    pub fn push(&mut self, operation: Operation) {
        match self {
            LocalIo::Uring(uring) => uring.push(operation),
            LocalIo::Threads(threads) => threads.push(operation),
        }
    }

    /// Starts what was queued.
    pub fn submit(&mut self) {
        match self {
            LocalIo::Uring(uring) => uring.submit(),
            LocalIo::Threads(threads) => threads.submit(),
        }
    }

    /// Hands over every finished operation: `(user_data, bytes read or -errno)`.
    pub fn reap(&mut self, sink: &mut dyn FnMut(u64, i64)) {
        match self {
            LocalIo::Uring(uring) => uring.reap(sink),
            LocalIo::Threads(threads) => threads.reap(sink),
        }
    }

    /// Whether answers wait to be reaped (checked before the poller sleeps).
    pub fn has_completions(&mut self) -> bool {
        match self {
            LocalIo::Uring(uring) => !uring.ring.completion().is_empty(),
            LocalIo::Threads(threads) => !threads.shared.answers.is_empty(),
        }
    }
}

/// The io_uring backend.
pub struct UringIo {
    ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
    queued: u32,
    _waiter: EventWaiter,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo").field("backlog", &self.backlog.len()).finish_non_exhaustive()
    }
}

impl UringIo {
    fn start(wake: Waker) -> std::io::Result<UringIo> {
        let ring = IoUring::builder().setup_cqsize(RING_COMPLETIONS).build(RING_ENTRIES)?;
        if !ring.params().is_feature_nodrop() {
            return Err(std::io::Error::other("the kernel's io_uring may drop completions (no IORING_FEAT_NODROP)"));
        }
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd_async(eventfd.as_raw_fd())?;
        let waiter = EventWaiter::spawn(eventfd, wake)?;
        Ok(UringIo { ring, backlog: VecDeque::new(), queued: 0, _waiter: waiter })
    }

    fn push(&mut self, operation: Operation) {
        let mut entry =
            opcode::Read::new(types::Fd(operation.file.as_raw_fd()), operation.destination, operation.length_bytes)
                .offset(operation.file_offset)
                .build()
                .user_data(operation.user_data);
        // What reaches the ring was not served inline: it waits for the disk, or is large, or
        // past the pass's inline budget. The kernel's workers do it; the poller goes on.
        entry = entry.flags(squeue::Flags::ASYNC);
        self.backlog.push_back(entry);
    }

    fn submit(&mut self) {
        // Bounded: each round moves at least one entry into the ring, or stops.
        while !self.backlog.is_empty() {
            let mut moved = 0;
            {
                let mut submission = self.ring.submission();
                while let Some(entry) = self.backlog.pop_front() {
                    // SAFETY: the entry's destination stays valid and untouched, and its file
                    // open, until its answer is reaped (the contract of Operation).
                    if unsafe { submission.push(&entry) }.is_err() {
                        self.backlog.push_front(entry);
                        break;
                    }
                    moved += 1;
                }
            }
            self.queued += moved;
            if self.queued > 0 {
                match self.ring.submit() {
                    Ok(submitted) => self.queued -= (submitted as u32).min(self.queued),
                    Err(error) if error.raw_os_error() == Some(libc::EBUSY) => break,
                    Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                    Err(error) => {
                        tracing::error!(%error, "io_uring submission failed");
                        break;
                    }
                }
            }
            if moved == 0 {
                break;
            }
        }
    }

    fn reap(&mut self, sink: &mut dyn FnMut(u64, i64)) {
        let mut completion = self.ring.completion();
        completion.sync();
        for entry in &mut completion {
            sink(entry.user_data(), i64::from(entry.result()));
        }
    }
}

/// Waits on the eventfd the ring signals for asynchronous completions and rings the poller's
/// doorbell; stops when the backend is dropped.
struct EventWaiter {
    eventfd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventWaiter {
    fn spawn(eventfd: OwnedFd, wake: Waker) -> std::io::Result<EventWaiter> {
        let eventfd = Arc::new(eventfd);
        let stop = Arc::new(AtomicBool::new(false));
        let (fd, stopped) = (Arc::clone(&eventfd), Arc::clone(&stop));
        let thread = std::thread::Builder::new().name("local-io-wake".into()).spawn(move || {
            let mut count = [0u8; 8];
            while !stopped.load(Ordering::Acquire) {
                // SAFETY: reads 8 bytes into `count`, which has 8.
                let result = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
                if result < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %std::io::Error::last_os_error(), "io_uring eventfd read failed");
                    return;
                }
                wake();
            }
        })?;
        Ok(EventWaiter { eventfd, stop, thread: Some(thread) })
    }
}

impl Drop for EventWaiter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one` to the eventfd, which wakes the waiting read.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pread-thread backend.
#[derive(Debug)]
pub struct ThreadIo {
    shared: Arc<ThreadShared>,
    pending: Vec<Operation>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct ThreadShared {
    jobs: Mutex<VecDeque<Operation>>,
    ready: Condvar,
    answers: ArrayQueue<(u64, i64)>,
    stop: AtomicBool,
}

impl ThreadIo {
    fn start(threads: usize, capacity: usize, wake: Waker) -> std::io::Result<ThreadIo> {
        let shared = Arc::new(ThreadShared {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            answers: ArrayQueue::new(capacity.max(1)),
            stop: AtomicBool::new(false),
        });
        let handles = (0..threads.max(1))
            .map(|index| {
                let (shared, wake) = (Arc::clone(&shared), wake.clone());
                std::thread::Builder::new().name(format!("local-pread-{index}")).spawn(move || shared.work(&*wake))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ThreadIo { shared, pending: Vec::new(), threads: handles })
    }

    fn push(&mut self, operation: Operation) {
        self.pending.push(operation);
    }

    fn submit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut jobs = self.shared.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        jobs.extend(self.pending.drain(..));
        drop(jobs);
        self.shared.ready.notify_all();
    }

    fn reap(&mut self, sink: &mut dyn FnMut(u64, i64)) {
        // Bounded: the queue holds at most its capacity.
        while let Some((user_data, result)) = self.shared.answers.pop() {
            sink(user_data, result);
        }
    }
}

impl ThreadShared {
    fn work(&self, wake: &(dyn Fn() + Send + Sync)) {
        loop {
            let job = {
                let mut jobs = self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(job) = jobs.pop_front() {
                        break job;
                    }
                    jobs = self.ready.wait(jobs).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            // SAFETY: the destination has room for `length_bytes` and nothing else uses it
            // until this answer is reaped (the Operation contract).
            let result = unsafe {
                libc::pread(
                    job.file.as_raw_fd(),
                    job.destination.cast(),
                    job.length_bytes as usize,
                    job.file_offset as libc::off_t,
                )
            };
            let answer = if result < 0 {
                -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
            } else {
                result as i64
            };
            // The queue holds one answer per operation the transport has in flight.
            if self.answers.push((job.user_data, answer)).is_err() {
                tracing::error!("local read answer queue full; answer dropped");
            }
            wake();
        }
    }
}

impl Drop for ThreadIo {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
