//! Typed access to a mapped region: the one audited place where a base
//! pointer and a [`Geometry`] become references to shared atomics and ring
//! slot arrays.
//!
//! Only parts made entirely of atomics are handed out as references
//! ([`HeaderLive`], [`QueueControl`], [`QueuePairStats`]); the description and
//! the entries are copied in and out (volatile), because the peer may change
//! them at any time.

use crate::entry::{Cqe, Sqe};
use crate::geometry::Geometry;
use crate::header::{HeaderError, HeaderLive, RegionDescription, RegionHeader};
use crate::queue_pair::{QueueControl, QueuePairStats};
use crate::ring::{Consumer, Producer, SharedSlots};
use crate::PAGE_SIZE_BYTES;
use core::ptr::NonNull;

/// A mapped region: base pointer plus the geometry that describes it.
///
/// Neither `Copy` nor `Clone`: a view lives beside the mapping it describes, in the value that
/// owns both, and whatever it hands out borrows it, so nothing taken from it can outlive the
/// mapping. A copy cannot be made:
///
/// ```compile_fail
/// fn copied(view: &shm_layout::region::RegionView) -> shm_layout::region::RegionView {
///     *view
/// }
/// ```
#[derive(Debug)]
pub struct RegionView {
    base: NonNull<u8>,
    geometry: Geometry,
}

// SAFETY: the view only hands out atomics and volatile copies; which thread
// touches which ring is decided by the ring protocol's single-producer,
// single-consumer rule, which the owners of Producer/Consumer uphold.
unsafe impl Send for RegionView {}
// SAFETY: as above; every shared reference it hands out is to atomics.
unsafe impl Sync for RegionView {}

/// Why a mapping cannot be viewed as a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    Misaligned,
    TooSmall { region_size_bytes: u64, mapping_size_bytes: u64 },
}

/// Which side of the rings a caller plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Engine,
    Client,
}

/// The SQ producer and CQ consumer a client drives.
pub type ClientRings = (Producer<Sqe, SharedSlots<Sqe>>, Consumer<Cqe, SharedSlots<Cqe>>);
/// The SQ consumer and CQ producer the engine drives.
pub type EngineRings = (Consumer<Sqe, SharedSlots<Sqe>>, Producer<Cqe, SharedSlots<Cqe>>);

impl RegionView {
    /// # Safety
    /// `base` points to a mapping of `mapping_size_bytes` bytes that stays
    /// mapped while this view (and anything it hands out) lives. It may be
    /// mapped read-only only if the caller never uses the writing accessors
    /// (ring producers/consumers, `init_header`).
    pub unsafe fn new(base: NonNull<u8>, mapping_size_bytes: u64, geometry: Geometry) -> Result<RegionView, ViewError> {
        if !(base.as_ptr() as usize).is_multiple_of(PAGE_SIZE_BYTES as usize) {
            return Err(ViewError::Misaligned);
        }
        if geometry.region_size_bytes > mapping_size_bytes {
            return Err(ViewError::TooSmall { region_size_bytes: geometry.region_size_bytes, mapping_size_bytes });
        }
        Ok(RegionView { base, geometry })
    }

    /// Copies the description out of a mapping and validates it: the
    /// client's (and ringstat's) way in.
    ///
    /// # Safety
    /// As for [`RegionView::new`].
    pub unsafe fn open(
        base: NonNull<u8>,
        mapping_size_bytes: u64,
    ) -> Result<(RegionView, RegionDescription), HeaderError> {
        if mapping_size_bytes < PAGE_SIZE_BYTES || !(base.as_ptr() as usize).is_multiple_of(PAGE_SIZE_BYTES as usize) {
            return Err(HeaderError::MappingTooSmall { region_size_bytes: PAGE_SIZE_BYTES, mapping_size_bytes });
        }
        // SAFETY: the mapping holds at least one page (checked above), the
        // description is at offset 0 and FromBytes (any bytes are valid).
        let description = unsafe { base.cast::<RegionDescription>().as_ptr().read_volatile() };
        let geometry = description.validate(mapping_size_bytes)?;
        Ok((RegionView { base, geometry }, description))
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn at<T>(&self, offset: u64) -> NonNull<T> {
        debug_assert!(offset + core::mem::size_of::<T>() as u64 <= self.geometry.region_size_bytes);
        // SAFETY: every offset passed here comes from the geometry, which
        // `new`/`open` checked fits inside the mapping.
        unsafe { self.base.add(offset as usize).cast() }
    }

    /// Writes the header (description and live words) of a new region.
    /// Engine only, before the region is handed to anyone.
    pub fn init_header(&self, description: &RegionDescription) {
        let header = self.at::<RegionHeader>(0);
        // SAFETY: the header page is inside the mapping and page-aligned; no
        // other process has the region yet.
        unsafe { core::ptr::addr_of_mut!((*header.as_ptr()).description).write_volatile(*description) };
    }

    /// The live header words.
    pub fn live(&self) -> &HeaderLive {
        // SAFETY: in the mapping, aligned (offset 128 of a page), all atomics.
        unsafe { self.at::<HeaderLive>(core::mem::offset_of!(RegionHeader, live) as u64).as_ref() }
    }

    /// Queue pair `index`'s control block. Panics if `index` is not below the
    /// queue pair count (a caller bug, not peer input).
    pub fn queue_control(&self, index: u32) -> &QueueControl {
        assert!(index < self.geometry.queue_pair_count, "queue pair {index} does not exist");
        // SAFETY: in the mapping, 4096-aligned, all atomics.
        unsafe { self.at::<QueueControl>(self.geometry.queue_control_offset(index)).as_ref() }
    }

    /// Queue pair `index`'s stats block.
    pub fn stats(&self, index: u32) -> &QueuePairStats {
        assert!(index < self.geometry.queue_pair_count, "queue pair {index} does not exist");
        // SAFETY: in the mapping, 128-aligned, all atomics.
        unsafe { self.at::<QueuePairStats>(self.geometry.stats_entry_offset(index)).as_ref() }
    }

    fn sq_slots(&self, index: u32) -> SharedSlots<Sqe> {
        // SAFETY: sq_entries SQEs at sq_offset lie inside the mapping; Sqe is
        // FromBytes; the view's contract keeps the mapping alive.
        unsafe { SharedSlots::new(self.at(self.geometry.sq_offset(index)), self.geometry.sq_entries) }
    }

    fn cq_slots(&self, index: u32) -> SharedSlots<Cqe> {
        // SAFETY: as in sq_slots, for the CQ.
        unsafe { SharedSlots::new(self.at(self.geometry.cq_offset(index)), self.geometry.cq_entries()) }
    }

    /// The engine's ends of queue pair `index`, starting at the given indices
    /// (0 for a new region).
    ///
    /// # Safety
    /// The caller is the only engine-side user of this queue pair's rings,
    /// and the returned rings do not outlive the mapping.
    pub unsafe fn engine_rings(&self, index: u32) -> EngineRings {
        let control = self.queue_control(index);
        // SAFETY: the caller's contract; the atomics live in the mapping.
        unsafe {
            (
                Consumer::new(
                    NonNull::from(&control.sq_head),
                    NonNull::from(&control.sq_tail),
                    self.sq_slots(index),
                    0,
                ),
                Producer::new(
                    NonNull::from(&control.cq_tail),
                    NonNull::from(&control.cq_head),
                    self.cq_slots(index),
                    0,
                ),
            )
        }
    }

    /// The client's ends of queue pair `index`, resuming from the indices
    /// currently in the control block.
    ///
    /// # Safety
    /// The caller is the only client-side user of this queue pair's rings,
    /// and the returned rings do not outlive the mapping.
    pub unsafe fn client_rings(&self, index: u32) -> ClientRings {
        let control = self.queue_control(index);
        let sq_start = control.sq_tail.load(core::sync::atomic::Ordering::Relaxed);
        let cq_start = control.cq_head.load(core::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract; the atomics live in the mapping.
        unsafe {
            (
                Producer::new(
                    NonNull::from(&control.sq_tail),
                    NonNull::from(&control.sq_head),
                    self.sq_slots(index),
                    sq_start,
                ),
                Consumer::new(
                    NonNull::from(&control.cq_head),
                    NonNull::from(&control.cq_tail),
                    self.cq_slots(index),
                    cq_start,
                ),
            )
        }
    }

    /// Pointer to `length` bytes at `offset` of the buffer area, if the range
    /// is inside it.
    pub fn buffer_range(&self, offset: u64, length: u64) -> Option<NonNull<u8>> {
        let end = offset.checked_add(length)?;
        if end > self.geometry.buffer_size_bytes {
            return None;
        }
        Some(self.at(self.geometry.buffer_offset + offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::opcode;
    use zerocopy::FromBytes;

    fn with_region(geometry: Geometry, test: impl FnOnce(RegionView)) {
        let words = (geometry.region_size_bytes / 8) as usize + 512;
        let mut storage = vec![0u64; words];
        let offset = storage.as_ptr().align_offset(PAGE_SIZE_BYTES as usize);
        let base = NonNull::new(storage[offset..].as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: storage outlives the view (test runs inside this scope).
        let view = unsafe { RegionView::new(base, geometry.region_size_bytes, geometry) }.unwrap();
        test(view)
    }

    #[test]
    fn engine_and_client_rings_meet() {
        let geometry = Geometry::new(2, 8, 8192).unwrap();
        with_region(geometry, |view| {
            view.init_header(&RegionDescription::new(&geometry));
            // SAFETY: single-threaded test; one user per ring end.
            let (mut sq, _cq) = unsafe { view.client_rings(1) };
            // SAFETY: as above.
            let (mut engine_sq, _engine_cq) = unsafe { view.engine_rings(1) };
            sq.push(Sqe::nop(42)).unwrap();
            sq.publish();
            let sqe = engine_sq.pop().unwrap().unwrap();
            assert_eq!(sqe.opcode, opcode::NOP);
            assert_eq!(sqe.user_data, 42);
            // SAFETY: the view's mapping is valid; reopen reads the header.
            let (_, description) = unsafe { RegionView::open(view.base(), geometry.region_size_bytes) }.unwrap();
            assert_eq!(description.queue_pair_count, 2);
        });
    }

    #[test]
    fn buffer_range_is_bounded() {
        let geometry = Geometry::new(1, 8, 8192).unwrap();
        with_region(geometry, |view| {
            assert!(view.buffer_range(0, 8192).is_some());
            assert!(view.buffer_range(1, 8192).is_none());
            assert!(view.buffer_range(u64::MAX, 2).is_none());
        });
    }

    proptest::proptest! {
        /// Arbitrary bytes read as a header never panic, and are accepted
        /// only if they describe exactly the geometry their counts imply.
        #[test]
        fn arbitrary_header_bytes_are_validated(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 128)) {
            let description = RegionDescription::read_from_bytes(&bytes).unwrap();
            if let Ok(geometry) = description.validate(u64::MAX) {
                proptest::prop_assert_eq!(RegionDescription::new(&geometry).buffer_offset, description.buffer_offset);
            }
        }

        /// Arbitrary bytes read as an SQE never panic; an accepted read names
        /// a buffer inside the area.
        #[test]
        fn arbitrary_sqe_bytes_are_validated(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 64), area in 1u64..1 << 40) {
            let sqe = Sqe::read_from_bytes(&bytes).unwrap();
            if let Ok(crate::entry::Request::ReadNeedle(read)) = sqe.validate(area) {
                proptest::prop_assert!(read.buffer_offset + read.buffer_length as u64 <= area);
            }
        }

        /// Layout round trip: an entry's bytes read back are the same entry.
        #[test]
        fn sqe_round_trips(user_data in proptest::prelude::any::<u64>(), needle in proptest::prelude::any::<u64>(), cookie in proptest::prelude::any::<u32>()) {
            use zerocopy::IntoBytes;
            let sqe = Sqe { opcode: opcode::READ_NEEDLE, user_data, needle_id: needle, cookie, buffer_length: 1, ..Sqe::default() };
            proptest::prop_assert_eq!(Sqe::read_from_bytes(sqe.as_bytes()).unwrap(), sqe);
        }
    }
}
