//! Registered memory (`ucp_mem_h`) and remote keys (`ucp_rkey_h`).

use std::ffi::c_void;
use std::fmt;
use std::mem;
use std::ptr;
use std::rc::Rc;

use ucx_sys as sys;

use crate::context::{Context, ContextInner};
use crate::endpoint::{Endpoint, EndpointId};
use crate::error::{Error, Result, Status};
use crate::worker::WorkerInner;

/// Longest packed remote key accepted from a peer. UCX 1.13 packs a few dozen bytes per
/// memory domain; this leaves room for many domains and still rejects garbage.
pub const RKEY_MAX_BYTES: usize = 4096;

/// `ucp_ep_rkey_unpack` takes no length: it parses as far as the key's own fields say. A
/// peer's bytes are copied into a zeroed scratch this large, so a malformed key makes UCX read
/// zeros (and fail), never memory beyond our buffer. Bound: 8-byte md map, then per memory
/// domain (at most 64) a length byte and at most 255 bytes, plus per-key trailers.
const RKEY_PARSE_SCRATCH_BYTES: usize = 64 << 10;

/// Existing memory registered with UCX (`ucp_mem_map` of an address and length); deregistered
/// on drop. Pack its remote key with [`MemoryRegion::pack_rkey`] for a peer to read it.
pub struct MemoryRegion {
    handle: sys::ucp_mem_h,
    address: *mut u8,
    length: usize,
    context: Rc<ContextInner>,
}

impl MemoryRegion {
    /// Registers `length` bytes at `address` (`UCP_MEM_MAP_PARAM_FIELD_ADDRESS | LENGTH`).
    ///
    /// Register large memory in pieces of at most 1 GiB (very large registrations ran slower
    /// for other users).
    ///
    /// # Safety
    /// The memory must stay mapped (and, for a get destination, writable) for as long as the
    /// region lives and any peer may hold its remote key: UCX reads it on behalf of peers
    /// (software-emulated gets run inside this process's progress) and writes gets into it.
    pub unsafe fn register(context: &Context, address: *mut u8, length: usize) -> Result<MemoryRegion> {
        // SAFETY: all-zero bytes are a valid ucp_mem_map_params_t; field_mask names fields.
        let mut params: sys::ucp_mem_map_params_t = unsafe { mem::zeroed() };
        params.field_mask = (sys::UCP_MEM_MAP_PARAM_FIELD_ADDRESS | sys::UCP_MEM_MAP_PARAM_FIELD_LENGTH) as u64;
        params.address = address.cast();
        params.length = length;
        let mut handle: sys::ucp_mem_h = ptr::null_mut();
        // SAFETY: the context is live; the caller guarantees the memory (see # Safety).
        let status = unsafe { sys::ucp_mem_map(context.inner.handle, &params, &mut handle) };
        Status(status).check("ucp_mem_map")?;
        Ok(MemoryRegion { handle, address, length, context: Rc::clone(&context.inner) })
    }

    /// The registered address, as a peer names it in a get.
    pub fn address(&self) -> u64 {
        self.address as u64
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The packed remote key a peer unpacks to read this region.
    pub fn pack_rkey(&self) -> Result<Vec<u8>> {
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length: usize = 0;
        // SAFETY: context and memh are live; out-pointers are valid.
        let status = unsafe { sys::ucp_rkey_pack(self.context.handle, self.handle, &mut buffer, &mut length) };
        Status(status).check("ucp_rkey_pack")?;
        // SAFETY: UCX returned `length` readable bytes at `buffer`; copied, then released once.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), length) }.to_vec();
        // SAFETY: buffer came from ucp_rkey_pack.
        unsafe { sys::ucp_rkey_buffer_release(buffer) };
        Ok(bytes)
    }

    pub(crate) fn handle(&self) -> sys::ucp_mem_h {
        self.handle
    }

    /// Whether `pointer..pointer + length` lies inside the region.
    pub(crate) fn contains(&self, pointer: *const u8, length: usize) -> bool {
        let start = self.address as usize;
        let (first, end) = (pointer as usize, (pointer as usize).checked_add(length));
        first >= start && end.is_some_and(|end| end <= start + self.length)
    }
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion").field("address", &self.address).field("length", &self.length).finish()
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: memh came from ucp_mem_map on this context (kept alive by our Rc).
        let status = unsafe { sys::ucp_mem_unmap(self.context.handle, self.handle) };
        if status != sys::UCS_OK {
            tracing::warn!(status = %Status(status), "ucp_mem_unmap");
        }
    }
}

/// A peer's remote key unpacked on one endpoint; destroyed on drop. Valid only for gets on
/// that endpoint (checked by `get_nbx`).
pub struct RemoteKey {
    handle: sys::ucp_rkey_h,
    endpoint: EndpointId,
    _worker: Rc<WorkerInner>,
}

impl RemoteKey {
    /// Unpacks `bytes` (from the peer's `pack_rkey`) for gets on `endpoint`.
    pub fn unpack(endpoint: &Endpoint, bytes: &[u8]) -> Result<RemoteKey> {
        if bytes.is_empty() || bytes.len() > RKEY_MAX_BYTES {
            return Err(Error::RemoteKeyLength { length: bytes.len(), max: RKEY_MAX_BYTES });
        }
        let mut scratch = vec![0u8; RKEY_PARSE_SCRATCH_BYTES];
        scratch[..bytes.len()].copy_from_slice(bytes);
        let mut handle: sys::ucp_rkey_h = ptr::null_mut();
        // SAFETY: the endpoint is live; the key is read from `scratch`, which is large enough
        // for any parse (see RKEY_PARSE_SCRATCH_BYTES) and outlives the call (UCX copies).
        let status = unsafe { sys::ucp_ep_rkey_unpack(endpoint.handle(), scratch.as_ptr().cast(), &mut handle) };
        Status(status).check("ucp_ep_rkey_unpack")?;
        Ok(RemoteKey { handle, endpoint: endpoint.id(), _worker: Rc::clone(endpoint.worker()) })
    }

    pub(crate) fn handle(&self) -> sys::ucp_rkey_h {
        self.handle
    }

    pub(crate) fn endpoint(&self) -> EndpointId {
        self.endpoint
    }
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKey").field("handle", &self.handle).finish()
    }
}

impl Drop for RemoteKey {
    fn drop(&mut self) {
        // SAFETY: the handle came from ucp_ep_rkey_unpack and is destroyed once; the worker
        // whose rkey configuration it refers to is kept alive by our Rc. Destroying after the
        // endpoint closed is fine: the key does not refer to the endpoint itself.
        unsafe { sys::ucp_rkey_destroy(self.handle) };
    }
}
