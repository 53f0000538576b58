//! A listener for incoming connections on a socket address (`ucp_listener_h`).
//!
//! UCX calls the connection handler from progress; it only queues the request (bounded).
//! The owner drains the queue with [`Listener::next_request`] and turns each request into an
//! endpoint with [`Endpoint::accept`](crate::Endpoint::accept), or drops it to reject it.

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::mem;
use std::net::SocketAddr;
use std::ptr;
use std::rc::Rc;

use crossbeam_queue::ArrayQueue;
use ucx_sys as sys;

use crate::error::{Result, Status};
use crate::sockaddr::{self, CSocketAddr};
use crate::worker::{Worker, WorkerInner};

/// Connection requests held until the owner takes them; more are rejected (a peer can flood).
const PENDING_REQUESTS_MAX: usize = 64;

/// A listening socket address; rejects pending requests and stops listening on drop.
pub struct Listener {
    inner: Rc<ListenerInner>,
}

struct ListenerInner {
    /// Set once right after ucp_listener_create, before any callback can run.
    handle: Cell<sys::ucp_listener_h>,
    /// Requests received and not yet taken; written by the callback, read by the owner.
    pending: ArrayQueue<sys::ucp_conn_request_h>,
    rejected: Cell<u64>,
    worker: Rc<WorkerInner>,
}

impl Listener {
    /// Listens on `address`; port 0 picks a free port (see [`Listener::local_addr`]).
    pub fn bind(worker: &Worker, address: SocketAddr) -> Result<Listener> {
        // Boxed in an Rc before UCX sees it, so the callback argument never moves.
        let inner = Rc::new(ListenerInner {
            handle: Cell::new(ptr::null_mut()),
            pending: ArrayQueue::new(PENDING_REQUESTS_MAX),
            rejected: Cell::new(0),
            worker: Rc::clone(&worker.inner),
        });
        let c_address = CSocketAddr::new(address);
        // SAFETY: all-zero bytes are a valid ucp_listener_params_t; field_mask names the
        // fields we fill.
        let mut params: sys::ucp_listener_params_t = unsafe { mem::zeroed() };
        params.field_mask =
            (sys::UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | sys::UCP_LISTENER_PARAM_FIELD_CONN_HANDLER) as u64;
        params.sockaddr = c_address.as_ucs();
        params.conn_handler.cb = Some(on_connection_request);
        params.conn_handler.arg = Rc::as_ptr(&inner).cast_mut().cast();
        let mut handle: sys::ucp_listener_h = ptr::null_mut();
        // SAFETY: worker is live; the sockaddr points into c_address, alive for the call;
        // the callback arg is the Rc'd inner, which outlives the listener (destroyed in its
        // Drop, before the allocation is freed).
        let status = unsafe { sys::ucp_listener_create(worker.inner.handle, &params, &mut handle) };
        Status(status).check("ucp_listener_create")?;
        inner.handle.set(handle);
        Ok(Listener { inner })
    }

    /// The address actually bound (the chosen port when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        // SAFETY: all-zero bytes are a valid ucp_listener_attr_t; field_mask names the field.
        let mut attr: sys::ucp_listener_attr_t = unsafe { mem::zeroed() };
        attr.field_mask = sys::UCP_LISTENER_ATTR_FIELD_SOCKADDR as u64;
        // SAFETY: the listener is live; attr is writable.
        let status = unsafe { sys::ucp_listener_query(self.inner.handle.get(), &mut attr) };
        Status(status).check("ucp_listener_query")?;
        sockaddr::from_storage(&attr.sockaddr)
    }

    /// The next pending connection request, if any (they arrive during worker progress).
    pub fn next_request(&self) -> Option<ConnRequest> {
        let handle = self.inner.pending.pop()?;
        Some(ConnRequest { handle, listener: Rc::clone(&self.inner) })
    }

    /// Requests rejected because the pending queue was full.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.get()
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("handle", &self.inner.handle.get())
            .field("pending", &self.inner.pending.len())
            .finish()
    }
}

impl ListenerInner {
    fn reject(&self, request: sys::ucp_conn_request_h) {
        // SAFETY: the listener is live (self exists) and the request came from it and was
        // neither accepted nor rejected before (each is taken from the queue once).
        let status = unsafe { sys::ucp_listener_reject(self.handle.get(), request) };
        if status != sys::UCS_OK {
            tracing::debug!(status = %Status(status), "ucp_listener_reject");
        }
    }
}

impl Drop for ListenerInner {
    fn drop(&mut self) {
        // Null when ucp_listener_create failed: there is nothing to destroy (and no request).
        if self.handle.get().is_null() {
            return;
        }
        while let Some(request) = self.pending.pop() {
            self.reject(request);
        }
        // SAFETY: handle came from ucp_listener_create; no ConnRequest refers to it any more
        // (each holds an Rc to self). After this no connection callback runs.
        unsafe { sys::ucp_listener_destroy(self.handle.get()) };
    }
}

/// `ucp_listener_conn_callback_t`: queue the request for the owner.
unsafe extern "C" fn on_connection_request(request: sys::ucp_conn_request_h, arg: *mut c_void) {
    // SAFETY: arg is the ListenerInner registered in bind; it lives until the listener is
    // destroyed, after which no callback runs. Owning thread, shared references only.
    let listener = unsafe { &*arg.cast::<ListenerInner>() };
    if let Err(request) = listener.pending.push(request) {
        let rejected = listener.rejected.get() + 1;
        listener.rejected.set(rejected);
        if rejected.is_power_of_two() {
            tracing::warn!(rejected, "connection request queue full, rejecting");
        }
        listener.reject(request);
    }
}

/// A connection request waiting to be accepted; rejected if dropped.
pub struct ConnRequest {
    handle: sys::ucp_conn_request_h,
    listener: Rc<ListenerInner>,
}

impl ConnRequest {
    /// The address the request came from.
    pub fn remote_addr(&self) -> Result<SocketAddr> {
        // SAFETY: all-zero bytes are a valid ucp_conn_request_attr_t; field_mask names it.
        let mut attr: sys::ucp_conn_request_attr_t = unsafe { mem::zeroed() };
        attr.field_mask = sys::UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR as u64;
        // SAFETY: the request is live (not yet accepted or rejected).
        let status = unsafe { sys::ucp_conn_request_query(self.handle, &mut attr) };
        Status(status).check("ucp_conn_request_query")?;
        sockaddr::from_storage(&attr.client_address)
    }

    /// Hands the raw request to `Endpoint::accept`, which consumes it.
    pub(crate) fn take(self) -> (sys::ucp_conn_request_h, *const WorkerInner) {
        let this = mem::ManuallyDrop::new(self);
        let worker = Rc::as_ptr(&this.listener.worker);
        // SAFETY: `this` is never used again and its Drop (the reject) does not run; the Rc
        // is moved out exactly once and dropped, so the listener is not leaked.
        drop(unsafe { ptr::read(&this.listener) });
        (this.handle, worker)
    }
}

impl fmt::Debug for ConnRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnRequest").field("handle", &self.handle).finish()
    }
}

impl Drop for ConnRequest {
    fn drop(&mut self) {
        self.listener.reject(self.handle);
    }
}
