//! The fixed-capacity queue through which gets report completion, without allocating.
//!
//! A get posted with `Endpoint::get_nbx` carries a caller-chosen `u64` token. UCX gives every
//! request `size_of::<RequestArea>()` bytes of user space (set at `ucp_init` through
//! `request_size`); the token is written there right after `ucp_get_nbx` returns a request, and
//! the completion callback reads it back and pushes `(token, status)` into the worker's queue.
//!
//! Writing the token after the call returns is sound because the worker runs in
//! `UCS_THREAD_MODE_SINGLE`: UCX invokes send callbacks only from `ucp_worker_progress` (or
//! from endpoint close and worker destroy), all on the owning thread, never from inside
//! `ucp_get_nbx` itself (an in-place completion returns NULL instead of calling back).
//!
//! Bound: `in_flight` counts gets posted and not yet popped by the owner. Posting refuses when
//! `in_flight == capacity`, and every queued completion belongs to a counted get, so
//! `queue.len() <= in_flight <= capacity` always holds and a push can never find the queue full.

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::ptr;

use crossbeam_queue::ArrayQueue;
use ucx_sys as sys;

use crate::error::{Error, Result, Status};

/// One finished get: the token it was posted with and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub token: u64,
    pub status: Status,
}

/// Our bytes inside each UCX request (`ucp_params_t::request_size`).
#[repr(C)]
pub(crate) struct RequestArea {
    token: u64,
}

pub(crate) struct CompletionQueue {
    /// Completions not yet popped; written by the callback, read by the owner.
    queue: ArrayQueue<Completion>,
    /// Gets posted whose completion has not been popped; 0..=queue.capacity(), owner only.
    in_flight: Cell<usize>,
}

impl CompletionQueue {
    pub(crate) fn new(capacity: usize) -> CompletionQueue {
        CompletionQueue { queue: ArrayQueue::new(capacity.max(1)), in_flight: Cell::new(0) }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Fails when one more get could overflow the queue.
    pub(crate) fn check_room(&self) -> Result<()> {
        if self.in_flight.get() >= self.capacity() {
            return Err(Error::InFlightLimit { limit: self.capacity() });
        }
        Ok(())
    }

    /// Records a get that UCX accepted as a request: stores the token in the request's user
    /// area and counts it.
    ///
    /// # Safety
    /// `request` must be a request pointer just returned by an `_nbx` call on a context created
    /// by this crate (so it has a `RequestArea`), whose callback has not run yet.
    pub(crate) unsafe fn track(&self, request: sys::ucs_status_ptr_t, token: u64) {
        // SAFETY: per the contract the pointer addresses request_size == size_of::<RequestArea>
        // bytes of user space; UCX does not promise 8-byte alignment, so write unaligned.
        unsafe { ptr::write_unaligned(request.cast::<RequestArea>(), RequestArea { token }) };
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub(crate) fn pop(&self) -> Option<Completion> {
        let completion = self.queue.pop()?;
        self.in_flight.set(self.in_flight.get() - 1);
        Some(completion)
    }

    /// The `user_data` handed to UCX for gets: a pointer to this queue.
    pub(crate) fn as_user_data(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .field("ready", &self.queue.len())
            .finish()
    }
}

/// `ucp_send_nbx_callback_t` for gets: record `(token, status)` and free the request.
pub(crate) unsafe extern "C" fn get_completed(request: *mut c_void, status: sys::ucs_status_t, user_data: *mut c_void) {
    // SAFETY: user_data is the CompletionQueue inside the worker that posted the get
    // (as_user_data). The worker outlives its requests: they complete at the latest while
    // ucp_worker_destroy runs in the worker's Drop, before the queue is freed. Only shared
    // references exist to the queue, and we are on the owning thread (single-thread mode).
    let queue = unsafe { &*user_data.cast::<CompletionQueue>() };
    // SAFETY: request was tracked (track wrote its RequestArea) before any progress call.
    let RequestArea { token } = unsafe { ptr::read_unaligned(request.cast::<RequestArea>()) };
    // SAFETY: the request is complete and nothing refers to it after this callback.
    unsafe { sys::ucp_request_free(request) };
    let completion = Completion { token, status: Status(status) };
    if queue.queue.push(completion).is_err() {
        // Impossible by the bound in the module comment; losing a completion would leave the
        // owner waiting forever, so say so loudly rather than silently.
        tracing::error!(token, "completion queue overflow: in-flight accounting is broken");
    }
}
