//! What a version 2/3 record stores after its data that decides how it is served: the flags,
//! the TTL and the last-modified flag, and the append time. A range read fetches these apart
//! from the data, to learn the gzip mark and whether the needle's TTL has expired, which
//! SeaweedFS's volume server checks on every read (`weed/storage/volume_read.go`,
//! `readNeedle`). Two small pieces suffice: the head of the body after the data (the flags
//! and every optional field before the pairs, at most [`META_HEAD_MAX_BYTES`]) and, in
//! version 3, the 8-byte append time after the checksum.

use std::ops::Range;

use super::record::{be_u64, BodyCursor};
use super::{flags, DataSpan, NeedleHeader, NeedleRecord};
use crate::error::FormatError;
use crate::ttl::{Ttl, TTL_SIZE_BYTES};
use crate::version::{Version, CHECKSUM_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES, TIMESTAMP_SIZE_BYTES};

/// The most bytes of a body after its data that hold the flags and the fields before the
/// pairs: flags, name and mime (a length byte and up to 255 bytes each), last modified (5)
/// and TTL (2).
pub const META_HEAD_MAX_BYTES: usize = 1 + (1 + 255) + (1 + 255) + 5 + TTL_SIZE_BYTES;
const _: () = assert!(META_HEAD_MAX_BYTES == 520);

/// The most bytes of a body after its data that its fields can take: the head, the pairs size
/// and up to 65,535 bytes of pairs. Bytes past these are read by no one (SeaweedFS neither).
pub const FIELDS_MAX_BYTES: usize = META_HEAD_MAX_BYTES + 2 + u16::MAX as usize;

/// A needle's flags and the fields that decide how it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeedleMeta {
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// Last-modified time in seconds, when flagged and present.
    pub last_modified: Option<u64>,
    /// Per-needle TTL, when flagged and present.
    pub ttl: Option<Ttl>,
    /// Append time in nanoseconds since the Unix epoch (version 3 only).
    pub append_at_ns: Option<u64>,
}

/// Where the bytes [`NeedleMeta::parse_head`] needs lie in a record (offsets from its start).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetaRanges {
    /// The head of the body after the data (empty for version 1 or an empty body).
    pub head: Range<u64>,
    /// The append time (version 3).
    pub append_at: Option<Range<u64>>,
}

impl NeedleMeta {
    /// The parts of a record with header `size` and data at `span` ([`super::check_header`]'s
    /// answer) that hold its meta.
    pub fn ranges(version: Version, size: u32, span: &DataSpan) -> MetaRanges {
        let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(size);
        let data_end = (span.data_offset_in_record + span.data_len).min(body_end);
        let head_end =
            if version == Version::V1 { data_end } else { body_end.min(data_end + META_HEAD_MAX_BYTES as u64) };
        let append_at_start = body_end + CHECKSUM_SIZE_BYTES as u64;
        MetaRanges {
            head: data_end..head_end,
            append_at: (version == Version::V3)
                .then_some(append_at_start..append_at_start + TIMESTAMP_SIZE_BYTES as u64),
        }
    }

    /// Parses the bytes of [`NeedleMeta::ranges`]: `head` (all of its range) and the 8 bytes
    /// of `append_at` (version 3). Like SeaweedFS, a flagged field with no bytes left in the
    /// body is absent.
    pub fn parse_head(
        head: &[u8],
        append_at: Option<&[u8]>,
        version: Version,
        header: NeedleHeader,
        span: &DataSpan,
    ) -> Result<NeedleMeta, FormatError> {
        let ranges = NeedleMeta::ranges(version, header.body_size_bytes()?, span);
        let head_bytes = (ranges.head.end - ranges.head.start) as usize;
        NeedleMeta::parse_after_data(head, head_bytes, false, append_at, version, header, span)
    }

    /// Parses every field of a record after its data, the pairs too, as a whole-record parse
    /// ([`NeedleRecord::parse`]) does: `fields` holds the body after the data, of which only
    /// the first [`FIELDS_MAX_BYTES`] are needed (a copy may stop there), and `append_at` the 8
    /// bytes of the append time (version 3). Lets a reader parse a private copy of these
    /// bytes instead of the record where it landed.
    pub fn parse_fields(
        fields: &[u8],
        append_at: Option<&[u8]>,
        version: Version,
        header: NeedleHeader,
        span: &DataSpan,
    ) -> Result<NeedleMeta, FormatError> {
        let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(header.body_size_bytes()?);
        let data_end = (span.data_offset_in_record + span.data_len).min(body_end);
        let needed = if version == Version::V1 { 0 } else { (body_end - data_end).min(FIELDS_MAX_BYTES as u64) };
        NeedleMeta::parse_after_data(fields, needed as usize, true, append_at, version, header, span)
    }

    fn parse_after_data(
        fields: &[u8],
        needed_bytes: usize,
        with_pairs: bool,
        append_at: Option<&[u8]>,
        version: Version,
        header: NeedleHeader,
        span: &DataSpan,
    ) -> Result<NeedleMeta, FormatError> {
        let fields = fields.get(..needed_bytes).ok_or(FormatError::TooShort {
            what: "needle fields after the data",
            needed_bytes: needed_bytes as u64,
            available_bytes: fields.len() as u64,
        })?;
        let mut parsed = NeedleRecord::empty(version, header);
        let mut cursor = BodyCursor::new(fields, (span.data_offset_in_record + span.data_len) as usize);
        if let Some(flag_byte) = cursor.take_optional("flags", 1, true)? {
            parsed.flags = flag_byte[0];
        }
        if with_pairs {
            parsed.read_optional_fields(&mut cursor)?;
        } else {
            parsed.read_fields_before_pairs(&mut cursor)?;
        }
        let ranges = NeedleMeta::ranges(version, header.body_size_bytes()?, span);
        if ranges.append_at.is_some() {
            let bytes = append_at.filter(|bytes| bytes.len() >= TIMESTAMP_SIZE_BYTES).ok_or(FormatError::TooShort {
                what: "needle append time",
                needed_bytes: TIMESTAMP_SIZE_BYTES as u64,
                available_bytes: append_at.map_or(0, |bytes| bytes.len() as u64),
            })?;
            parsed.append_at_ns = Some(be_u64(bytes));
        }
        Ok(parsed.meta())
    }

    /// SeaweedFS's "compressed" flag: the stored data is gzip.
    pub fn is_gzipped(&self) -> bool {
        self.flags & flags::IS_COMPRESSED != 0
    }

    /// Whether the volume server would answer "not found" because the needle's TTL ran out,
    /// at `now_unix_ns`: as `readNeedle` decides it, the needle must be flagged with a TTL of
    /// at least a minute and with a last-modified time, and the TTL runs from the append time
    /// (0 in version 2, so a version 2 needle with both flags has always expired).
    pub fn is_expired(&self, now_unix_ns: u64) -> bool {
        self.expires_at_ns().is_some_and(|at| now_unix_ns >= at)
    }

    /// When the needle expires (Unix ns), if it can: most needles have no TTL, and need no
    /// clock read to be served.
    pub fn expires_at_ns(&self) -> Option<u64> {
        let ttl = self.ttl.filter(|_| self.flags & flags::HAS_TTL != 0)?;
        let ttl_ns = ttl.seconds().saturating_mul(1_000_000_000);
        if ttl_ns == 0 || self.flags & flags::HAS_LAST_MODIFIED == 0 {
            return None;
        }
        Some(self.append_at_ns.unwrap_or(0).saturating_add(ttl_ns))
    }
}

impl NeedleRecord<'_> {
    /// This record's flags and the fields that decide how it is served.
    pub fn meta(&self) -> NeedleMeta {
        NeedleMeta {
            flags: self.flags,
            last_modified: self.last_modified,
            ttl: self.ttl,
            append_at_ns: self.append_at_ns,
        }
    }
}

/// Nanoseconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needle::check_header;
    use crate::ttl::unit;
    use crate::writer::{encode_needle, NeedleSpec};

    const MINUTE_NS: u64 = 60_000_000_000;

    fn spec<'a>(ttl: Option<Ttl>, last_modified: Option<u64>, pairs: &'a [u8]) -> NeedleSpec<'a> {
        NeedleSpec {
            cookie: 5,
            needle_id: 6,
            data: b"some bytes",
            name: Some(b"a.txt"),
            mime: Some(b"text/plain"),
            last_modified,
            ttl,
            pairs: Some(pairs),
            append_at_ns: 100 * MINUTE_NS,
            ..Default::default()
        }
    }

    /// The meta a range read gets from the two pieces equals the whole record's.
    fn meta_both_ways(version: Version, spec: &NeedleSpec) -> NeedleMeta {
        let record = encode_needle(version, spec).unwrap();
        let whole = NeedleRecord::parse(&record, version).unwrap();
        let size = whole.header.size as u32;
        let span = check_header(&record, version, 6, 5, size).unwrap();
        let ranges = NeedleMeta::ranges(version, size, &span);
        assert!(ranges.head.end - ranges.head.start <= META_HEAD_MAX_BYTES as u64);
        let slice = |range: &Range<u64>| &record[range.start as usize..range.end as usize];
        let append_at = ranges.append_at.as_ref().map(slice);
        let meta = NeedleMeta::parse_head(slice(&ranges.head), append_at, version, whole.header, &span).unwrap();
        assert_eq!(meta, whole.meta());
        let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(size);
        let fields = slice(&(ranges.head.start..body_end));
        assert_eq!(NeedleMeta::parse_fields(fields, append_at, version, whole.header, &span).unwrap(), meta);
        meta
    }

    #[test]
    fn range_reads_see_the_same_fields() {
        let long_pairs = format!("{{\"k\":\"{}\"}}", "v".repeat(3000));
        for version in Version::ALL {
            for pairs in [&b"{}"[..], long_pairs.as_bytes()] {
                meta_both_ways(version, &spec(Some(Ttl { count: 2, unit: unit::MINUTE }), Some(7), pairs));
                meta_both_ways(version, &spec(None, None, pairs));
            }
        }
    }

    #[test]
    fn expiry_follows_the_volume_server() {
        let two_minutes = Some(Ttl { count: 2, unit: unit::MINUTE });
        let meta = meta_both_ways(Version::V3, &spec(two_minutes, Some(7), b"{}"));
        assert!(!meta.is_expired(101 * MINUTE_NS));
        assert!(!meta.is_expired(102 * MINUTE_NS - 1));
        assert!(meta.is_expired(102 * MINUTE_NS));
        // Without a last-modified flag SeaweedFS never expires a needle.
        assert!(!meta_both_ways(Version::V3, &spec(two_minutes, None, b"{}")).is_expired(u64::MAX));
        assert!(!meta_both_ways(Version::V3, &spec(None, Some(7), b"{}")).is_expired(u64::MAX));
        // Version 2 stores no append time: the TTL runs from 0.
        assert!(meta_both_ways(Version::V2, &spec(two_minutes, Some(7), b"{}")).is_expired(MINUTE_NS * 2));
        let unknown_unit = Some(Ttl { count: 2, unit: 9 });
        assert!(!meta_both_ways(Version::V3, &spec(unknown_unit, Some(7), b"{}")).is_expired(u64::MAX));
    }

    /// A pairs size past the body fails the fields' parse as it fails the whole record's.
    #[test]
    fn broken_pairs_fail_like_the_whole_record() {
        let mut record = encode_needle(Version::V3, &spec(None, None, b"{\"a\":1}")).unwrap();
        let whole = NeedleRecord::parse(&record, Version::V3).unwrap();
        let (header, size) = (whole.header, whole.header.size as u32);
        // After the data: flags, name (1 + 5), mime (1 + 10), then the pairs size.
        let pairs_size_at = whole.data_range_in_record().end + 1 + 1 + 5 + 1 + 10;
        record[pairs_size_at..pairs_size_at + 2].copy_from_slice(&[0xff, 0xff]);
        assert!(NeedleRecord::parse(&record, Version::V3).is_err());
        let span = check_header(&record, Version::V3, 6, 5, size).unwrap();
        let ranges = NeedleMeta::ranges(Version::V3, size, &span);
        let body_end = NEEDLE_HEADER_SIZE_BYTES + size as usize;
        let fields = &record[ranges.head.start as usize..body_end];
        let append_at = ranges.append_at.map(|range| &record[range.start as usize..range.end as usize]);
        let parsed = NeedleMeta::parse_fields(fields, append_at, Version::V3, header, &span);
        assert!(matches!(parsed, Err(FormatError::FieldOutOfRange { field: "pairs", .. })));
    }

    #[test]
    fn short_pieces_are_errors() {
        let span = DataSpan { data_offset_in_record: 20, data_len: 0 };
        let header = NeedleHeader { cookie: 5, needle_id: 6, size: 12 };
        let short = NeedleMeta::parse_head(&[0; 4], Some(&[0; 8]), Version::V3, header, &span);
        assert!(matches!(short, Err(FormatError::TooShort { .. })));
        let no_time = NeedleMeta::parse_head(&[0; 8], None, Version::V3, header, &span);
        assert!(matches!(no_time, Err(FormatError::TooShort { .. })));
    }
}
