//! A queue pair's control block (the ring indices and wake-up flags) and its
//! stats block.
//!
//! | field      | range                          | written by | read by          |
//! |------------|--------------------------------|------------|------------------|
//! | `sq_tail`  | free-running u32               | client     | engine           |
//! | `sq_head`  | free-running u32, <= `sq_tail` | engine     | client           |
//! | `sq_flags` | [`sq_flags`] bits              | engine     | client           |
//! | `cq_tail`  | free-running u32               | engine     | client           |
//! | `cq_head`  | free-running u32, <= `cq_tail` | client     | engine           |
//! | `cq_flags` | [`cq_flags`] bits              | client     | engine           |
//!
//! Each word sits on its own 128-byte block, so one side's stores never
//! invalidate a line the other side writes, and the rarely written flags
//! never share a line with a busy index. The orderings are argued
//! in [`crate::ring`].

use core::sync::atomic::{AtomicU32, AtomicU64};
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// Bits of `sq_flags`.
pub mod sq_flags {
    /// The engine is (about to be) asleep on the SQ tail futex: a submitter
    /// must wake it after publishing.
    pub const NEED_WAKEUP: u32 = 1;
}

/// Bits of `cq_flags`.
pub mod cq_flags {
    /// The client is (about to be) asleep on the CQ tail futex: the engine
    /// must wake it after posting completions.
    pub const NEED_WAKEUP: u32 = 1;
}

/// The index and flag blocks of a queue pair, 768 bytes, at the start of
/// each queue pair. Entries follow: `sq_entries` SQEs, then `2 * sq_entries`
/// CQEs.
///
/// Six 128-byte blocks, each written by one side only. The flags have blocks
/// of their own, away from the indices: they are read on every submission
/// (`sq_flags`, by the client) and every completion batch (`cq_flags`, by the
/// engine) but written only when a side goes to sleep, so those reads hit a
/// clean shared line instead of the line the other side just dirtied.
#[repr(C, align(128))]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout)]
pub struct QueueControl {
    pub sq_tail: AtomicU32,
    pub _pad0: [AtomicU32; 31],
    pub sq_head: AtomicU32,
    pub _pad1: [AtomicU32; 31],
    pub sq_flags: AtomicU32,
    pub _pad2: [AtomicU32; 31],
    pub cq_tail: AtomicU32,
    pub _pad3: [AtomicU32; 31],
    pub cq_head: AtomicU32,
    pub _pad4: [AtomicU32; 31],
    pub cq_flags: AtomicU32,
    pub _pad5: [AtomicU32; 31],
}

const _: () = assert!(core::mem::size_of::<QueueControl>() == 768);
const _: () = assert!(core::mem::offset_of!(QueueControl, sq_tail) == 0);
const _: () = assert!(core::mem::offset_of!(QueueControl, sq_head) == crate::INDEX_SPACING_BYTES);
const _: () = assert!(core::mem::offset_of!(QueueControl, sq_flags) == 2 * crate::INDEX_SPACING_BYTES);
const _: () = assert!(core::mem::offset_of!(QueueControl, cq_tail) == 3 * crate::INDEX_SPACING_BYTES);
const _: () = assert!(core::mem::offset_of!(QueueControl, cq_head) == 4 * crate::INDEX_SPACING_BYTES);
const _: () = assert!(core::mem::offset_of!(QueueControl, cq_flags) == 5 * crate::INDEX_SPACING_BYTES);

/// Counters of one queue pair, written only by the engine (plain stores of
/// its own running totals, once per batch), read by tools. 128 bytes.
#[repr(C, align(128))]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout)]
pub struct QueuePairStats {
    /// SQEs taken off the ring.
    pub sqes_taken: AtomicU64,
    /// CQEs posted.
    pub cqes_posted: AtomicU64,
    /// Completions that carried an error.
    pub errors: AtomicU64,
    /// Entries rejected by validation (a subset of `errors`).
    pub invalid_entries: AtomicU64,
    /// Payload bytes delivered by successful reads.
    pub bytes_read: AtomicU64,
    /// Times the engine went to sleep with NEED_WAKEUP set on this SQ.
    pub sleeps: AtomicU64,
    /// Times the engine woke a client waiting on this CQ.
    pub client_wakeups: AtomicU64,
    /// Requests currently taken and not yet completed.
    pub in_flight: AtomicU64,
    pub _reserved: [AtomicU64; 8],
}

const _: () = assert!(core::mem::size_of::<QueuePairStats>() == 128);
