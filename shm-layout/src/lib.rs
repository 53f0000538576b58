//! The byte layout of a shared region and the algorithms that run over it.
//!
//! This crate is the single source of truth for every byte the engine and its
//! clients share. A region is laid out as:
//!
//! ```text
//! offset 0                      header page (4096 bytes): description + live words
//! queue_pairs_offset            queue pair 0: control block (768 bytes), SQ entries, CQ entries
//!  + i * queue_pair_stride      queue pair i
//! stats_offset                  one QueuePairStats (128 bytes) per queue pair
//! buffer_offset                 the client's buffer area (4096-aligned)
//! region_size                   rounded up to 2 MiB (one huge page)
//! ```
//!
//! Everything is an offset; nothing in shared memory is a pointer, a `bool`, an
//! enum or a `usize`. Every size and offset another process relies on has a
//! compile-time assertion beside its type. Values the peer can write are copied
//! out and validated before use ([`entry::Sqe::validate`],
//! [`header::RegionDescription::validate`], the index checks in [`ring`]).
//!
//! `no_std`, depends on `zerocopy` only (and `loom` for the model-checked
//! build, `--cfg loom`, which compiles just the ring protocol).
#![cfg_attr(not(any(test, loom)), no_std)]

pub mod sync;

pub mod ring;

#[cfg(not(loom))]
pub mod entry;
#[cfg(not(loom))]
pub mod geometry;
#[cfg(not(loom))]
pub mod header;
#[cfg(not(loom))]
pub mod queue_pair;
#[cfg(not(loom))]
pub mod region;

/// `b"SWRDMAR1"` read as a little-endian u64: the first eight bytes of a region.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"SWRDMAR1");

/// The layout version. Bump it on any change to a shared byte; a client of
/// another version is refused at attach.
pub const LAYOUT_VERSION: u32 = 1;

/// Alignment of every region part: one small page.
pub const PAGE_SIZE_BYTES: u64 = 4096;

/// A region's total size is a multiple of one 2 MiB huge page.
pub const HUGE_PAGE_SIZE_BYTES: u64 = 2 * 1024 * 1024;

/// Size of a cache line pair: head and tail indices are this far apart so the
/// adjacent-line prefetcher does not couple them.
pub const INDEX_SPACING_BYTES: usize = 128;
