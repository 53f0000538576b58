//! A client's buffer area registered as a get destination.

use std::ptr::NonNull;

use ucx::{Context, MemoryRegion};

use crate::rdma::REGISTRATION_PIECE_MAX_BYTES;

/// A client's buffer area, registered in pieces of at most [`REGISTRATION_PIECE_MAX_BYTES`].
#[derive(Debug)]
pub(super) struct Area {
    // Field order: the registrations drop before anything else of the area.
    regions: Vec<MemoryRegion>,
    base: usize,
    length_bytes: u64,
    /// Reads started into this area whose completion has not been produced.
    pub(super) reads_in_flight: usize,
}

impl Area {
    /// Registers `base..base + length_bytes`.
    ///
    /// # Safety
    /// The range must stay mapped and writable until the area is dropped (with no get into it
    /// in flight).
    pub(super) unsafe fn register(context: &Context, base: NonNull<u8>, length_bytes: u64) -> Result<Area, ucx::Error> {
        let mut regions = Vec::new();
        let mut offset = 0u64;
        // Bounded: each pass registers at least one byte (length - offset > 0).
        while offset < length_bytes {
            let piece = (length_bytes - offset).min(REGISTRATION_PIECE_MAX_BYTES);
            // SAFETY: inside the caller's mapping, which outlives the registration (contract).
            let region =
                unsafe { MemoryRegion::register(context, base.as_ptr().add(offset as usize), piece as usize) }?;
            regions.push(region);
            offset += piece;
        }
        Ok(Area { regions, base: base.as_ptr() as usize, length_bytes, reads_in_flight: 0 })
    }

    pub(super) fn contains(&self, pointer: *mut u8, length: u64) -> bool {
        let start = pointer as usize;
        start >= self.base && (start - self.base) as u64 + length <= self.length_bytes
    }

    /// The registration holding all of `pointer..pointer + length`, if one does.
    pub(super) fn region_for(&self, pointer: *mut u8, length: u64) -> Option<&MemoryRegion> {
        let offset = (pointer as usize).checked_sub(self.base)? as u64;
        let region = self.regions.get((offset / REGISTRATION_PIECE_MAX_BYTES) as usize)?;
        let end_in_region = offset % REGISTRATION_PIECE_MAX_BYTES + length;
        (end_in_region <= region.len() as u64).then_some(region)
    }
}
