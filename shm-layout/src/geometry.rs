//! Where every part of a region lives, computed from three numbers: queue
//! pair count, SQ entries, buffer area size. Both sides compute it the same
//! way; the engine writes it into the header and the client checks that the
//! header agrees ([`crate::header::RegionDescription::validate`]).

use crate::entry::{Cqe, Sqe};
use crate::queue_pair::{QueueControl, QueuePairStats};
use crate::{HUGE_PAGE_SIZE_BYTES, PAGE_SIZE_BYTES};

/// Hard limits of this layout version. An engine's configured limits are at
/// most these.
pub const MAX_QUEUE_PAIRS: u32 = 64;
pub const MIN_SQ_ENTRIES: u32 = 2;
pub const MAX_SQ_ENTRIES: u32 = 4096;
/// Largest buffer area: 64 GiB.
pub const MAX_BUFFER_SIZE_BYTES: u64 = 64 << 30;

/// The CQ has this many times the SQ's entries, so completions of work the
/// engine took can always be posted even while the client refills its SQ.
pub const CQ_ENTRIES_PER_SQ_ENTRY: u32 = 2;

/// Why a geometry is not possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    QueuePairCount { found: u32 },
    SqEntries { found: u32 },
    BufferSize { found: u64 },
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GeometryError::QueuePairCount { found } => {
                write!(f, "queue pair count {found} is not between 1 and {MAX_QUEUE_PAIRS}")
            }
            GeometryError::SqEntries { found } => write!(
                f,
                "SQ entries {found} is not a power of two between {MIN_SQ_ENTRIES} and {MAX_SQ_ENTRIES}"
            ),
            GeometryError::BufferSize { found } => write!(
                f,
                "buffer area size {found} is not a non-zero multiple of {PAGE_SIZE_BYTES} of at most {MAX_BUFFER_SIZE_BYTES}"
            ),
        }
    }
}

/// The offsets and sizes of a region's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub queue_pair_count: u32,
    pub sq_entries: u32,
    pub queue_pair_stride_bytes: u32,
    pub queue_pairs_offset: u64,
    pub stats_offset: u64,
    pub stats_size_bytes: u64,
    pub buffer_offset: u64,
    pub buffer_size_bytes: u64,
    pub region_size_bytes: u64,
}

const fn round_up(value: u64, multiple: u64) -> u64 {
    value.div_ceil(multiple) * multiple
}

/// Bytes of one queue pair before rounding: control block, SQ, CQ.
const fn queue_pair_bytes(sq_entries: u32) -> u64 {
    core::mem::size_of::<QueueControl>() as u64
        + sq_entries as u64 * core::mem::size_of::<Sqe>() as u64
        + (sq_entries * CQ_ENTRIES_PER_SQ_ENTRY) as u64 * core::mem::size_of::<Cqe>() as u64
}

// With the largest counts every offset still fits a u32 stride and a u64 sum.
const _: () = assert!(round_up(queue_pair_bytes(MAX_SQ_ENTRIES), PAGE_SIZE_BYTES) <= u32::MAX as u64);

impl Geometry {
    /// The geometry for these counts, or why there is none.
    pub fn new(queue_pair_count: u32, sq_entries: u32, buffer_size_bytes: u64) -> Result<Geometry, GeometryError> {
        if queue_pair_count == 0 || queue_pair_count > MAX_QUEUE_PAIRS {
            return Err(GeometryError::QueuePairCount { found: queue_pair_count });
        }
        if !sq_entries.is_power_of_two() || !(MIN_SQ_ENTRIES..=MAX_SQ_ENTRIES).contains(&sq_entries) {
            return Err(GeometryError::SqEntries { found: sq_entries });
        }
        if buffer_size_bytes == 0
            || !buffer_size_bytes.is_multiple_of(PAGE_SIZE_BYTES)
            || buffer_size_bytes > MAX_BUFFER_SIZE_BYTES
        {
            return Err(GeometryError::BufferSize { found: buffer_size_bytes });
        }
        let queue_pair_stride_bytes = round_up(queue_pair_bytes(sq_entries), PAGE_SIZE_BYTES);
        let queue_pairs_offset = PAGE_SIZE_BYTES;
        let stats_offset = queue_pairs_offset + queue_pair_stride_bytes * queue_pair_count as u64;
        let stats_size_bytes =
            round_up(core::mem::size_of::<QueuePairStats>() as u64 * queue_pair_count as u64, PAGE_SIZE_BYTES);
        let buffer_offset = stats_offset + stats_size_bytes;
        let region_size_bytes = round_up(buffer_offset + buffer_size_bytes, HUGE_PAGE_SIZE_BYTES);
        Ok(Geometry {
            queue_pair_count,
            sq_entries,
            queue_pair_stride_bytes: queue_pair_stride_bytes as u32,
            queue_pairs_offset,
            stats_offset,
            stats_size_bytes,
            buffer_offset,
            buffer_size_bytes,
            region_size_bytes,
        })
    }

    pub const fn cq_entries(&self) -> u32 {
        self.sq_entries * CQ_ENTRIES_PER_SQ_ENTRY
    }

    /// Offset of queue pair `index`'s control block. `index` < count.
    pub const fn queue_control_offset(&self, index: u32) -> u64 {
        self.queue_pairs_offset + self.queue_pair_stride_bytes as u64 * index as u64
    }

    /// Offset of queue pair `index`'s first SQ entry.
    pub const fn sq_offset(&self, index: u32) -> u64 {
        self.queue_control_offset(index) + core::mem::size_of::<QueueControl>() as u64
    }

    /// Offset of queue pair `index`'s first CQ entry.
    pub const fn cq_offset(&self, index: u32) -> u64 {
        self.sq_offset(index) + self.sq_entries as u64 * core::mem::size_of::<Sqe>() as u64
    }

    /// Offset of queue pair `index`'s stats block.
    pub const fn stats_entry_offset(&self, index: u32) -> u64 {
        self.stats_offset + core::mem::size_of::<QueuePairStats>() as u64 * index as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_overlap_and_are_aligned() {
        let geometry = Geometry::new(3, 256, 8 << 20).unwrap();
        for index in 0..3 {
            assert_eq!(geometry.queue_control_offset(index) % PAGE_SIZE_BYTES, 0);
            assert!(geometry.cq_offset(index) + 512 * 32 <= geometry.queue_control_offset(index + 1));
        }
        assert_eq!(geometry.queue_control_offset(3), geometry.stats_offset);
        assert_eq!(geometry.buffer_offset % PAGE_SIZE_BYTES, 0);
        assert!(geometry.buffer_offset + geometry.buffer_size_bytes <= geometry.region_size_bytes);
        assert_eq!(geometry.region_size_bytes % HUGE_PAGE_SIZE_BYTES, 0);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(Geometry::new(0, 8, 4096).is_err());
        assert!(Geometry::new(MAX_QUEUE_PAIRS + 1, 8, 4096).is_err());
        assert!(Geometry::new(1, 3, 4096).is_err());
        assert!(Geometry::new(1, MAX_SQ_ENTRIES * 2, 4096).is_err());
        assert!(Geometry::new(1, 8, 4095).is_err());
        assert!(Geometry::new(MAX_QUEUE_PAIRS, MAX_SQ_ENTRIES, MAX_BUFFER_SIZE_BYTES).is_ok());
    }
}
