//! Borrowed parse of one whole needle record.

use super::{flags, NeedleHeader, LAST_MODIFIED_SIZE_BYTES};
use crate::crc::{self, ChecksumForm};
use crate::error::FormatError;
use crate::ttl::{Ttl, TTL_SIZE_BYTES};
use crate::version::{Version, CHECKSUM_SIZE_BYTES, DATA_SIZE_FIELD_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES};

/// One needle record, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedleRecord<'a> {
    /// The version the record was parsed as.
    pub version: Version,
    /// Cookie, needle id and size.
    pub header: NeedleHeader,
    /// The file content (gzip-compressed when [`NeedleRecord::is_gzipped`]).
    pub data: &'a [u8],
    /// Where `data` starts inside the record: 16 for version 1, 20 for 2 and 3.
    pub data_offset_in_record: usize,
    /// Flag bits ([`flags`]); always 0 for version 1 and for empty bodies.
    pub flags: u8,
    /// File name, when flagged and present.
    pub name: Option<&'a [u8]>,
    /// Mime type, when flagged and present.
    pub mime: Option<&'a [u8]>,
    /// Last-modified time in seconds, when flagged and present.
    pub last_modified: Option<u64>,
    /// Per-needle TTL, when flagged and present.
    pub ttl: Option<Ttl>,
    /// JSON name/value pairs, when flagged and present.
    pub pairs: Option<&'a [u8]>,
    /// The checksum as stored (raw or legacy form).
    pub stored_checksum: u32,
    /// Append time in nanoseconds (version 3 only).
    pub append_at_ns: Option<u64>,
}

impl<'a> NeedleRecord<'a> {
    /// Parse a record that starts at `record[0]`. The slice must reach at
    /// least the end of the checksum (and v3 timestamp); padding and anything
    /// after it are ignored. Does not verify the CRC: see [`NeedleRecord::check`].
    pub fn parse(record: &'a [u8], version: Version) -> Result<NeedleRecord<'a>, FormatError> {
        let header = NeedleHeader::parse(record)?;
        let size = header.body_size_bytes()? as usize;
        let body_end = NEEDLE_HEADER_SIZE_BYTES + size;
        let tail_end = body_end + CHECKSUM_SIZE_BYTES + version.timestamp_size_bytes();
        if record.len() < tail_end {
            return Err(FormatError::TooShort {
                what: "needle record",
                needed_bytes: tail_end as u64,
                available_bytes: record.len() as u64,
            });
        }
        let mut parsed = NeedleRecord::empty(version, header);
        let body = &record[NEEDLE_HEADER_SIZE_BYTES..body_end];
        match version {
            Version::V1 => parsed.data = body,
            Version::V2 | Version::V3 => parsed.read_body(body)?,
        }
        parsed.stored_checksum = be_u32(&record[body_end..body_end + CHECKSUM_SIZE_BYTES]);
        if version == Version::V3 {
            parsed.append_at_ns = Some(be_u64(&record[body_end + CHECKSUM_SIZE_BYTES..tail_end]));
        }
        Ok(parsed)
    }

    pub(super) fn empty(version: Version, header: NeedleHeader) -> NeedleRecord<'a> {
        NeedleRecord {
            version,
            header,
            data: &[],
            data_offset_in_record: NEEDLE_HEADER_SIZE_BYTES,
            flags: 0,
            name: None,
            mime: None,
            last_modified: None,
            ttl: None,
            pairs: None,
            stored_checksum: 0,
            append_at_ns: None,
        }
    }

    /// Version 2/3 body: data size, data, then flags and optional fields,
    /// each read only while bytes remain (as SeaweedFS does).
    fn read_body(&mut self, body: &'a [u8]) -> Result<(), FormatError> {
        let mut cursor = BodyCursor::new(body, NEEDLE_HEADER_SIZE_BYTES);
        if cursor.is_done() {
            return Ok(());
        }
        let data_size = be_u32(cursor.take("data size", DATA_SIZE_FIELD_SIZE_BYTES)?) as usize;
        self.data_offset_in_record = NEEDLE_HEADER_SIZE_BYTES + cursor.index;
        self.data = cursor.take("data", data_size)?;
        if let Some(flag_byte) = cursor.take_optional("flags", 1, true)? {
            self.flags = flag_byte[0];
        }
        self.read_optional_fields(&mut cursor)
    }

    pub(super) fn read_optional_fields(&mut self, cursor: &mut BodyCursor<'a>) -> Result<(), FormatError> {
        self.read_fields_before_pairs(cursor)?;
        if let Some(length) = cursor.take_optional("pairs size", 2, self.has(flags::HAS_PAIRS))? {
            let pairs_size = usize::from(u16::from_be_bytes([length[0], length[1]]));
            self.pairs = Some(cursor.take("pairs", pairs_size)?);
        }
        Ok(())
    }

    /// Name, mime, last modified and TTL: the optional fields before the pairs.
    pub(super) fn read_fields_before_pairs(&mut self, cursor: &mut BodyCursor<'a>) -> Result<(), FormatError> {
        if let Some(length) = cursor.take_optional("name size", 1, self.has(flags::HAS_NAME))? {
            self.name = Some(cursor.take("name", usize::from(length[0]))?);
        }
        if let Some(length) = cursor.take_optional("mime size", 1, self.has(flags::HAS_MIME))? {
            self.mime = Some(cursor.take("mime", usize::from(length[0]))?);
        }
        let wants_last_modified = self.has(flags::HAS_LAST_MODIFIED);
        if let Some(bytes) = cursor.take_optional("last modified", LAST_MODIFIED_SIZE_BYTES, wants_last_modified)? {
            self.last_modified = Some(be_u64(bytes));
        }
        if let Some(bytes) = cursor.take_optional("ttl", TTL_SIZE_BYTES, self.has(flags::HAS_TTL))? {
            self.ttl = Some(Ttl::from_bytes([bytes[0], bytes[1]]));
        }
        Ok(())
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// SeaweedFS's "compressed" flag: the stored data is gzip.
    pub fn is_gzipped(&self) -> bool {
        self.has(flags::IS_COMPRESSED)
    }

    /// The data is a chunk manifest (a large file split over other needles).
    pub fn is_chunk_manifest(&self) -> bool {
        self.has(flags::IS_CHUNK_MANIFEST)
    }

    /// Byte range of the data inside the record.
    pub fn data_range_in_record(&self) -> std::ops::Range<usize> {
        self.data_offset_in_record..self.data_offset_in_record + self.data.len()
    }

    /// Which form the stored checksum matches, or `None` when it matches
    /// neither. Empty data is not checksummed by SeaweedFS: that is `Some(Raw)`.
    pub fn checksum_form(&self) -> Option<ChecksumForm> {
        if self.data.is_empty() {
            return Some(ChecksumForm::Raw);
        }
        crc::match_form(self.stored_checksum, crc::crc32c(self.data))
    }

    /// Verify the record holds `expected_needle_id` with `expected_cookie` and
    /// that the data matches the stored CRC (raw or legacy form). Like
    /// SeaweedFS, empty data is not checksummed.
    pub fn check(&self, expected_needle_id: u64, expected_cookie: u32) -> Result<(), FormatError> {
        if self.header.needle_id != expected_needle_id {
            return Err(FormatError::IdMismatch { expected: expected_needle_id, found: self.header.needle_id });
        }
        if self.header.cookie != expected_cookie {
            return Err(FormatError::CookieMismatch { expected: expected_cookie, found: self.header.cookie });
        }
        self.check_crc()
    }

    /// [`NeedleRecord::check`], after checking the header size against the
    /// size the index holds for this needle (what SeaweedFS checks first).
    pub fn check_indexed(
        &self,
        expected_needle_id: u64,
        expected_cookie: u32,
        index_size: u32,
    ) -> Result<(), FormatError> {
        if i64::from(self.header.size) != i64::from(index_size) {
            return Err(FormatError::SizeMismatch { expected: index_size, found: self.header.size });
        }
        self.check(expected_needle_id, expected_cookie)
    }

    /// Verify only the CRC.
    pub fn check_crc(&self) -> Result<(), FormatError> {
        if self.checksum_form().is_some() {
            return Ok(());
        }
        let computed = crc::crc32c(self.data);
        Err(FormatError::CrcMismatch { stored: self.stored_checksum, computed, legacy: crc::legacy_form(computed) })
    }
}

/// Walks a version 2/3 body (or its part after the data); `index` only grows and never
/// passes `body.len()`.
pub(super) struct BodyCursor<'a> {
    body: &'a [u8],
    index: usize,
    /// Where `body[0]` is in the record (for error offsets).
    start_in_record: usize,
}

impl<'a> BodyCursor<'a> {
    pub(super) fn new(body: &'a [u8], start_in_record: usize) -> BodyCursor<'a> {
        BodyCursor { body, index: 0, start_in_record }
    }

    pub(super) fn is_done(&self) -> bool {
        self.index >= self.body.len()
    }

    /// Take `size_bytes` or fail: the field's length was promised.
    fn take(&mut self, field: &'static str, size_bytes: usize) -> Result<&'a [u8], FormatError> {
        let available = self.body.len() - self.index;
        if size_bytes > available {
            return Err(FormatError::FieldOutOfRange {
                field,
                offset_in_record: (self.start_in_record + self.index) as u64,
                needed_bytes: size_bytes as u64,
                available_bytes: available as u64,
            });
        }
        let taken = &self.body[self.index..self.index + size_bytes];
        self.index += size_bytes;
        Ok(taken)
    }

    /// Take a flagged field only when `wanted` and bytes remain.
    pub(super) fn take_optional(
        &mut self,
        field: &'static str,
        size_bytes: usize,
        wanted: bool,
    ) -> Result<Option<&'a [u8]>, FormatError> {
        if !wanted || self.is_done() {
            return Ok(None);
        }
        self.take(field, size_bytes).map(Some)
    }
}

/// Big-endian integer of up to 8 bytes (SeaweedFS's `BytesToUint64`).
pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).fold(0u64, |value, &byte| (value << 8) | u64::from(byte))
}

pub(super) fn be_u32(bytes: &[u8]) -> u32 {
    bytes.iter().take(4).fold(0u32, |value, &byte| (value << 8) | u32::from(byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_record(data: &[u8], flags_byte: u8, tail: &[u8]) -> Vec<u8> {
        let size = 4 + data.len() + 1 + tail.len();
        let mut record = NeedleHeader { cookie: 7, needle_id: 9, size: size as i32 }.encode().to_vec();
        record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        record.extend_from_slice(data);
        record.push(flags_byte);
        record.extend_from_slice(tail);
        record.extend_from_slice(&crc::crc32c(data).to_be_bytes());
        record.extend_from_slice(&42u64.to_be_bytes());
        record
    }

    #[test]
    fn parses_optional_fields_in_order() {
        let all = flags::HAS_NAME | flags::HAS_MIME | flags::HAS_LAST_MODIFIED | flags::HAS_TTL | flags::HAS_PAIRS;
        let tail = [&[1u8, b'n'][..], &[1, b'm'], &[0, 0, 0, 1, 2], &[3, 4], &[0, 2, b'{', b'}']].concat();
        let bytes = v3_record(b"abc", all | flags::IS_COMPRESSED, &tail);
        let record = NeedleRecord::parse(&bytes, Version::V3).unwrap();
        assert_eq!(record.data, b"abc");
        assert_eq!(record.data_offset_in_record, 20);
        assert_eq!(record.name, Some(&b"n"[..]));
        assert_eq!(record.mime, Some(&b"m"[..]));
        assert_eq!(record.last_modified, Some(0x102));
        assert_eq!(record.ttl, Some(Ttl { count: 3, unit: 4 }));
        assert_eq!(record.pairs, Some(&b"{}"[..]));
        assert_eq!(record.append_at_ns, Some(42));
        assert!(record.is_gzipped());
        record.check(9, 7).unwrap();
    }

    #[test]
    fn flagged_fields_past_the_body_are_absent() {
        let bytes = v3_record(b"abc", flags::HAS_NAME | flags::HAS_PAIRS, &[]);
        let record = NeedleRecord::parse(&bytes, Version::V3).unwrap();
        assert_eq!(record.name, None);
        assert_eq!(record.pairs, None);
    }

    #[test]
    fn overlong_name_is_an_error() {
        let bytes = v3_record(b"abc", flags::HAS_NAME, &[5, b'x']);
        assert!(matches!(
            NeedleRecord::parse(&bytes, Version::V3),
            Err(FormatError::FieldOutOfRange { field: "name", .. })
        ));
    }

    #[test]
    fn check_reports_each_mismatch() {
        let mut bytes = v3_record(b"abc", 0, &[]);
        let record = NeedleRecord::parse(&bytes, Version::V3).unwrap();
        assert!(matches!(record.check(8, 7), Err(FormatError::IdMismatch { expected: 8, found: 9 })));
        assert!(matches!(record.check(9, 6), Err(FormatError::CookieMismatch { .. })));
        assert!(matches!(record.check_indexed(9, 7, 3), Err(FormatError::SizeMismatch { .. })));
        bytes[20] ^= 1;
        let damaged = NeedleRecord::parse(&bytes, Version::V3).unwrap();
        assert!(matches!(damaged.check(9, 7), Err(FormatError::CrcMismatch { .. })));
    }

    #[test]
    fn legacy_checksum_is_accepted() {
        let mut bytes = v3_record(b"abc", 0, &[]);
        let crc_at = bytes.len() - 12;
        let legacy = crc::legacy_form(crc::crc32c(b"abc"));
        bytes[crc_at..crc_at + 4].copy_from_slice(&legacy.to_be_bytes());
        let record = NeedleRecord::parse(&bytes, Version::V3).unwrap();
        assert_eq!(record.checksum_form(), Some(ChecksumForm::Legacy));
        record.check(9, 7).unwrap();
    }

    #[test]
    fn short_record_is_an_error() {
        let bytes = v3_record(b"abc", 0, &[]);
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(NeedleRecord::parse(cut, Version::V3), Err(FormatError::TooShort { .. })));
        // The same bytes are a complete version 2 record plus 7 spare bytes.
        assert!(NeedleRecord::parse(cut, Version::V2).is_ok());
    }
}
