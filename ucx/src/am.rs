//! Active messages: the small control protocol (catalogue exchange) rides on these.
//!
//! Receiving: a handler registered for an id copies the header and payload out of UCX into an
//! [`AmMessage`] and queues it in the worker's bounded inbox. Eager data is copied inside the
//! callback (UCX reclaims it on return). Rendezvous data (large payloads) is fetched with
//! `ucp_am_recv_data_nbx` started inside the callback, and queued when that completes. Each
//! message names the endpoint it can be answered on, when that is one of ours.
//!
//! Sending: `Endpoint::am_send` copies header and payload into a boxed pair owned by the
//! request until its callback runs, so the caller's buffers are free at once. This path
//! allocates per message; it is the control path, not the data path.
//!
//! The peer is untrusted: payloads above `am_payload_max_bytes` are refused, and a full inbox
//! drops (and counts) what arrives, so nothing a peer sends can grow memory without bound.

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::mem;
use std::ptr;
use std::slice;

use crossbeam_queue::ArrayQueue;
use ucx_sys as sys;

use crate::endpoint::EndpointId;
use crate::error::{Result, Status};
use crate::worker::WorkerInner;

/// A received active message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmMessage {
    /// The id it was sent with.
    pub id: u16,
    /// Our endpoint to the sender (its reply endpoint), if it is one this worker created.
    pub endpoint: Option<EndpointId>,
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
}

pub(crate) struct AmInbox {
    messages: ArrayQueue<AmMessage>,
    payload_max_bytes: usize,
    /// Messages dropped (inbox full or oversized); owner thread only.
    dropped: Cell<u64>,
    /// `am_send` requests not yet completed; owner thread only.
    sends_in_flight: Cell<usize>,
}

impl AmInbox {
    pub(crate) fn new(capacity: usize, payload_max_bytes: usize) -> AmInbox {
        AmInbox {
            messages: ArrayQueue::new(capacity.max(1)),
            payload_max_bytes,
            dropped: Cell::new(0),
            sends_in_flight: Cell::new(0),
        }
    }

    pub(crate) fn pop(&self) -> Option<AmMessage> {
        self.messages.pop()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub(crate) fn sends_in_flight(&self) -> usize {
        self.sends_in_flight.get()
    }

    fn deliver(&self, message: AmMessage) {
        if let Err(message) = self.messages.push(message) {
            self.count_drop(message.id, "inbox full");
        }
    }

    fn count_drop(&self, id: u16, reason: &'static str) {
        let dropped = self.dropped.get() + 1;
        self.dropped.set(dropped);
        // A peer can trigger this: log the first and then every power of two, not each one.
        if dropped.is_power_of_two() {
            tracing::warn!(id, dropped, reason, "dropping active message");
        }
    }
}

impl fmt::Debug for AmInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmInbox").field("queued", &self.messages.len()).field("dropped", &self.dropped.get()).finish()
    }
}

/// The argument UCX passes to the receive callback of one id.
pub(crate) struct AmHandlerSlot {
    id: u16,
    worker: *const WorkerInner,
}

pub(crate) fn set_handler(worker: &WorkerInner, id: u16) -> Result<()> {
    let slot = Box::new(AmHandlerSlot { id, worker: ptr::from_ref(worker) });
    // SAFETY: all-zero bytes are a valid ucp_am_handler_param_t; field_mask names the fields
    // we fill.
    let mut params: sys::ucp_am_handler_param_t = unsafe { mem::zeroed() };
    params.field_mask = (sys::UCP_AM_HANDLER_PARAM_FIELD_ID
        | sys::UCP_AM_HANDLER_PARAM_FIELD_CB
        | sys::UCP_AM_HANDLER_PARAM_FIELD_ARG) as u64;
    params.id = u32::from(id);
    params.cb = Some(on_am_received);
    params.arg = ptr::from_ref(&*slot).cast_mut().cast();
    // SAFETY: the worker is live; the slot is boxed and kept in the worker (below) until the
    // worker is destroyed, so the arg outlives every callback.
    let status = unsafe { sys::ucp_worker_set_am_recv_handler(worker.handle, &params) };
    Status(status).check("ucp_worker_set_am_recv_handler")?;
    worker.am_handlers.borrow_mut().push(slot);
    Ok(())
}

/// `ucp_am_recv_callback_t`: copy the message out (eager) or start fetching it (rendezvous).
unsafe extern "C" fn on_am_received(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: arg is the boxed AmHandlerSlot registered in set_handler; it and the worker it
    // points to live until ucp_worker_destroy returns, and this runs on the owning thread.
    let slot = unsafe { &*arg.cast::<AmHandlerSlot>() };
    // SAFETY: as above; only shared references to WorkerInner exist.
    let worker = unsafe { &*slot.worker };
    // SAFETY: UCX passes a valid param for the duration of the callback.
    let param = unsafe { &*param };

    let endpoint = if param.recv_attr & sys::UCP_AM_RECV_ATTR_FIELD_REPLY_EP as u64 != 0 {
        let endpoints = worker.endpoints.borrow();
        endpoints.get(&(param.reply_ep as usize)).copied()
    } else {
        None
    };
    let header = if header_length == 0 {
        Vec::new()
    } else {
        // SAFETY: UCX guarantees header_length readable bytes at header during the callback.
        unsafe { slice::from_raw_parts(header.cast::<u8>(), header_length) }.to_vec()
    };
    if length > worker.am.payload_max_bytes {
        worker.am.count_drop(slot.id, "payload over the limit");
        // For rendezvous this refuses the data: the sender's request completes with it.
        return sys::UCS_ERR_MESSAGE_TRUNCATED;
    }
    let mut message = AmMessage { id: slot.id, endpoint, header, payload: Vec::new() };
    if param.recv_attr & sys::UCP_AM_RECV_ATTR_FLAG_RNDV as u64 != 0 {
        // SAFETY: data is the rendezvous descriptor of this callback, `length` its size.
        return unsafe { receive_rendezvous(worker, data, length, message) };
    }
    if length > 0 {
        // SAFETY: eager data: `length` readable bytes at data until we return.
        message.payload = unsafe { slice::from_raw_parts(data.cast::<u8>(), length) }.to_vec();
    }
    worker.am.deliver(message);
    sys::UCS_OK
}

/// A rendezvous receive in progress: the message and the worker to deliver it to.
struct PendingReceive {
    worker: *const WorkerInner,
    message: AmMessage,
}

/// Starts `ucp_am_recv_data_nbx` into the message's payload.
///
/// # Safety
/// Called from `on_am_received` with its rendezvous descriptor `data` and `length`.
unsafe fn receive_rendezvous(
    worker: &WorkerInner,
    data: *mut c_void,
    length: usize,
    mut message: AmMessage,
) -> sys::ucs_status_t {
    message.payload = vec![0; length];
    let pending = Box::into_raw(Box::new(PendingReceive { worker: ptr::from_ref(worker), message }));
    // SAFETY: all-zero bytes are a valid ucp_request_param_t; op_attr_mask names the fields.
    let mut params: sys::ucp_request_param_t = unsafe { mem::zeroed() };
    params.op_attr_mask = sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA;
    params.cb.recv_am = Some(on_rendezvous_received);
    params.user_data = pending.cast();
    // SAFETY: `pending` is a live Box we own until the callback (or below) frees it; its
    // payload Vec has `length` writable bytes and is not touched until then.
    let buffer = unsafe { (*pending).message.payload.as_mut_ptr() };
    // SAFETY: worker and descriptor are live; buffer/length as above; params initialised.
    let request = unsafe { sys::ucp_am_recv_data_nbx(worker.handle, data, buffer.cast(), length, &params) };
    if sys::UCS_PTR_IS_PTR(request) {
        // Completes later in on_rendezvous_received, which takes ownership of `pending`.
        return sys::UCS_INPROGRESS;
    }
    // SAFETY: no request was created, so no callback will run: we own `pending` again.
    let pending = unsafe { Box::from_raw(pending) };
    let status = Status(sys::UCS_PTR_STATUS(request));
    if status.is_ok() {
        worker.am.deliver(pending.message);
    } else {
        tracing::warn!(id = pending.message.id, %status, "rendezvous receive failed");
    }
    // The receive was started (and finished): UCX owns the descriptor either way.
    sys::UCS_INPROGRESS
}

/// `ucp_am_recv_data_nbx_callback_t`: the rendezvous payload has landed (or failed).
unsafe extern "C" fn on_rendezvous_received(
    request: *mut c_void,
    status: sys::ucs_status_t,
    _length: usize,
    user_data: *mut c_void,
) {
    // SAFETY: user_data is the Box leaked in receive_rendezvous for this request; the
    // callback runs once, so we take it back exactly once.
    let pending = unsafe { Box::from_raw(user_data.cast::<PendingReceive>()) };
    // SAFETY: the request is complete and not referenced after this.
    unsafe { sys::ucp_request_free(request) };
    // SAFETY: the worker outlives its requests (they finish before ucp_worker_destroy returns).
    let worker = unsafe { &*pending.worker };
    let status = Status(status);
    if status.is_ok() {
        worker.am.deliver(pending.message);
    } else {
        tracing::warn!(id = pending.message.id, %status, "rendezvous receive failed");
    }
}

/// Header and payload of an outgoing message, owned by its request until completion.
struct OutgoingMessage {
    worker: *const WorkerInner,
    header: Vec<u8>,
    payload: Vec<u8>,
}

/// `ucp_am_send_nbx` with copies of `header` and `payload`, flagged so the receiver learns a
/// reply endpoint.
pub(crate) fn send(
    worker: &WorkerInner,
    endpoint: sys::ucp_ep_h,
    id: u16,
    header: &[u8],
    payload: &[u8],
) -> Result<()> {
    let message = Box::into_raw(Box::new(OutgoingMessage {
        worker: ptr::from_ref(worker),
        header: header.to_vec(),
        payload: payload.to_vec(),
    }));
    // SAFETY: all-zero bytes are a valid ucp_request_param_t; op_attr_mask names the fields.
    let mut params: sys::ucp_request_param_t = unsafe { mem::zeroed() };
    params.op_attr_mask =
        sys::UCP_OP_ATTR_FIELD_FLAGS | sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA;
    params.flags = sys::UCP_AM_SEND_FLAG_REPLY;
    params.cb.send = Some(on_am_sent);
    params.user_data = message.cast();
    // SAFETY: `message` is a live Box; its Vecs are not touched until it is freed.
    let (header_ptr, payload_ptr) = unsafe { ((*message).header.as_ptr(), (*message).payload.as_ptr()) };
    // SAFETY: endpoint and worker are live; the buffers stay allocated until the request
    // completes (on_am_sent frees them) or, for an in-place completion, until we free them
    // below after the call.
    let request = unsafe {
        sys::ucp_am_send_nbx(
            endpoint,
            u32::from(id),
            header_ptr.cast(),
            header.len(),
            payload_ptr.cast(),
            payload.len(),
            &params,
        )
    };
    if sys::UCS_PTR_IS_PTR(request) {
        let in_flight = &worker.am.sends_in_flight;
        in_flight.set(in_flight.get() + 1);
        return Ok(());
    }
    // SAFETY: no request exists, so no callback will run: the Box is ours again.
    drop(unsafe { Box::from_raw(message) });
    Status(sys::UCS_PTR_STATUS(request)).check("ucp_am_send_nbx")
}

/// `ucp_send_nbx_callback_t` for `send`: free the buffers and the request.
unsafe extern "C" fn on_am_sent(request: *mut c_void, status: sys::ucs_status_t, user_data: *mut c_void) {
    // SAFETY: user_data is the Box leaked in `send` for this request; taken back once.
    let message = unsafe { Box::from_raw(user_data.cast::<OutgoingMessage>()) };
    // SAFETY: the request is complete and not referenced after this.
    unsafe { sys::ucp_request_free(request) };
    // SAFETY: the worker outlives its requests (they finish before ucp_worker_destroy returns).
    let worker = unsafe { &*message.worker };
    let in_flight = &worker.am.sends_in_flight;
    in_flight.set(in_flight.get() - 1);
    let status = Status(status);
    if !status.is_ok() {
        // Rare: the endpoint failed or was closed; its error state tells the owner more.
        tracing::debug!(%status, "active message send did not complete");
    }
}
