//! The engine's one allocator setting: large allocations always in mappings of their own.
//!
//! glibc serves an allocation above `M_MMAP_THRESHOLD` with `mmap`, but raises that threshold
//! to the size of any mapped block that is freed (up to 32 MiB); blocks of that size then come
//! from the heap, where one freed, or moved by `realloc`, leaves a hole the process keeps.
//! The needle indexes are arrays of megabytes that grow with their volumes and are replaced
//! when a volume is compacted: with the threshold fixed at 1 MiB they stay in mappings, which
//! `realloc` grows in place (`mremap`) and `free` returns to the kernel. Measured with
//! `rdma-bench index` (`docs/benchmarks.md`, "The needle index").

/// Allocations from this size on get a mapping of their own.
pub const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Returns the heap's free pages to the kernel (`malloc_trim`): after loading volume indexes,
/// whose replays free what they built on the way (`rdma-bench index` shows the difference).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it takes the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes glibc's mmap threshold (which also stops its adjustment). Call once, at start.
pub fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes only the allocator's parameters; it takes the allocator's lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
