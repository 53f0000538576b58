//! The header page at offset 0 of every region.
//!
//! Two parts with different rules:
//! - [`RegionDescription`]: plain integers the engine writes once, before the
//!   region's file descriptor is handed over. The client copies it out once at
//!   attach and validates it ([`RegionDescription::validate`]); the engine never
//!   reads it back (the client could have overwritten it) and keeps its own
//!   [`crate::geometry::Geometry`].
//! - [`HeaderLive`]: atomics the engine updates while the region is attached
//!   (engine and region state, heartbeat). Only the engine writes them.

use crate::geometry::{Geometry, GeometryError};
use crate::{LAYOUT_VERSION, PAGE_SIZE_BYTES, REGION_MAGIC};
use core::sync::atomic::{AtomicU32, AtomicU64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The write-once description of a region: magic, version, every part's
/// offset and size, and facts for tools.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RegionDescription {
    pub magic: u64,
    pub layout_version: u32,
    pub header_size_bytes: u32,
    pub region_size_bytes: u64,
    pub queue_pair_count: u32,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub queue_pair_stride_bytes: u32,
    pub queue_pairs_offset: u64,
    pub stats_offset: u64,
    pub stats_size_bytes: u64,
    pub buffer_offset: u64,
    pub buffer_size_bytes: u64,
    /// Changes every time an engine starts: a client can tell a restarted
    /// engine from the one it attached to.
    pub engine_generation: u64,
    /// The engine's id for this region (unique within one engine generation).
    pub region_id: u64,
    pub engine_pid: u32,
    pub client_pid: u32,
    /// Size of the pages backing the region: 2 MiB when hugetlb, else 4096.
    pub page_size_bytes: u32,
    /// [`backing`] value.
    pub backing: u32,
    pub _reserved: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<RegionDescription>() == 128);
const _: () = assert!(core::mem::offset_of!(RegionDescription, layout_version) == 8);
const _: () = assert!(core::mem::offset_of!(RegionDescription, buffer_offset) == 64);
const _: () = assert!(core::mem::offset_of!(RegionDescription, engine_generation) == 80);

/// Values of [`RegionDescription::backing`].
pub mod backing {
    /// A `MFD_HUGETLB` memfd of 2 MiB pages, pre-faulted.
    pub const HUGETLB: u32 = 1;
    /// Normal pages with `MADV_HUGEPAGE` (the fallback when no huge pages
    /// were available).
    pub const NORMAL_PAGES: u32 = 2;
}

/// Values of [`HeaderLive::engine_state`].
pub mod engine_state {
    pub const RUNNING: u32 = 1;
    /// SIGTERM received: in-flight work is finishing, queued work is being
    /// completed with `SHUTDOWN`.
    pub const DRAINING: u32 = 2;
    /// The engine has stopped serving; no completion will come.
    pub const STOPPED: u32 = 3;
}

/// Values of [`HeaderLive::region_state`].
pub mod region_state {
    pub const ACTIVE: u32 = 1;
    /// The client broke the ring protocol; the engine no longer serves it.
    /// `fence_reason` says how.
    pub const FENCED: u32 = 2;
}

/// Values of [`HeaderLive::fence_reason`].
pub mod fence_reason {
    pub const NONE: u32 = 0;
    /// The SQ tail moved backwards or further than the ring holds.
    pub const SQ_TAIL_INVALID: u32 = 1;
    /// The CQ head moved backwards or past the CQ tail.
    pub const CQ_HEAD_INVALID: u32 = 2;
    /// Pages of the region were freed under the engine (a hole punched in its memfd).
    pub const PAGES_LOST: u32 = 3;

    /// One sentence per reason.
    pub const fn describe(reason: u32) -> &'static str {
        match reason {
            NONE => "not fenced",
            SQ_TAIL_INVALID => "the client moved its SQ tail backwards or beyond the ring's size",
            CQ_HEAD_INVALID => "the client moved its CQ head backwards or past the CQ tail",
            PAGES_LOST => "pages of the region were freed under the engine (a hole punched in its memfd)",
            _ => "unknown fence reason",
        }
    }
}

/// Words the engine updates while the region is attached. All atomics, so a
/// shared reference to this part is sound while the peer maps it too.
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout)]
pub struct HeaderLive {
    /// [`engine_state`] value.
    pub engine_state: AtomicU32,
    /// [`region_state`] value.
    pub region_state: AtomicU32,
    /// [`fence_reason`] value; meaningful when the region is fenced.
    pub fence_reason: AtomicU32,
    pub _reserved0: AtomicU32,
    /// `CLOCK_MONOTONIC` nanoseconds of the engine's last pass over this
    /// region. Updated at least every heartbeat interval, even when idle.
    pub heartbeat_ns: AtomicU64,
    pub _reserved1: [AtomicU64; 13],
}

const _: () = assert!(core::mem::size_of::<HeaderLive>() == 128);

/// The header page. The description comes first, then the live words on
/// their own cache lines, then reserved bytes up to one page.
#[repr(C)]
#[derive(Debug, FromBytes, IntoBytes, KnownLayout)]
pub struct RegionHeader {
    pub description: RegionDescription,
    pub live: HeaderLive,
    pub _reserved: [u8; 4096 - 256],
}

const _: () = assert!(core::mem::size_of::<RegionHeader>() as u64 == PAGE_SIZE_BYTES);
const _: () = assert!(core::mem::offset_of!(RegionHeader, live) == 128);

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic {
        found: u64,
    },
    VersionMismatch {
        found: u32,
        expected: u32,
    },
    HeaderSize {
        found: u32,
    },
    Geometry(GeometryError),
    /// The description's offsets disagree with the geometry its own counts imply.
    Inconsistent {
        field: &'static str,
    },
    /// The mapping is smaller than the region the description names.
    MappingTooSmall {
        region_size_bytes: u64,
        mapping_size_bytes: u64,
    },
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeaderError::BadMagic { found } => write!(f, "region magic is {found:#018x}, not a region of this engine"),
            HeaderError::VersionMismatch { found, expected } => {
                write!(f, "region layout version is {found}, this library speaks version {expected}")
            }
            HeaderError::HeaderSize { found } => write!(f, "region header size is {found}, expected {PAGE_SIZE_BYTES}"),
            HeaderError::Geometry(error) => write!(f, "region geometry is invalid: {error}"),
            HeaderError::Inconsistent { field } => {
                write!(f, "region header field {field} disagrees with the layout its counts imply")
            }
            HeaderError::MappingTooSmall { region_size_bytes, mapping_size_bytes } => {
                write!(f, "region claims {region_size_bytes} bytes but the mapping holds {mapping_size_bytes}")
            }
        }
    }
}

impl RegionDescription {
    /// The description the engine writes for a region of this geometry.
    pub fn new(geometry: &Geometry) -> RegionDescription {
        RegionDescription {
            magic: REGION_MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size_bytes: PAGE_SIZE_BYTES as u32,
            region_size_bytes: geometry.region_size_bytes,
            queue_pair_count: geometry.queue_pair_count,
            sq_entries: geometry.sq_entries,
            cq_entries: geometry.cq_entries(),
            queue_pair_stride_bytes: geometry.queue_pair_stride_bytes,
            queue_pairs_offset: geometry.queue_pairs_offset,
            stats_offset: geometry.stats_offset,
            stats_size_bytes: geometry.stats_size_bytes,
            buffer_offset: geometry.buffer_offset,
            buffer_size_bytes: geometry.buffer_size_bytes,
            ..RegionDescription::default()
        }
    }

    /// Checks magic and version, recomputes the geometry from the counts and
    /// checks that every offset agrees and fits in `mapping_size_bytes`.
    pub fn validate(&self, mapping_size_bytes: u64) -> Result<Geometry, HeaderError> {
        if self.magic != REGION_MAGIC {
            return Err(HeaderError::BadMagic { found: self.magic });
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(HeaderError::VersionMismatch { found: self.layout_version, expected: LAYOUT_VERSION });
        }
        if self.header_size_bytes as u64 != PAGE_SIZE_BYTES {
            return Err(HeaderError::HeaderSize { found: self.header_size_bytes });
        }
        let geometry = Geometry::new(self.queue_pair_count, self.sq_entries, self.buffer_size_bytes)
            .map_err(HeaderError::Geometry)?;
        let checks: [(&'static str, u64, u64); 8] = [
            ("region_size_bytes", self.region_size_bytes, geometry.region_size_bytes),
            ("cq_entries", self.cq_entries as u64, geometry.cq_entries() as u64),
            ("queue_pair_stride_bytes", self.queue_pair_stride_bytes as u64, geometry.queue_pair_stride_bytes as u64),
            ("queue_pairs_offset", self.queue_pairs_offset, geometry.queue_pairs_offset),
            ("stats_offset", self.stats_offset, geometry.stats_offset),
            ("stats_size_bytes", self.stats_size_bytes, geometry.stats_size_bytes),
            ("buffer_offset", self.buffer_offset, geometry.buffer_offset),
            ("buffer_size_bytes", self.buffer_size_bytes, geometry.buffer_size_bytes),
        ];
        if let Some((field, _, _)) = checks.iter().find(|(_, found, expected)| found != expected) {
            return Err(HeaderError::Inconsistent { field });
        }
        if geometry.region_size_bytes > mapping_size_bytes {
            return Err(HeaderError::MappingTooSmall {
                region_size_bytes: geometry.region_size_bytes,
                mapping_size_bytes,
            });
        }
        Ok(geometry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_round_trips_through_bytes() {
        let geometry = Geometry::new(2, 64, 1 << 20).unwrap();
        let description = RegionDescription::new(&geometry);
        let bytes = description.as_bytes().to_vec();
        let back = RegionDescription::read_from_bytes(&bytes).unwrap();
        assert_eq!(back, description);
        assert_eq!(back.validate(geometry.region_size_bytes), Ok(geometry));
    }

    #[test]
    fn other_version_is_refused_with_both_numbers() {
        let geometry = Geometry::new(1, 8, 4096).unwrap();
        let description = RegionDescription { layout_version: 99, ..RegionDescription::new(&geometry) };
        let error = description.validate(u64::MAX).unwrap_err();
        assert_eq!(error, HeaderError::VersionMismatch { found: 99, expected: LAYOUT_VERSION });
    }

    #[test]
    fn tampered_offset_is_refused() {
        let geometry = Geometry::new(1, 8, 4096).unwrap();
        let description = RegionDescription { buffer_offset: 0, ..RegionDescription::new(&geometry) };
        assert_eq!(description.validate(u64::MAX), Err(HeaderError::Inconsistent { field: "buffer_offset" }));
    }
}
