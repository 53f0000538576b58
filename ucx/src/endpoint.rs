//! Endpoints: connect and accept, failure tracking, close, and the get / send operations.

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::mem;
use std::net::SocketAddr;
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx_sys as sys;

use crate::completion::get_completed;
use crate::error::{Error, Result, Status};
use crate::listener::ConnRequest;
use crate::memory::{MemoryRegion, RemoteKey};
use crate::sockaddr::CSocketAddr;
use crate::worker::{millis, Worker, WorkerInner};

/// How long `Drop` lets an endpoint flush and close before giving up on it.
pub const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker-unique endpoint number (never reused), carried by received active messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u64);

/// What UCX does when the peer fails (`ucp_err_handling_mode_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorMode {
    /// No peer failure handling: the fastest lanes, but a dead peer may hang operations.
    None,
    /// Peer failure is detected, in-flight operations complete with errors and the error
    /// callback marks the endpoint failed. With shared memory this needs
    /// `UCX_MM_ERROR_HANDLING=y`, or UCX silently drops the sm lanes and uses tcp.
    Peer,
}

/// How `close` ends an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Flush outstanding operations and tell the peer (the default).
    Flush,
    /// Drop everything at once; in-flight operations complete with `UCS_ERR_CANCELED` and
    /// the peer sees a reset.
    Force,
}

/// How a get began: done already (its status is final and no completion will be queued), or
/// in flight (its completion arrives through `Worker::pop_completion` with the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetStarted {
    Completed,
    InFlight,
}

/// A UCP endpoint (`ucp_ep_h`), closed (with a bound) on drop if not closed before.
pub struct Endpoint {
    handle: sys::ucp_ep_h,
    /// The error callback's argument; boxed so its address is fixed. Leaked if a close times
    /// out, because UCX may then still call the error callback with it.
    state: Box<EndpointState>,
    worker: Rc<WorkerInner>,
    closed: bool,
}

struct EndpointState {
    id: EndpointId,
    /// Set by the error callback; owner thread only.
    failure: Cell<Option<Status>>,
}

impl Endpoint {
    /// Connects to a listener at `address` (client side of a client-server connection).
    pub fn connect(worker: &Worker, address: SocketAddr, mode: ErrorMode) -> Result<Endpoint> {
        let c_address = CSocketAddr::new(address);
        Endpoint::create(worker, mode, |params| {
            params.field_mask |= (sys::UCP_EP_PARAM_FIELD_FLAGS | sys::UCP_EP_PARAM_FIELD_SOCK_ADDR) as u64;
            params.flags = sys::UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
            params.sockaddr = c_address.as_ucs();
        })
    }

    /// Accepts a connection request taken from a [`Listener`](crate::Listener) of `worker`.
    pub fn accept(worker: &Worker, request: ConnRequest, mode: ErrorMode) -> Result<Endpoint> {
        let (request, owner) = request.take();
        if !ptr::eq(owner, Rc::as_ptr(&worker.inner)) {
            // Its listener belongs to another worker; `take` consumed it without rejecting, so
            // the peer times out. Reported as a programming error.
            return Err(Error::ForeignConnRequest);
        }
        Endpoint::create(worker, mode, |params| {
            params.field_mask |= sys::UCP_EP_PARAM_FIELD_CONN_REQUEST as u64;
            params.conn_request = request;
        })
    }

    fn create(worker: &Worker, mode: ErrorMode, fill: impl FnOnce(&mut sys::ucp_ep_params_t)) -> Result<Endpoint> {
        let state = Box::new(EndpointState { id: worker.inner.allocate_endpoint_id(), failure: Cell::new(None) });
        // SAFETY: all-zero bytes are a valid ucp_ep_params_t; field_mask names the fields.
        let mut params: sys::ucp_ep_params_t = unsafe { mem::zeroed() };
        params.field_mask = (sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | sys::UCP_EP_PARAM_FIELD_ERR_HANDLER) as u64;
        params.err_mode = match mode {
            ErrorMode::None => sys::UCP_ERR_HANDLING_MODE_NONE,
            ErrorMode::Peer => sys::UCP_ERR_HANDLING_MODE_PEER,
        };
        params.err_handler.cb = Some(on_endpoint_error);
        params.err_handler.arg = ptr::from_ref(&*state).cast_mut().cast();
        fill(&mut params);
        let mut handle: sys::ucp_ep_h = ptr::null_mut();
        // SAFETY: the worker is live; params is initialised and anything it points to (socket
        // address) lives in the caller's frame across this call; the error handler's arg is
        // boxed and outlives the endpoint (see `state`).
        let status = unsafe { sys::ucp_ep_create(worker.inner.handle, &params, &mut handle) };
        Status(status).check("ucp_ep_create")?;
        worker.inner.endpoints.borrow_mut().insert(handle as usize, state.id);
        Ok(Endpoint { handle, state, worker: Rc::clone(&worker.inner), closed: false })
    }

    pub fn id(&self) -> EndpointId {
        self.state.id
    }

    /// The status the error callback reported, once the endpoint has failed.
    pub fn failure(&self) -> Option<Status> {
        self.state.failure.get()
    }

    pub fn is_failed(&self) -> bool {
        self.failure().is_some()
    }

    /// Posts a get of `length` bytes from `remote_address` (covered by `rkey`) into
    /// `destination`. `local`, when given, is the registered region holding the destination
    /// (saves UCX a registration lookup). `token` comes back in the completion.
    ///
    /// Returns `GetStarted::Completed` when UCX finished in place (no completion is queued),
    /// or `GetStarted::InFlight` when `(token, status)` will arrive via
    /// [`Worker::pop_completion`]. Refuses with `InFlightLimit` at the worker's bound.
    ///
    /// # Safety
    /// `destination..destination + length` must be valid for writes and must not be read or
    /// written by anything else until the get has completed: its completion has been popped,
    /// or the endpoint has been closed (close completes in-flight gets). A get can land late;
    /// freeing or reusing the buffer earlier lets remote data overwrite whatever is there.
    pub unsafe fn get_nbx(
        &self,
        destination: *mut u8,
        length: usize,
        remote_address: u64,
        rkey: &RemoteKey,
        local: Option<&MemoryRegion>,
        token: u64,
    ) -> Result<GetStarted> {
        if let Some(status) = self.failure() {
            return Err(Error::EndpointFailed(status));
        }
        if rkey.endpoint() != self.id() {
            return Err(Error::ForeignRemoteKey);
        }
        let completions = &self.worker.completions;
        completions.check_room()?;
        // SAFETY: all-zero bytes are a valid ucp_request_param_t; op_attr_mask names fields.
        let mut params: sys::ucp_request_param_t = unsafe { mem::zeroed() };
        params.op_attr_mask = sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA;
        params.cb.send = Some(get_completed);
        params.user_data = completions.as_user_data();
        if let Some(region) = local {
            if !region.contains(destination, length) {
                return Err(Error::OutsideLocalRegion);
            }
            params.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_MEMH;
            params.memh = region.handle();
        }
        // SAFETY: endpoint and rkey are live (rkey unpacked on this endpoint); the caller
        // guarantees the destination; the callback's user_data is the worker's queue, which
        // outlives the request.
        let request = unsafe {
            sys::ucp_get_nbx(self.handle, destination.cast(), length, remote_address, rkey.handle(), &params)
        };
        if sys::UCS_PTR_IS_PTR(request) {
            // SAFETY: a fresh request from this crate's context; its callback can only run
            // from progress, which is not called before this.
            unsafe { completions.track(request, token) };
            return Ok(GetStarted::InFlight);
        }
        Status(sys::UCS_PTR_STATUS(request)).check("ucp_get_nbx")?;
        Ok(GetStarted::Completed)
    }

    /// Sends an active message with `id`, flagged so the receiver can reply on its endpoint.
    /// Header and payload are copied and held until the send completes; keep headers small
    /// (UCX limits them to the worker's max AM header, about 1 KiB by default).
    pub fn am_send(&self, id: u16, header: &[u8], payload: &[u8]) -> Result<()> {
        if let Some(status) = self.failure() {
            return Err(Error::EndpointFailed(status));
        }
        crate::am::send(&self.worker, self.handle, id, header, payload)
    }

    /// Closes with [`CloseMode::Flush`] (forced if the endpoint has failed), driving the worker
    /// until done for at most [`DROP_CLOSE_TIMEOUT`].
    pub fn close(self) -> Result<()> {
        self.close_with(CloseMode::Flush, DROP_CLOSE_TIMEOUT)
    }

    /// Closes with `mode`, progressing the worker for at most `timeout`. In-flight gets are
    /// flushed (Flush) or cancelled (Force); either way their completions are queued. The
    /// endpoint is released whatever the result.
    pub fn close_with(mut self, mode: CloseMode, timeout: Duration) -> Result<()> {
        self.close_inner(mode, timeout)
    }

    /// Starts closing the endpoint without waiting: the returned [`ClosingEndpoint`] finishes
    /// as the worker progresses (a forced close completes the endpoint's in-flight operations
    /// with errors then). For owners that must not block, such as a poll loop.
    pub fn start_close(mut self, mode: CloseMode) -> ClosingEndpoint {
        let request = self.begin_close(mode);
        ClosingEndpoint { request, state: Some(self.take_state()), _worker: Rc::clone(&self.worker) }
    }

    /// `ucp_ep_close_nbx` (once: the endpoint is marked closed), forced when asked or failed.
    fn begin_close(&mut self, mode: CloseMode) -> sys::ucs_status_ptr_t {
        self.closed = true;
        self.worker.endpoints.borrow_mut().remove(&(self.handle as usize));
        let force = mode == CloseMode::Force || self.is_failed();
        // SAFETY: all-zero bytes are a valid ucp_request_param_t; op_attr_mask names fields.
        let mut params: sys::ucp_request_param_t = unsafe { mem::zeroed() };
        params.op_attr_mask = sys::UCP_OP_ATTR_FIELD_FLAGS;
        params.flags = if force { sys::UCP_EP_CLOSE_FLAG_FORCE } else { 0 };
        // SAFETY: the endpoint is live and closed exactly once (`closed` guards it).
        unsafe { sys::ucp_ep_close_nbx(self.handle, &params) }
    }

    /// The error callback's argument, for a close that may outlive this value (a fresh one is
    /// left in its place for the drop).
    fn take_state(&mut self) -> Box<EndpointState> {
        let id = self.state.id;
        mem::replace(&mut self.state, Box::new(EndpointState { id, failure: Cell::new(None) }))
    }

    fn close_inner(&mut self, mode: CloseMode, timeout: Duration) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let request = self.begin_close(mode);
        match wait_request(&self.worker, request, timeout) {
            Some(status) if status.is_ok() => Ok(()),
            Some(status) => Err(Error::Ucx { call: "ucp_ep_close_nbx", status }),
            None => {
                // UCX still owns the endpoint and may call the error callback later: keep its
                // argument alive forever (a few bytes, on a path that is already broken).
                Box::leak(self.take_state());
                tracing::warn!(endpoint = self.state.id.0, "endpoint close timed out");
                Err(Error::Timeout { what: "ucp_ep_close_nbx", timeout_ms: millis(timeout) })
            }
        }
    }

    pub(crate) fn handle(&self) -> sys::ucp_ep_h {
        self.handle
    }

    pub(crate) fn worker(&self) -> &Rc<WorkerInner> {
        &self.worker
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.state.id)
            .field("failure", &self.failure())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Err(error) = self.close_inner(CloseMode::Flush, DROP_CLOSE_TIMEOUT) {
            tracing::debug!(endpoint = self.state.id.0, %error, "closing endpoint on drop");
        }
    }
}

/// `ucp_err_handler_cb_t`: remember the failure; the owner fails its in-flight work and closes.
unsafe extern "C" fn on_endpoint_error(arg: *mut c_void, _endpoint: sys::ucp_ep_h, status: sys::ucs_status_t) {
    // SAFETY: arg is the boxed EndpointState given at creation; it lives until the close
    // completes (after which UCX calls no more) or forever if the close timed out.
    let state = unsafe { &*arg.cast::<EndpointState>() };
    let status = Status(status);
    state.failure.set(Some(status));
    tracing::warn!(endpoint = state.id.0, %status, "UCX endpoint failed");
}

/// An endpoint being closed ([`Endpoint::start_close`]). Dropped before it finished, its
/// request is released to complete on its own and the error callback's argument is leaked (UCX
/// may still call it): a few bytes, on a path that is already broken.
pub struct ClosingEndpoint {
    request: sys::ucs_status_ptr_t,
    state: Option<Box<EndpointState>>,
    /// Keeps the worker alive while the request is.
    _worker: Rc<WorkerInner>,
}

impl ClosingEndpoint {
    /// `Some` once the close finished (after worker progress), with its outcome.
    pub fn poll(&mut self) -> Option<Result<()>> {
        if self.request.is_null() {
            return Some(Ok(()));
        }
        let status = if sys::UCS_PTR_IS_PTR(self.request) {
            // SAFETY: a live request (freed only below, then set to null).
            let status = Status(unsafe { sys::ucp_request_check_status(self.request) });
            if status == Status::IN_PROGRESS {
                return None;
            }
            // SAFETY: freed once; the request is complete.
            unsafe { sys::ucp_request_free(self.request) };
            status
        } else {
            Status(sys::UCS_PTR_STATUS(self.request))
        };
        self.request = std::ptr::null_mut();
        self.state = None;
        Some(if status.is_ok() { Ok(()) } else { Err(Error::Ucx { call: "ucp_ep_close_nbx", status }) })
    }
}

impl Drop for ClosingEndpoint {
    fn drop(&mut self) {
        if self.poll().is_none() {
            // SAFETY: freed once; UCX releases an unfinished request when it completes.
            unsafe { sys::ucp_request_free(self.request) };
            if let Some(state) = self.state.take() {
                Box::leak(state);
            }
        }
    }
}

impl std::fmt::Debug for ClosingEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosingEndpoint").field("done", &self.request.is_null()).finish()
    }
}

/// Waits for a request from an `_nbx` call without a callback, progressing the worker, for at
/// most `timeout`. `None` on timeout (the request is then released to complete on its own).
fn wait_request(worker: &WorkerInner, request: sys::ucs_status_ptr_t, timeout: Duration) -> Option<Status> {
    if !sys::UCS_PTR_IS_PTR(request) {
        return Some(Status(sys::UCS_PTR_STATUS(request)));
    }
    let start = Instant::now();
    loop {
        // SAFETY: request is a live request (not yet freed).
        let status = Status(unsafe { sys::ucp_request_check_status(request) });
        if status != Status::IN_PROGRESS || start.elapsed() >= timeout {
            // SAFETY: freed once; UCX releases an unfinished request when it completes.
            unsafe { sys::ucp_request_free(request) };
            return (status != Status::IN_PROGRESS).then_some(status);
        }
        worker.progress();
    }
}
