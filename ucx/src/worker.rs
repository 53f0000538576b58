//! The UCP worker: progress, event-driven waiting, and the queues its callbacks fill.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx_sys as sys;

use crate::am::{AmHandlerSlot, AmInbox, AmMessage};
use crate::completion::{Completion, CompletionQueue};
use crate::context::{Context, ContextInner};
use crate::endpoint::EndpointId;
use crate::error::{Error, Result, Status};

/// How many back-to-back `ucp_worker_progress` calls `wait` makes before arming; the rest of
/// the events are picked up on the next call, so a flood cannot starve the caller forever.
const PROGRESS_ROUNDS_MAX: u32 = 1024;
/// How many times `wait` retries `ucp_worker_arm` when it reports pending events (BUSY).
const ARM_ATTEMPTS_MAX: u32 = 16;

/// Sizes fixed when a worker is created (nothing here grows afterwards).
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Maximum gets in flight (posted, completion not yet popped); the completion queue's
    /// capacity, so it can never overflow.
    pub max_in_flight: usize,
    /// Received active messages held until the owner pops them; more are dropped and counted.
    pub am_queue_capacity: usize,
    /// Largest active-message payload accepted; a larger one is refused (rendezvous) or
    /// dropped (eager), and counted.
    pub am_payload_max_bytes: usize,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig { max_in_flight: 256, am_queue_capacity: 64, am_payload_max_bytes: 16 << 20 }
    }
}

/// A UCP worker in single-thread mode (`ucp_worker_h`).
///
/// Owns the completion queue of every get posted through its endpoints and the inbox of
/// active messages. Not `Send` (see [`Context`]). Endpoints, listeners and remote keys keep
/// the worker alive, so it is destroyed only after all of them.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Rc<WorkerInner>,
}

pub(crate) struct WorkerInner {
    pub(crate) handle: sys::ucp_worker_h,
    pub(crate) completions: CompletionQueue,
    pub(crate) am: AmInbox,
    /// Live endpoints by handle, so an active message's reply endpoint maps to our id.
    pub(crate) endpoints: RefCell<HashMap<usize, EndpointId>>,
    next_endpoint_id: Cell<u64>,
    efd: Cell<Option<RawFd>>,
    /// Active-message handler arguments; boxed so their addresses stay fixed for UCX.
    // The Box is the point: the Vec may move its elements when it grows, UCX holds pointers.
    #[allow(clippy::vec_box)]
    pub(crate) am_handlers: RefCell<Vec<Box<AmHandlerSlot>>>,
    _context: Rc<ContextInner>,
}

impl Worker {
    pub fn new(context: &Context, config: WorkerConfig) -> Result<Worker> {
        // SAFETY: all-zero bytes are a valid ucp_worker_params_t (nothing set); field_mask
        // below names the one field we fill.
        let mut params: sys::ucp_worker_params_t = unsafe { mem::zeroed() };
        params.field_mask = sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64;
        params.thread_mode = sys::UCS_THREAD_MODE_SINGLE;
        let mut handle: sys::ucp_worker_h = ptr::null_mut();
        // SAFETY: the context is live (we keep an Rc to it), params is initialised, handle is
        // a valid out-pointer.
        let status = unsafe { sys::ucp_worker_create(context.inner.handle, &params, &mut handle) };
        Status(status).check("ucp_worker_create")?;
        Ok(Worker {
            inner: Rc::new(WorkerInner {
                handle,
                completions: CompletionQueue::new(config.max_in_flight),
                am: AmInbox::new(config.am_queue_capacity, config.am_payload_max_bytes),
                endpoints: RefCell::new(HashMap::new()),
                next_endpoint_id: Cell::new(1),
                efd: Cell::new(None),
                am_handlers: RefCell::new(Vec::new()),
                _context: Rc::clone(&context.inner),
            }),
        })
    }

    /// One `ucp_worker_progress` call; returns how many events it handled (0 when idle).
    /// Completion and message callbacks run inside it.
    pub fn progress(&self) -> u32 {
        self.inner.progress()
    }

    /// The worker's event fd (needs [`Features::WAKEUP`](crate::Features::WAKEUP)); readable
    /// when the armed worker has events. Owned by UCX: do not close it.
    pub fn efd(&self) -> Result<RawFd> {
        if let Some(fd) = self.inner.efd.get() {
            return Ok(fd);
        }
        let mut fd: RawFd = -1;
        // SAFETY: the worker is live and fd is a valid out-pointer.
        let status = unsafe { sys::ucp_worker_get_efd(self.inner.handle, &mut fd) };
        Status(status).check("ucp_worker_get_efd")?;
        self.inner.efd.set(Some(fd));
        Ok(fd)
    }

    /// Arms the event fd. `Ok(true)`: armed, safe to sleep on [`Worker::efd`]. `Ok(false)`:
    /// events are pending (UCS_ERR_BUSY); progress again before sleeping.
    pub fn arm(&self) -> Result<bool> {
        // SAFETY: the worker is live.
        let status = Status(unsafe { sys::ucp_worker_arm(self.inner.handle) });
        if status == Status(sys::UCS_ERR_BUSY) {
            return Ok(false);
        }
        status.check("ucp_worker_arm").map(|()| true)
    }

    /// Progresses until idle, arms, and sleeps on the event fd for at most `timeout`; then
    /// progresses what woke it. Returns early whenever there was work; callers loop.
    ///
    /// This is how a target must wait: UCX 1.13 emulates gets on user-registered memory in
    /// software, so the exporting side has to run progress for a peer's get to finish.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let efd = self.efd()?;
        for _ in 0..ARM_ATTEMPTS_MAX {
            if self.progress_burst() > 0 {
                return Ok(());
            }
            if self.arm()? {
                poll_readable(efd, timeout)?;
                self.progress_burst();
                return Ok(());
            }
        }
        Ok(())
    }

    /// Busy-progresses until `done()` holds, for at most `timeout`.
    pub fn progress_until(&self, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        while !done() {
            if start.elapsed() >= timeout {
                return Err(Error::Timeout { what: "progress_until", timeout_ms: millis(timeout) });
            }
            self.progress();
        }
        Ok(())
    }

    /// The worker's address (`ucp_worker_get_address`), for diagnostics or an out-of-band
    /// exchange.
    pub fn address(&self) -> Result<Vec<u8>> {
        let mut address: *mut sys::ucp_address_t = ptr::null_mut();
        let mut length: usize = 0;
        // SAFETY: the worker is live; both out-pointers are valid.
        let status = unsafe { sys::ucp_worker_get_address(self.inner.handle, &mut address, &mut length) };
        Status(status).check("ucp_worker_get_address")?;
        // SAFETY: UCX returned `length` readable bytes at `address`; we copy them out and
        // release the buffer once, right after.
        let bytes = unsafe { std::slice::from_raw_parts(address.cast::<u8>(), length) }.to_vec();
        // SAFETY: address came from ucp_worker_get_address on this worker.
        unsafe { sys::ucp_worker_release_address(self.inner.handle, address) };
        Ok(bytes)
    }

    /// The next finished get, if any.
    pub fn pop_completion(&self) -> Option<Completion> {
        self.inner.completions.pop()
    }

    /// Gets posted whose completion has not been popped yet.
    pub fn in_flight(&self) -> usize {
        self.inner.completions.in_flight()
    }

    /// The in-flight bound (`WorkerConfig::max_in_flight`).
    pub fn max_in_flight(&self) -> usize {
        self.inner.completions.capacity()
    }

    /// Registers the handler that queues active messages sent with `id`; pop them with
    /// [`Worker::pop_am_message`].
    pub fn set_am_handler(&self, id: u16) -> Result<()> {
        crate::am::set_handler(&self.inner, id)
    }

    /// The next received active message, if any.
    pub fn pop_am_message(&self) -> Option<AmMessage> {
        self.inner.am.pop()
    }

    /// Active messages dropped since creation (inbox full, or payload over the limit).
    pub fn am_messages_dropped(&self) -> u64 {
        self.inner.am.dropped()
    }

    /// Active-message sends still in flight (their buffers are held until completion).
    pub fn am_sends_in_flight(&self) -> usize {
        self.inner.am.sends_in_flight()
    }

    fn progress_burst(&self) -> u32 {
        let mut events = 0;
        for _ in 0..PROGRESS_ROUNDS_MAX {
            let handled = self.progress();
            if handled == 0 {
                break;
            }
            events += handled;
        }
        events
    }
}

impl WorkerInner {
    pub(crate) fn progress(&self) -> u32 {
        // SAFETY: the worker is live and used only from its owning thread (not Send).
        unsafe { sys::ucp_worker_progress(self.handle) }
    }

    pub(crate) fn allocate_endpoint_id(&self) -> EndpointId {
        let id = self.next_endpoint_id.get();
        self.next_endpoint_id.set(id + 1);
        EndpointId(id)
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("handle", &self.inner.handle)
            .field("completions", &self.inner.completions)
            .finish()
    }
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        // SAFETY: the handle came from ucp_worker_create. Endpoints, listeners and remote keys
        // hold an Rc to this value, so all are gone. Callbacks that UCX still runs while
        // destroying (cancelled requests) use fields of self, which are freed only after this.
        unsafe { sys::ucp_worker_destroy(self.handle) };
    }
}

/// Sleeps until `fd` is readable or `timeout` passes. EINTR counts as a wake-up.
fn poll_readable(fd: RawFd, timeout: Duration) -> Result<()> {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let timeout_ms = i32::try_from(millis(timeout)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Poll(error));
        }
    }
    Ok(())
}

/// A duration in whole milliseconds, rounded up so a short timeout never becomes 0 (a spin).
pub(crate) fn millis(duration: Duration) -> u64 {
    let nanos = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}
