//! Buffers in the region's buffer area: an offset allocator (the
//! `offset-allocator` crate, O(1) allocate/free) over 64-byte units, and
//! [`Buffer`] handles that free themselves on drop.

use crate::{ClientError, RegionMemory, Shared};
use offset_allocator::{Allocation, Allocator};
use std::sync::Arc;

/// Allocation granularity: one cache line, so buffers never share a line.
const UNIT_BYTES: u64 = 64;

/// Most buffers allocated at once. The allocator's node table is sized (and
/// initialised, at attach) by this: its default of 128 Ki nodes cost ~3 ms
/// per attach, most of an `rdma-cat` run.
const MAX_BUFFERS: u32 = 16 * 1024;

pub(crate) struct BufferAllocator {
    allocator: Allocator,
}

impl std::fmt::Debug for BufferAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BufferAllocator")
    }
}

impl BufferAllocator {
    pub(crate) fn new(buffer_size_bytes: u64) -> BufferAllocator {
        let units = (buffer_size_bytes / UNIT_BYTES).min(u32::MAX as u64 - 1) as u32;
        BufferAllocator { allocator: Allocator::with_max_allocs(units, MAX_BUFFERS.min(units.max(1))) }
    }

    pub(crate) fn allocate(shared: &Arc<Shared>, length_bytes: u32) -> Result<Buffer, ClientError> {
        let units = (length_bytes.max(1) as u64).div_ceil(UNIT_BYTES) as u32;
        let memory = &shared.memory;
        let mut allocator = memory.allocator.lock().map_err(|_| ClientError::Poisoned)?;
        let allocation = allocator.allocator.allocate(units).ok_or(ClientError::OutOfBufferSpace { length_bytes })?;
        Ok(Buffer { offset: allocation.offset as u64 * UNIT_BYTES, length_bytes, allocation, memory: memory.clone() })
    }
}

/// A range of the buffer area: `length()` bytes at `offset()` from its start.
/// Freed when dropped.
pub struct Buffer {
    offset: u64,
    length_bytes: u32,
    allocation: Allocation,
    memory: Arc<RegionMemory>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("offset", &self.offset).field("length_bytes", &self.length_bytes).finish()
    }
}

impl Buffer {
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn length(&self) -> u32 {
        self.length_bytes
    }

    /// The buffer's bytes. A buffer the caller holds is never being written: one handed to a
    /// read comes back only with its completion.
    pub fn bytes(&self) -> &[u8] {
        self.memory.bytes(self.offset, u64::from(self.length_bytes))
    }

    pub(crate) fn belongs_to(&self, shared: &Shared) -> bool {
        Arc::ptr_eq(&self.memory, &shared.memory)
    }

    /// Keeps this buffer's range out of the allocator for the rest of the region's life: the
    /// engine (or a late RDMA GET) may still write into it, and nothing will tell us when it
    /// is done. The range comes back only with the region (which may outlive the engine:
    /// [`crate::Client::reattach`]).
    pub(crate) fn quarantine(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped nor used again; moving the Arc out of it (and
        // dropping that) releases our reference without running Buffer::drop, so the
        // allocation stays marked used.
        drop(unsafe { std::ptr::read(&this.memory) });
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Ok(mut allocator) = self.memory.allocator.lock() {
            allocator.allocator.free(self.allocation);
        }
    }
}
