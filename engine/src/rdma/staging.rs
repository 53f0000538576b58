//! Heap bytes that gets land in behind Rust's back: the index staging buffers and the per-slot
//! scratch of range reads. Only raw pointers are handed out while a get may be in flight; a
//! slice is made only by the owner once the gets into that part have completed.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;

pub(crate) struct RawBuffer {
    base: NonNull<u8>,
    length: usize,
}

impl RawBuffer {
    /// `length` zeroed bytes, 64-byte aligned (at least one byte is allocated).
    pub(crate) fn new(length: usize) -> RawBuffer {
        let layout = Self::layout(length);
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(base) else { alloc::handle_alloc_error(layout) };
        RawBuffer { base, length }
    }

    fn layout(length: usize) -> Layout {
        // 64 is a power of two and the size is at most isize::MAX for any buffer we ask for.
        Layout::from_size_align(length.max(1), 64).unwrap_or(Layout::new::<u8>())
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.length
    }

    /// Pointer to byte `offset` (`offset <= len`).
    pub(crate) fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.length, "offset {offset} past a {}-byte buffer", self.length);
        // SAFETY: offset is inside the allocation or one past its end (asserted).
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// The bytes `offset..offset + length`.
    ///
    /// # Safety
    /// No get may be in flight into this range (every get into it has completed).
    pub(crate) unsafe fn slice(&self, offset: usize, length: usize) -> &[u8] {
        assert!(offset.checked_add(length).is_some_and(|end| end <= self.length), "slice outside the buffer");
        // SAFETY: in bounds (asserted); nothing writes the range while the slice lives (caller).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), length) }
    }
}

impl fmt::Debug for RawBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBuffer").field("length", &self.length).finish()
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; owners drop it only after their memory
        // registration and every get into it are gone.
        unsafe { alloc::dealloc(self.base.as_ptr(), Self::layout(self.length)) };
    }
}
