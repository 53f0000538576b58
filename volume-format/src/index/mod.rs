//! The `.idx` file: a log of fixed-size entries (needle id u64, offset in
//! units of 8 bytes, size i32; big-endian), replayed in order into a
//! [`NeedleIndex`].
//!
//! The offset is 4 bytes in a default SeaweedFS build (volumes up to 32 GiB)
//! and 5 bytes in a `5BytesOffset` build (up to 8 TiB). The 5-byte form is the
//! 4-byte big-endian low 32 bits followed by the high byte, so the two widths
//! agree on their first 4 offset bytes.

mod compact;
mod map;

pub use map::{ApplyOutcome, IndexError, IndexValue, NeedleIndex};

use crate::error::FormatError;
use crate::version::NEEDLE_ALIGNMENT_BYTES;

/// Size of the needle id field.
const NEEDLE_ID_SIZE_BYTES: usize = 8;
/// Size of the size field.
const SIZE_FIELD_SIZE_BYTES: usize = 4;

/// Width of the offset field in `.idx` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OffsetWidth {
    /// 4-byte offsets, 16-byte entries (the default build).
    #[default]
    Four,
    /// 5-byte offsets, 17-byte entries (`go build -tags 5BytesOffset`).
    Five,
}

impl OffsetWidth {
    /// Bytes of the offset field.
    pub const fn offset_size_bytes(self) -> usize {
        match self {
            OffsetWidth::Four => 4,
            OffsetWidth::Five => 5,
        }
    }

    /// Bytes of one `.idx` entry: 16 or 17.
    pub const fn entry_size_bytes(self) -> usize {
        NEEDLE_ID_SIZE_BYTES + self.offset_size_bytes() + SIZE_FIELD_SIZE_BYTES
    }

    /// The largest byte offset an entry can hold (just under 32 GiB or 8 TiB).
    pub const fn max_offset_bytes(self) -> u64 {
        let max_units: u64 = (1 << (8 * self.offset_size_bytes())) - 1;
        max_units * NEEDLE_ALIGNMENT_BYTES
    }

    /// Width from the offset size in bytes (4 or 5).
    pub const fn from_offset_size_bytes(offset_size_bytes: u8) -> Option<OffsetWidth> {
        match offset_size_bytes {
            4 => Some(OffsetWidth::Four),
            5 => Some(OffsetWidth::Five),
            _ => None,
        }
    }
}

const _: () = assert!(OffsetWidth::Four.entry_size_bytes() == 16);
const _: () = assert!(OffsetWidth::Five.entry_size_bytes() == 17);

/// One `.idx` entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The needle the entry is about.
    pub needle_id: u64,
    /// Byte offset of the record in the `.dat` (stored divided by 8).
    pub offset_bytes: u64,
    /// Record header size; -1 (or any negative) marks a deletion.
    pub size: i32,
}

impl IndexEntry {
    /// Parse one entry from the first `width.entry_size_bytes()` bytes.
    pub fn parse(bytes: &[u8], width: OffsetWidth) -> Result<IndexEntry, FormatError> {
        let entry = bytes.get(..width.entry_size_bytes()).ok_or(FormatError::TooShort {
            what: "index entry",
            needed_bytes: width.entry_size_bytes() as u64,
            available_bytes: bytes.len() as u64,
        })?;
        let (id_bytes, rest) = entry.split_at(NEEDLE_ID_SIZE_BYTES);
        let (offset_field, size_bytes) = rest.split_at(width.offset_size_bytes());
        let low_units =
            u64::from(u32::from_be_bytes([offset_field[0], offset_field[1], offset_field[2], offset_field[3]]));
        let high_units = offset_field.get(4).map_or(0, |&high| u64::from(high) << 32);
        let mut id = [0u8; NEEDLE_ID_SIZE_BYTES];
        id.copy_from_slice(id_bytes);
        Ok(IndexEntry {
            needle_id: u64::from_be_bytes(id),
            offset_bytes: (high_units | low_units) * NEEDLE_ALIGNMENT_BYTES,
            size: i32::from_be_bytes([size_bytes[0], size_bytes[1], size_bytes[2], size_bytes[3]]),
        })
    }

    /// The stored bytes (16 or 17). The offset must be a multiple of 8 and fit the width.
    pub fn encode(&self, width: OffsetWidth) -> Result<Vec<u8>, FormatError> {
        if self.offset_bytes & (NEEDLE_ALIGNMENT_BYTES - 1) != 0 {
            return Err(FormatError::OffsetNotAligned { offset_bytes: self.offset_bytes });
        }
        if self.offset_bytes > width.max_offset_bytes() {
            return Err(FormatError::OffsetTooLarge {
                offset_bytes: self.offset_bytes,
                max_offset_bytes: width.max_offset_bytes(),
            });
        }
        let units = self.offset_bytes / NEEDLE_ALIGNMENT_BYTES;
        let mut bytes = Vec::with_capacity(width.entry_size_bytes());
        bytes.extend_from_slice(&self.needle_id.to_be_bytes());
        bytes.extend_from_slice(&(units as u32).to_be_bytes());
        if width == OffsetWidth::Five {
            bytes.push((units >> 32) as u8);
        }
        bytes.extend_from_slice(&self.size.to_be_bytes());
        Ok(bytes)
    }

    /// Whether replaying this entry sets the needle (SeaweedFS's memory map:
    /// a non-zero offset and a size that is not negative; size 0 is an empty
    /// file, kept) rather than deleting it.
    pub fn is_live(&self) -> bool {
        self.offset_bytes != 0 && self.size >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_four_byte_entry() {
        let bytes = [0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 1, 0x27, 0x84];
        let entry = IndexEntry::parse(&bytes, OffsetWidth::Four).unwrap();
        assert_eq!(entry, IndexEntry { needle_id: 3, offset_bytes: 8, size: 0x12784 });
        assert_eq!(entry.encode(OffsetWidth::Four).unwrap(), bytes);
    }

    #[test]
    fn five_byte_offset_puts_the_high_byte_last() {
        let bytes = [0, 0, 0, 0, 0, 0, 0, 1, 0x00, 0x03, 0x1b, 0xd3, 0x02, 0, 0, 0, 9];
        let entry = IndexEntry::parse(&bytes, OffsetWidth::Five).unwrap();
        assert_eq!(entry.offset_bytes, ((2u64 << 32) | 0x31bd3) * 8);
        assert_eq!(entry.encode(OffsetWidth::Five).unwrap(), bytes);
    }

    #[test]
    fn encode_rejects_bad_offsets() {
        let unaligned = IndexEntry { needle_id: 1, offset_bytes: 12, size: 1 };
        assert!(matches!(unaligned.encode(OffsetWidth::Four), Err(FormatError::OffsetNotAligned { .. })));
        let far = IndexEntry { needle_id: 1, offset_bytes: 32 << 30, size: 1 };
        assert!(matches!(far.encode(OffsetWidth::Four), Err(FormatError::OffsetTooLarge { .. })));
        assert!(far.encode(OffsetWidth::Five).is_ok());
    }

    #[test]
    fn liveness_follows_seaweedfs() {
        let live = IndexEntry { needle_id: 1, offset_bytes: 8, size: 5 };
        assert!(live.is_live());
        assert!(IndexEntry { size: 0, ..live }.is_live());
        assert!(!IndexEntry { size: -1, ..live }.is_live());
        assert!(!IndexEntry { offset_bytes: 0, ..live }.is_live());
    }
}
