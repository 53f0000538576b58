//! Needle records: one stored file each, appended to the `.dat`.
//!
//! On-disk layout (all integers big-endian), starting at a multiple of 8:
//!
//! | part | versions | bytes |
//! |---|---|---|
//! | cookie u32, needle id u64, size i32 | all | 16 |
//! | data | 1 | `size` |
//! | data size u32, data, flags u8, name, mime, last modified, ttl, pairs | 2, 3 (when size > 0) | `size` |
//! | CRC-32C of the data (raw or legacy form) | all | 4 |
//! | append time in nanoseconds u64 | 3 | 8 |
//! | padding up to the next multiple of 8, never 0 bytes: 1..=8 | all | 1..=8 |
//!
//! Optional fields follow the flags in this order: name (u8 length + bytes),
//! mime (u8 length + bytes), last modified (5 bytes, seconds), TTL (2 bytes),
//! pairs (u16 length + JSON bytes). Like SeaweedFS, a reader stops quietly at
//! the end of the body: a flagged field with no bytes left is simply absent.

mod check;
mod meta;
mod record;

pub use check::{check_header, DataSpan, CHECK_HEADER_PREFIX_SIZE_BYTES};
pub use meta::{unix_now_ns, MetaRanges, NeedleMeta, FIELDS_MAX_BYTES, META_HEAD_MAX_BYTES};
pub use record::NeedleRecord;

use crate::error::FormatError;
use crate::version::{Version, CHECKSUM_SIZE_BYTES, NEEDLE_ALIGNMENT_BYTES, NEEDLE_HEADER_SIZE_BYTES};

/// Flag bits stored after the data in versions 2 and 3.
pub mod flags {
    /// The data is gzip-compressed (SeaweedFS `FlagIsCompressed`).
    pub const IS_COMPRESSED: u8 = 0x01;
    /// A name follows.
    pub const HAS_NAME: u8 = 0x02;
    /// A mime type follows.
    pub const HAS_MIME: u8 = 0x04;
    /// A 5-byte last-modified time (seconds) follows.
    pub const HAS_LAST_MODIFIED: u8 = 0x08;
    /// A 2-byte TTL follows.
    pub const HAS_TTL: u8 = 0x10;
    /// JSON name/value pairs follow.
    pub const HAS_PAIRS: u8 = 0x20;
    /// The data is a chunk manifest, not file content.
    pub const IS_CHUNK_MANIFEST: u8 = 0x80;
}

/// Stored width of the last-modified time.
pub const LAST_MODIFIED_SIZE_BYTES: usize = 5;
/// Largest last-modified value the 5 stored bytes hold.
pub const MAX_LAST_MODIFIED: u64 = (1 << (8 * LAST_MODIFIED_SIZE_BYTES)) - 1;

/// The 16-byte header every record starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeedleHeader {
    /// Random number that must match the file id's cookie.
    pub cookie: u32,
    /// Needle id (the file id's key).
    pub needle_id: u64,
    /// Body size: the data for version 1; data size field, data, flags and
    /// optional fields for versions 2 and 3 (0 for a deletion record).
    pub size: i32,
}

impl NeedleHeader {
    /// Parse the first 16 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<NeedleHeader, FormatError> {
        let header: &[u8; NEEDLE_HEADER_SIZE_BYTES] = bytes
            .get(..NEEDLE_HEADER_SIZE_BYTES)
            .and_then(|header| header.try_into().ok())
            .ok_or(FormatError::TooShort {
                what: "needle header",
                needed_bytes: NEEDLE_HEADER_SIZE_BYTES as u64,
                available_bytes: bytes.len() as u64,
            })?;
        let [c0, c1, c2, c3, i0, i1, i2, i3, i4, i5, i6, i7, s0, s1, s2, s3] = *header;
        Ok(NeedleHeader {
            cookie: u32::from_be_bytes([c0, c1, c2, c3]),
            needle_id: u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
            size: i32::from_be_bytes([s0, s1, s2, s3]),
        })
    }

    /// The 16 stored bytes.
    pub fn encode(&self) -> [u8; NEEDLE_HEADER_SIZE_BYTES] {
        let mut bytes = [0u8; NEEDLE_HEADER_SIZE_BYTES];
        bytes[..4].copy_from_slice(&self.cookie.to_be_bytes());
        bytes[4..12].copy_from_slice(&self.needle_id.to_be_bytes());
        bytes[12..].copy_from_slice(&self.size.to_be_bytes());
        bytes
    }

    /// The size as a body length; a negative size in a `.dat` is corrupt.
    pub fn body_size_bytes(&self) -> Result<u32, FormatError> {
        u32::try_from(self.size).map_err(|_| FormatError::NegativeSize { size: self.size })
    }

    /// Size of the whole record this header starts.
    pub fn record_size_bytes(&self, version: Version) -> Result<u64, FormatError> {
        Ok(record_size_bytes(version, self.body_size_bytes()?))
    }
}

/// Padding after the checksum (and v3 timestamp): SeaweedFS's
/// `8 - (unpadded % 8)`, so 1..=8 bytes and never 0.
pub const fn padding_size_bytes(version: Version, size: u32) -> u64 {
    let unpadded = unpadded_size_bytes(version, size);
    NEEDLE_ALIGNMENT_BYTES - unpadded % NEEDLE_ALIGNMENT_BYTES
}

/// The whole on-disk record for a header `size`: header, body, checksum,
/// v3 timestamp and padding. Always a multiple of 8.
pub const fn record_size_bytes(version: Version, size: u32) -> u64 {
    unpadded_size_bytes(version, size) + padding_size_bytes(version, size)
}

const fn unpadded_size_bytes(version: Version, size: u32) -> u64 {
    (NEEDLE_HEADER_SIZE_BYTES + CHECKSUM_SIZE_BYTES + version.timestamp_size_bytes()) as u64 + size as u64
}

/// What the writer puts in the padding, so records match SeaweedFS byte for
/// byte. Go reuses a scratch buffer whose stale bytes end up as padding:
/// version 3 pads with the big-endian size then zeros; version 2 with bytes
/// 4..12 of the scratch (low half of the last-modified time when that field is
/// written, else the high half of the needle id, then the low half of the id);
/// version 1 with the needle id bytes. Readers ignore the padding.
pub(crate) fn padding_bytes(version: Version, header: &NeedleHeader, last_modified: Option<u64>) -> Vec<u8> {
    let padding_size = padding_size_bytes(version, header.body_size_bytes().unwrap_or(0)) as usize;
    let mut scratch = [0u8; 16];
    match version {
        Version::V3 => scratch[..4].copy_from_slice(&header.size.to_be_bytes()),
        Version::V1 | Version::V2 => {
            scratch[..8].copy_from_slice(&header.needle_id.to_be_bytes());
            if let (Version::V2, Some(seconds)) = (version, last_modified) {
                scratch[..4].copy_from_slice(&seconds.to_be_bytes()[4..]);
            }
        }
    }
    scratch[..padding_size].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_never_zero() {
        for version in Version::ALL {
            for size in 0..64u32 {
                let padding = padding_size_bytes(version, size);
                assert!((1..=8).contains(&padding), "{version} {size} {padding}");
                assert_eq!(record_size_bytes(version, size) % 8, 0);
            }
        }
    }

    #[test]
    fn record_size_matches_healthy_fixture() {
        // First needle of healthy_volume: size 0x12784, next needle at unit 0x24f6.
        assert_eq!(8 + record_size_bytes(Version::V3, 0x12784), 0x24f6 * 8);
        // A deletion record (size 0) takes 32 bytes in version 3.
        assert_eq!(record_size_bytes(Version::V3, 0), 32);
        assert_eq!(record_size_bytes(Version::V2, 0), 24);
        assert_eq!(record_size_bytes(Version::V1, 4), 32);
    }

    #[test]
    fn header_round_trip() {
        let header = NeedleHeader { cookie: 0x06bf_d555, needle_id: 3, size: 0x12784 };
        assert_eq!(NeedleHeader::parse(&header.encode()).unwrap(), header);
        assert!(NeedleHeader::parse(&[0; 15]).is_err());
        let negative = NeedleHeader { size: -1, ..header };
        assert_eq!(negative.body_size_bytes(), Err(FormatError::NegativeSize { size: -1 }));
    }

    #[test]
    fn v3_padding_is_size_then_zeros() {
        let header = NeedleHeader { cookie: 1, needle_id: 3, size: 0x12784 };
        assert_eq!(padding_bytes(Version::V3, &header, None), vec![0, 1, 0x27, 0x84, 0, 0, 0, 0]);
    }
}
