//! Header-only check for byte-range reads, where only the start of a record
//! is fetched: it proves the record is the one asked for and says where the
//! data lies, without the data (so without the CRC).

use super::NeedleHeader;
use crate::error::FormatError;
use crate::version::{Version, DATA_SIZE_FIELD_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES};

/// Bytes of a record [`check_header`] needs: the header plus the v2/v3 data
/// size field. Enough for every version.
pub const CHECK_HEADER_PREFIX_SIZE_BYTES: usize = NEEDLE_HEADER_SIZE_BYTES + DATA_SIZE_FIELD_SIZE_BYTES;

/// Where the data lies inside a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataSpan {
    /// Offset of the first data byte from the start of the record.
    pub data_offset_in_record: u64,
    /// Length of the data in bytes.
    pub data_len: u64,
}

impl DataSpan {
    /// The data's byte range inside the record.
    pub fn range_in_record(&self) -> std::ops::Range<u64> {
        self.data_offset_in_record..self.data_offset_in_record + self.data_len
    }
}

/// Check the start of a record against what the index and file id say:
/// needle id, cookie, header size equal to `index_size`, and (versions 2, 3)
/// a data size that fits in the body. `record_prefix` needs
/// [`CHECK_HEADER_PREFIX_SIZE_BYTES`] bytes (16 suffice for version 1 or an
/// empty body); more are ignored. The CRC is not checked.
pub fn check_header(
    record_prefix: &[u8],
    version: Version,
    needle_id: u64,
    cookie: u32,
    index_size: u32,
) -> Result<DataSpan, FormatError> {
    let header = NeedleHeader::parse(record_prefix)?;
    if i64::from(header.size) != i64::from(index_size) {
        return Err(FormatError::SizeMismatch { expected: index_size, found: header.size });
    }
    if header.needle_id != needle_id {
        return Err(FormatError::IdMismatch { expected: needle_id, found: header.needle_id });
    }
    if header.cookie != cookie {
        return Err(FormatError::CookieMismatch { expected: cookie, found: header.cookie });
    }
    let header_size_bytes = NEEDLE_HEADER_SIZE_BYTES as u64;
    if version == Version::V1 || index_size == 0 {
        let data_len = if version == Version::V1 { u64::from(index_size) } else { 0 };
        return Ok(DataSpan { data_offset_in_record: header_size_bytes, data_len });
    }
    let data_size_field =
        record_prefix.get(NEEDLE_HEADER_SIZE_BYTES..CHECK_HEADER_PREFIX_SIZE_BYTES).ok_or(FormatError::TooShort {
            what: "needle header with data size",
            needed_bytes: CHECK_HEADER_PREFIX_SIZE_BYTES as u64,
            available_bytes: record_prefix.len() as u64,
        })?;
    let data_len =
        u64::from(u32::from_be_bytes([data_size_field[0], data_size_field[1], data_size_field[2], data_size_field[3]]));
    let field_size_bytes = DATA_SIZE_FIELD_SIZE_BYTES as u64;
    if field_size_bytes + data_len > u64::from(index_size) {
        return Err(FormatError::FieldOutOfRange {
            field: if u64::from(index_size) < field_size_bytes { "data size" } else { "data" },
            offset_in_record: header_size_bytes + field_size_bytes,
            needed_bytes: data_len,
            available_bytes: u64::from(index_size).saturating_sub(field_size_bytes),
        });
    }
    Ok(DataSpan { data_offset_in_record: header_size_bytes + field_size_bytes, data_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(size: i32, data_size: u32) -> Vec<u8> {
        let mut bytes = NeedleHeader { cookie: 5, needle_id: 6, size }.encode().to_vec();
        bytes.extend_from_slice(&data_size.to_be_bytes());
        bytes
    }

    #[test]
    fn gives_the_data_span() {
        let span = check_header(&prefix(30, 20), Version::V3, 6, 5, 30).unwrap();
        assert_eq!(span, DataSpan { data_offset_in_record: 20, data_len: 20 });
        let v1 = check_header(&prefix(30, 0)[..16], Version::V1, 6, 5, 30).unwrap();
        assert_eq!(v1, DataSpan { data_offset_in_record: 16, data_len: 30 });
    }

    #[test]
    fn rejects_mismatches() {
        let bytes = prefix(30, 20);
        assert!(matches!(check_header(&bytes, Version::V3, 7, 5, 30), Err(FormatError::IdMismatch { .. })));
        assert!(matches!(check_header(&bytes, Version::V3, 6, 4, 30), Err(FormatError::CookieMismatch { .. })));
        assert!(matches!(check_header(&bytes, Version::V3, 6, 5, 31), Err(FormatError::SizeMismatch { .. })));
        let overlong = prefix(30, 27);
        assert!(matches!(check_header(&overlong, Version::V2, 6, 5, 30), Err(FormatError::FieldOutOfRange { .. })));
        assert!(matches!(check_header(&bytes[..18], Version::V3, 6, 5, 30), Err(FormatError::TooShort { .. })));
    }
}
