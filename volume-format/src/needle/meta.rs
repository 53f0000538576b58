//! What a version 2/3 record stores after its data: the flags, the optional fields, the
//! checksum and the append time. A range read fetches these bytes apart from the data, to
//! learn the gzip mark and whether the needle's TTL has expired, which SeaweedFS's volume
//! server checks on every read (`weed/storage/volume_read.go`, `readNeedle`).

use std::ops::Range;

use super::record::{be_u64, BodyCursor};
use super::{flags, DataSpan, NeedleHeader, NeedleRecord};
use crate::error::FormatError;
use crate::ttl::{Ttl, TTL_SIZE_BYTES};
use crate::version::{Version, CHECKSUM_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES};

/// The most bytes a valid body holds after its data: flags, name and mime (a length byte and
/// up to 255 bytes each), last modified (5), TTL (2), pairs (a 2-byte length and up to 65535).
pub const BODY_AFTER_DATA_MAX_BYTES: usize = 1 + (1 + 255) + (1 + 255) + 5 + TTL_SIZE_BYTES + (2 + 65535);
/// The most bytes [`NeedleMeta::parse_after_data`] needs: the above plus checksum and append time.
pub const AFTER_DATA_MAX_BYTES: usize = BODY_AFTER_DATA_MAX_BYTES + CHECKSUM_SIZE_BYTES + 8;

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

impl NeedleMeta {
    /// The bytes of a record [`NeedleMeta::parse_after_data`] needs, for a record whose header
    /// has `size` and whose data lies at `span` ([`super::check_header`]'s answer): from the end
    /// of the data to the end of the checksum (and v3 append time). Fails when the body claims
    /// more bytes after its data than any valid record has (a damaged record).
    pub fn range_after_data(version: Version, size: u32, span: &DataSpan) -> Result<Range<u64>, FormatError> {
        let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(size);
        let data_end = span.data_offset_in_record + span.data_len;
        let body_after_data = body_end.saturating_sub(data_end);
        if body_after_data > BODY_AFTER_DATA_MAX_BYTES as u64 {
            return Err(FormatError::AfterDataTooLong {
                size_bytes: body_after_data,
                max_bytes: BODY_AFTER_DATA_MAX_BYTES as u64,
            });
        }
        let tail_size = (CHECKSUM_SIZE_BYTES + version.timestamp_size_bytes()) as u64;
        Ok(data_end..body_end + tail_size)
    }

    /// Parses the bytes [`NeedleMeta::range_after_data`] named. Like SeaweedFS, a flagged field
    /// with no bytes left in the body is absent; version 1 records store nothing here.
    pub fn parse_after_data(
        after_data: &[u8],
        version: Version,
        header: NeedleHeader,
        span: &DataSpan,
    ) -> Result<NeedleMeta, FormatError> {
        let size = header.body_size_bytes()?;
        let range = NeedleMeta::range_after_data(version, size, span)?;
        let needed_bytes = range.end - range.start;
        if (after_data.len() as u64) < needed_bytes {
            return Err(FormatError::TooShort {
                what: "needle fields after the data",
                needed_bytes,
                available_bytes: after_data.len() as u64,
            });
        }
        let tail_size = CHECKSUM_SIZE_BYTES + version.timestamp_size_bytes();
        let body_after_data = needed_bytes as usize - tail_size;
        let mut parsed = NeedleRecord::empty(version, header);
        if version != Version::V1 {
            let mut cursor = BodyCursor::new(&after_data[..body_after_data], range.start as usize);
            if let Some(flag_byte) = cursor.take_optional("flags", 1, true)? {
                parsed.flags = flag_byte[0];
            }
            parsed.read_optional_fields(&mut cursor)?;
        }
        let append_at = body_after_data + CHECKSUM_SIZE_BYTES;
        if version == Version::V3 {
            parsed.append_at_ns = Some(be_u64(&after_data[append_at..append_at + 8]));
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
        let Some(ttl) = self.ttl.filter(|_| self.flags & flags::HAS_TTL != 0) else { return false };
        let ttl_ns = ttl.seconds().saturating_mul(1_000_000_000);
        if ttl_ns == 0 || self.flags & flags::HAS_LAST_MODIFIED == 0 {
            return false;
        }
        now_unix_ns >= self.append_at_ns.unwrap_or(0).saturating_add(ttl_ns)
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

    fn spec(ttl: Option<Ttl>, last_modified: Option<u64>) -> NeedleSpec<'static> {
        NeedleSpec {
            cookie: 5,
            needle_id: 6,
            data: b"some bytes",
            name: Some(b"a.txt"),
            last_modified,
            ttl,
            pairs: Some(b"{\"k\":\"v\"}"),
            append_at_ns: 100 * MINUTE_NS,
            ..Default::default()
        }
    }

    /// The meta a range read gets from the bytes after the data equals the whole record's.
    fn meta_both_ways(version: Version, spec: &NeedleSpec) -> NeedleMeta {
        let record = encode_needle(version, spec).unwrap();
        let whole = NeedleRecord::parse(&record, version).unwrap();
        let span = check_header(&record, version, 6, 5, whole.header.size as u32).unwrap();
        let range = NeedleMeta::range_after_data(version, whole.header.size as u32, &span).unwrap();
        let after = &record[range.start as usize..range.end as usize];
        let meta = NeedleMeta::parse_after_data(after, version, whole.header, &span).unwrap();
        assert_eq!(meta, whole.meta());
        meta
    }

    #[test]
    fn range_reads_see_the_same_fields() {
        for version in Version::ALL {
            meta_both_ways(version, &spec(Some(Ttl { count: 2, unit: unit::MINUTE }), Some(7)));
            meta_both_ways(version, &spec(None, None));
        }
    }

    #[test]
    fn expiry_follows_the_volume_server() {
        let two_minutes = Some(Ttl { count: 2, unit: unit::MINUTE });
        let meta = meta_both_ways(Version::V3, &spec(two_minutes, Some(7)));
        assert!(!meta.is_expired(101 * MINUTE_NS));
        assert!(!meta.is_expired(102 * MINUTE_NS - 1));
        assert!(meta.is_expired(102 * MINUTE_NS));
        // Without a last-modified flag SeaweedFS never expires a needle.
        assert!(!meta_both_ways(Version::V3, &spec(two_minutes, None)).is_expired(u64::MAX));
        assert!(!meta_both_ways(Version::V3, &spec(None, Some(7))).is_expired(u64::MAX));
        // Version 2 stores no append time: the TTL runs from 0.
        assert!(meta_both_ways(Version::V2, &spec(two_minutes, Some(7))).is_expired(MINUTE_NS * 2));
        let unknown_unit = Some(Ttl { count: 2, unit: 9 });
        assert!(!meta_both_ways(Version::V3, &spec(unknown_unit, Some(7))).is_expired(u64::MAX));
    }

    #[test]
    fn damaged_sizes_are_errors() {
        let span = DataSpan { data_offset_in_record: 20, data_len: 0 };
        assert!(matches!(
            NeedleMeta::range_after_data(Version::V3, 1 << 20, &span),
            Err(FormatError::AfterDataTooLong { .. })
        ));
        let header = NeedleHeader { cookie: 5, needle_id: 6, size: 12 };
        let short = NeedleMeta::parse_after_data(&[0; 4], Version::V3, header, &span);
        assert!(matches!(short, Err(FormatError::TooShort { .. })));
    }
}
