//! The needle check every transport runs before a read completes: the
//! bytes that landed in the client's buffer must be the needle asked for
//! (id, cookie, size against the index) and, for whole reads, pass their
//! CRC-32C. A failed check never becomes a successful completion.
//!
//! The client's buffer is shared memory its owner can write at any time, so a landed record
//! is never parsed where it lies: what decides the answer (header, data size, the fields after
//! the data, checksum, append time) is copied into a [`CheckCopy`] once and parsed there, and
//! the CRC is computed once, over the data in the buffer. A client that writes its buffer
//! meanwhile can only make its own read fail its check.
//!
//! A needle whose TTL has run out is served as the volume server serves it: not found
//! (`NO_SUCH_NEEDLE`; the volume server answers 404, as for a needle never written). Whole
//! reads decide it from the record they fetched; range reads from the bytes after the data
//! ([`check_meta`]).

use std::ptr::NonNull;

use shm_layout::entry::ErrorCode;
use volume_format::crc;
use volume_format::error::FormatError;
use volume_format::needle::{check_header, unix_now_ns, DataSpan, NeedleHeader, NeedleMeta, FIELDS_MAX_BYTES};
use volume_format::version::{Version, CHECKSUM_SIZE_BYTES, NEEDLE_HEADER_SIZE_BYTES, TIMESTAMP_SIZE_BYTES};

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

/// The engine's private copy of what a whole-record check parses (one per transport: the
/// check runs on the poller thread, once the record has landed).
pub struct CheckCopy {
    prefix: [u8; CHECK_HEADER_PREFIX_SIZE_BYTES],
    fields: Box<[u8]>,
    checksum: [u8; CHECKSUM_SIZE_BYTES],
    append_at: [u8; TIMESTAMP_SIZE_BYTES],
}

impl Default for CheckCopy {
    fn default() -> CheckCopy {
        CheckCopy {
            prefix: [0; CHECK_HEADER_PREFIX_SIZE_BYTES],
            fields: vec![0; FIELDS_MAX_BYTES].into_boxed_slice(),
            checksum: [0; CHECKSUM_SIZE_BYTES],
            append_at: [0; TIMESTAMP_SIZE_BYTES],
        }
    }
}

impl std::fmt::Debug for CheckCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCopy").finish_non_exhaustive()
    }
}

/// Copies `destination.len()` bytes from `offset` of the landed record at `record`.
///
/// # Safety
/// `record..record + offset + destination.len()` lies inside the record's buffer range.
unsafe fn copy_out(record: NonNull<u8>, offset: u64, destination: &mut [u8]) {
    // SAFETY: in the record's range (caller); `destination` is ours and does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(record.as_ptr().add(offset as usize), destination.as_mut_ptr(), destination.len())
    };
}

/// Checks a whole record of `record_size_bytes` (the index's size rounded up to a record) that
/// landed at `record`: header against the index and the file id, every field after the data,
/// then the CRC, all parsed from `copy`.
///
/// # Safety
/// `record..record + record_size_bytes` is a buffer range of the engine's mapping that no
/// transport writes any more (the record has landed).
pub unsafe fn check_landed_record(
    record: NonNull<u8>,
    record_size_bytes: u64,
    version: Version,
    needle_id: u64,
    cookie: u32,
    index_size: u32,
    copy: &mut CheckCopy,
) -> Result<Checked, ErrorCode> {
    let too_short = || ErrorCode::CORRUPT_NEEDLE;
    let prefix_length = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(record_size_bytes) as usize;
    // SAFETY: at most the record's size.
    unsafe { copy_out(record, 0, &mut copy.prefix[..prefix_length]) };
    let prefix = &copy.prefix[..prefix_length];
    let span = check_range_prefix(prefix, version, needle_id, cookie, index_size)?;
    let header = NeedleHeader::parse(prefix).map_err(|error| error_code(&error))?;
    let body_end = NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(index_size);
    let tail_end = body_end + (CHECKSUM_SIZE_BYTES + version.timestamp_size_bytes()) as u64;
    if tail_end > record_size_bytes {
        return Err(too_short());
    }
    let data_end = span.data_offset_in_record + span.data_len;
    let fields_length =
        if version == Version::V1 { 0 } else { (body_end - data_end).min(FIELDS_MAX_BYTES as u64) as usize };
    // SAFETY: this and the two copies below end at or before `tail_end`, inside the record
    // (checked above; `check_header` proved the data fits the body).
    unsafe { copy_out(record, data_end, &mut copy.fields[..fields_length]) };
    // SAFETY: as above.
    unsafe { copy_out(record, body_end, &mut copy.checksum) };
    let append_at = if version == Version::V3 {
        // SAFETY: as above.
        unsafe { copy_out(record, body_end + CHECKSUM_SIZE_BYTES as u64, &mut copy.append_at) };
        Some(&copy.append_at[..])
    } else {
        None
    };
    let meta = NeedleMeta::parse_fields(&copy.fields[..fields_length], append_at, version, header, &span)
        .map_err(|error| error_code(&error))?;
    if span.data_len > 0 {
        // SAFETY: the data lies inside the record (check_header); read once, here.
        let data = unsafe {
            std::slice::from_raw_parts(record.as_ptr().add(span.data_offset_in_record as usize), span.data_len as usize)
        };
        if crc::match_form(u32::from_be_bytes(copy.checksum), crc::crc32c(data)).is_none() {
            return Err(ErrorCode::CRC_MISMATCH);
        }
    }
    check_meta(&meta)?;
    Ok(Checked {
        data_offset_in_record: span.data_offset_in_record,
        data_length: span.data_len,
        gzipped: meta.is_gzipped(),
    })
}

/// Whether a needle that passed its check may be served: `NO_SUCH_NEEDLE` once its TTL has
/// run out (the volume server's rule, [`NeedleMeta::is_expired`]).
pub fn check_meta(meta: &NeedleMeta) -> Result<(), ErrorCode> {
    // The clock is read only for a needle with a TTL.
    if meta.expires_at_ns().is_some_and(|at| unix_now_ns() >= at) {
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
