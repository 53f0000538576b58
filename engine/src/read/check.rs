//! The needle check every transport runs before a read completes: the
//! bytes that landed in the client's buffer must be the needle asked for
//! (id, cookie, size against the index) and, for whole reads, pass their
//! CRC-32C. A failed check never becomes a successful completion.
//!
//! A needle whose TTL has run out is served as the volume server serves it: not found
//! (`NO_SUCH_NEEDLE`; the volume server answers 404, as for a needle never written). Whole
//! reads decide it from the record they fetched; range reads from the bytes after the data
//! ([`check_meta`]).

use shm_layout::entry::ErrorCode;
use volume_format::error::FormatError;
use volume_format::needle::{check_header, unix_now_ns, DataSpan, NeedleMeta, NeedleRecord};
use volume_format::version::Version;

/// Bytes a range read fetches first to check the header.
pub use volume_format::needle::CHECK_HEADER_PREFIX_SIZE_BYTES;

/// Where a checked needle's data lies in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub data_offset_in_record: u64,
    pub data_length: u64,
    pub gzipped: bool,
}

/// The completion code for a failed check.
pub fn error_code(error: &FormatError) -> ErrorCode {
    match error {
        FormatError::CookieMismatch { .. } => ErrorCode::COOKIE_MISMATCH,
        FormatError::CrcMismatch { .. } => ErrorCode::CRC_MISMATCH,
        _ => ErrorCode::CORRUPT_NEEDLE,
    }
}

/// Checks a whole record: header against the index and the file id, then CRC.
pub fn check_whole(
    record: &[u8],
    version: Version,
    needle_id: u64,
    cookie: u32,
    index_size: u32,
) -> Result<Checked, ErrorCode> {
    let parsed = NeedleRecord::parse(record, version).map_err(|error| error_code(&error))?;
    parsed.check_indexed(needle_id, cookie, index_size).map_err(|error| error_code(&error))?;
    check_meta(&parsed.meta())?;
    Ok(Checked {
        data_offset_in_record: parsed.data_offset_in_record as u64,
        data_length: parsed.data.len() as u64,
        gzipped: parsed.is_gzipped(),
    })
}

/// Whether a needle that passed its check may be served: `NO_SUCH_NEEDLE` once its TTL has
/// run out (the volume server's rule, [`NeedleMeta::is_expired`]).
pub fn check_meta(meta: &NeedleMeta) -> Result<(), ErrorCode> {
    if meta.is_expired(unix_now_ns()) {
        return Err(ErrorCode::NO_SUCH_NEEDLE);
    }
    Ok(())
}

/// Checks the first [`CHECK_HEADER_PREFIX_SIZE_BYTES`] of a record for a
/// range read; says where the data lies.
pub fn check_range_prefix(
    prefix: &[u8],
    version: Version,
    needle_id: u64,
    cookie: u32,
    index_size: u32,
) -> Result<DataSpan, ErrorCode> {
    check_header(prefix, version, needle_id, cookie, index_size).map_err(|error| error_code(&error))
}

/// The part of a needle's data a range asks for, clamped to the data's end
/// as an HTTP Range is; a range starting at or past the end is an error.
pub fn clamp_range(span: &DataSpan, offset: u64, length: u64) -> Result<(u64, u64), ErrorCode> {
    if offset >= span.data_len {
        return Err(ErrorCode::RANGE_OUT_OF_BOUNDS);
    }
    let length = length.min(span.data_len - offset);
    Ok((span.data_offset_in_record + offset, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_clamped_like_http() {
        let span = DataSpan { data_offset_in_record: 20, data_len: 100 };
        assert_eq!(clamp_range(&span, 0, 10), Ok((20, 10)));
        assert_eq!(clamp_range(&span, 90, 50), Ok((110, 10)));
        assert_eq!(clamp_range(&span, 100, 1), Err(ErrorCode::RANGE_OUT_OF_BOUNDS));
    }
}
