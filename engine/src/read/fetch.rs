//! One needle read as every transport drives it: which bytes of the `.dat` to fetch, into the
//! client's buffer or the read's scratch, and the check once they have landed. The local
//! transport (`pread`, io_uring) and the RDMA transport (gets) both run this machine, so what a
//! read fetches and how a landed needle is checked ([`super::check`]) is written once.
//!
//! ```text
//!  whole read:  record ─► buffer ─────────────────────────────► check (private copy, CRC) ─► done
//!  range read:  prefix ─► scratch ─► check header, clamp ─► range ─► buffer  ─► meta (TTL) ─► done
//!                                                          meta  ─► scratch ┘
//! ```
//!
//! A check that fails is handed back as [`Step::CheckFailed`]: the transport may refresh what
//! it knows of the volume (it may have been compacted) and start the read again, once.

use std::ptr::NonNull;

use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use volume_format::needle::{record_size_bytes, DataSpan, NeedleHeader, NeedleMeta, META_HEAD_MAX_BYTES};
use volume_format::version::{Version, NEEDLE_HEADER_SIZE_BYTES, TIMESTAMP_SIZE_BYTES};

use super::check::{self, CheckCopy, CHECK_HEADER_PREFIX_SIZE_BYTES};
use super::{ReadDone, ReadResult};

/// Bytes of scratch a read needs while it is in flight: the record prefix at 0, the v3 append
/// time at [`SCRATCH_APPEND_AT_OFFSET`], the head of the body after the data (flags, name,
/// mime, last modified, TTL) at [`SCRATCH_META_HEAD_OFFSET`].
pub const SCRATCH_BYTES: usize = 576;
const SCRATCH_APPEND_AT_OFFSET: usize = 24;
const SCRATCH_META_HEAD_OFFSET: usize = 32;
const _: () = assert!(CHECK_HEADER_PREFIX_SIZE_BYTES <= SCRATCH_APPEND_AT_OFFSET);
const _: () = assert!(SCRATCH_APPEND_AT_OFFSET + TIMESTAMP_SIZE_BYTES <= SCRATCH_META_HEAD_OFFSET);
const _: () = assert!(SCRATCH_META_HEAD_OFFSET + META_HEAD_MAX_BYTES <= SCRATCH_BYTES);

/// Where a fetched piece goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Into {
    /// The start of the client's buffer range (the SQE's).
    Buffer,
    /// This offset of the read's scratch.
    Scratch(usize),
}

/// Bytes of the `.dat` to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub file_offset: u64,
    pub length_bytes: u64,
    pub into: Into,
}

/// The pieces of one phase, fetched in any order (at most three: a range and its meta).
pub type Pieces = [Option<Piece>; 3];

/// What the transport does next for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fetch these pieces, then call [`NeedleFetch::landed`].
    Fetch(Pieces),
    /// The read is over.
    Done(ReadResult),
    /// What landed is not the needle the index promised: the volume may have been replaced.
    CheckFailed(ErrorCode),
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Whole {
        record_size_bytes: u64,
    },
    RangePrefix,
    /// `span`: where the data lies in the record, to find its meta again when it has landed.
    RangeData {
        length_bytes: u64,
        span: DataSpan,
    },
}

/// One read's progress through its phases.
#[derive(Clone, Copy, Debug)]
pub struct NeedleFetch {
    read: NeedleRead,
    version: Version,
    record_offset: u64,
    index_size: u32,
    phase: Phase,
}

impl NeedleFetch {
    /// Starts `read` of the record the index puts at `record_offset` with header size
    /// `index_size` in a volume of `version`.
    pub fn begin(read: &NeedleRead, version: Version, record_offset: u64, index_size: u32) -> (NeedleFetch, Step) {
        let record_size = record_size_bytes(version, index_size);
        let (phase, step) = match read.range {
            None if record_size > u64::from(read.buffer_length) => {
                (Phase::RangePrefix, Step::Done(Err((ErrorCode::BUFFER_TOO_SMALL, record_size))))
            }
            None => (
                Phase::Whole { record_size_bytes: record_size },
                fetch([Some(Piece { file_offset: record_offset, length_bytes: record_size, into: Into::Buffer })]),
            ),
            Some(_) => {
                let length_bytes = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(record_size);
                let prefix = Piece { file_offset: record_offset, length_bytes, into: Into::Scratch(0) };
                (Phase::RangePrefix, fetch([Some(prefix)]))
            }
        };
        (NeedleFetch { read: *read, version, record_offset, index_size, phase }, step)
    }

    /// The record's size as the index says (what a whole read fetches).
    pub fn record_size_bytes(&self) -> u64 {
        record_size_bytes(self.version, self.index_size)
    }

    /// Every piece of the last [`Step::Fetch`] has landed: check and say what comes next.
    ///
    /// # Safety
    /// `buffer` is the start of the read's validated buffer range in the engine's mapping and
    /// no transport writes into it any more; `scratch` holds what was fetched into it.
    pub unsafe fn landed(&mut self, buffer: NonNull<u8>, scratch: &[u8; SCRATCH_BYTES], copy: &mut CheckCopy) -> Step {
        let read = self.read;
        match self.phase {
            Phase::Whole { record_size_bytes } => {
                // SAFETY: the record landed in the buffer range (caller), which holds it.
                let checked = unsafe {
                    check::check_landed_record(
                        buffer,
                        record_size_bytes,
                        self.version,
                        read.needle_id,
                        read.cookie,
                        self.index_size,
                        copy,
                    )
                };
                match checked {
                    Ok(checked) => Step::Done(Ok(ReadDone {
                        data_offset_in_buffer: checked.data_offset_in_record,
                        data_length: checked.data_length,
                        gzipped: checked.gzipped,
                    })),
                    // An expired needle is not a failed check.
                    Err(ErrorCode::NO_SUCH_NEEDLE) => Step::Done(Err((ErrorCode::NO_SUCH_NEEDLE, 0))),
                    Err(code) => Step::CheckFailed(code),
                }
            }
            Phase::RangePrefix => self.prefix_landed(scratch),
            Phase::RangeData { length_bytes, span } => self.range_landed(length_bytes, &span, scratch),
        }
    }

    /// Every piece of the last [`Step::Fetch`] has landed, and the check reads none of them in
    /// a client's buffer: the phases of a range read. `None` for a whole read, whose check
    /// reads the record where it landed (use [`NeedleFetch::landed`]). The stream transport's
    /// exporter runs the range phases with this on its own scratch.
    pub fn landed_in_scratch(&mut self, scratch: &[u8; SCRATCH_BYTES]) -> Option<Step> {
        match self.phase {
            Phase::Whole { .. } => None,
            Phase::RangePrefix => Some(self.prefix_landed(scratch)),
            Phase::RangeData { length_bytes, span } => Some(self.range_landed(length_bytes, &span, scratch)),
        }
    }

    /// The record prefix is in the scratch: check the header, clamp the range (as HTTP does),
    /// then fetch the range into the buffer and the meta after the data into the scratch.
    fn prefix_landed(&mut self, scratch: &[u8; SCRATCH_BYTES]) -> Step {
        let read = self.read;
        let prefix_length = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(self.record_size_bytes()) as usize;
        let span = match check::check_range_prefix(
            &scratch[..prefix_length],
            self.version,
            read.needle_id,
            read.cookie,
            self.index_size,
        ) {
            Ok(span) => span,
            Err(code) => return Step::CheckFailed(code),
        };
        let range = read.range.unwrap_or(ByteRange { offset: 0, length: 0 });
        let (offset_in_record, length_bytes) = match check::clamp_range(&span, range.offset, range.length) {
            Ok(clamped) => clamped,
            Err(code) => return Step::Done(Err((code, 0))),
        };
        if length_bytes > u64::from(read.buffer_length) {
            return Step::Done(Err((ErrorCode::BUFFER_TOO_SMALL, length_bytes)));
        }
        let ranges = NeedleMeta::ranges(self.version, self.index_size, &span);
        let record_offset = self.record_offset;
        let piece = |range: &std::ops::Range<u64>, scratch_offset| {
            (range.end > range.start).then_some(Piece {
                file_offset: record_offset + range.start,
                length_bytes: range.end - range.start,
                into: Into::Scratch(scratch_offset),
            })
        };
        let data = Piece { file_offset: record_offset + offset_in_record, length_bytes, into: Into::Buffer };
        self.phase = Phase::RangeData { length_bytes, span };
        fetch([
            (length_bytes > 0).then_some(data),
            piece(&ranges.head, SCRATCH_META_HEAD_OFFSET),
            ranges.append_at.as_ref().and_then(|range| piece(range, SCRATCH_APPEND_AT_OFFSET)),
        ])
    }

    /// A range and its meta have landed: the needle is served unless its TTL has run out.
    fn range_landed(&self, length_bytes: u64, span: &DataSpan, scratch: &[u8; SCRATCH_BYTES]) -> Step {
        let ranges = NeedleMeta::ranges(self.version, self.index_size, span);
        let head_length = (ranges.head.end - ranges.head.start) as usize;
        let head = &scratch[SCRATCH_META_HEAD_OFFSET..SCRATCH_META_HEAD_OFFSET + head_length];
        let append_at = ranges
            .append_at
            .as_ref()
            .map(|_| &scratch[SCRATCH_APPEND_AT_OFFSET..SCRATCH_APPEND_AT_OFFSET + TIMESTAMP_SIZE_BYTES]);
        let meta = NeedleHeader::parse(&scratch[..NEEDLE_HEADER_SIZE_BYTES])
            .and_then(|header| NeedleMeta::parse_head(head, append_at, self.version, header, span))
            .map_err(|error| check::error_code(&error));
        match meta {
            Err(code) => Step::CheckFailed(code),
            Ok(meta) => Step::Done(check::check_meta(&meta).map_err(|code| (code, 0)).map(|()| ReadDone {
                data_offset_in_buffer: 0,
                data_length: length_bytes,
                gzipped: meta.is_gzipped(),
            })),
        }
    }
}

fn fetch<const N: usize>(pieces: [Option<Piece>; N]) -> Step {
    let mut all = [None; 3];
    all[..N].copy_from_slice(&pieces);
    Step::Fetch(all)
}

impl Piece {
    /// Where this piece lands: in the read's buffer range (`buffer`, `buffer_length` bytes) or
    /// its scratch (`scratch`, [`SCRATCH_BYTES`]); `None` when it would not fit there, which
    /// the phases above never ask (the check is kept so no piece is written out of bounds).
    pub fn destination(&self, buffer: NonNull<u8>, buffer_length: u32, scratch: NonNull<u8>) -> Option<NonNull<u8>> {
        let (base, offset, room) = match self.into {
            Into::Buffer => (buffer, 0, u64::from(buffer_length)),
            Into::Scratch(offset) => (scratch, offset, SCRATCH_BYTES as u64),
        };
        let fits = (offset as u64).checked_add(self.length_bytes).is_some_and(|end| end <= room);
        // SAFETY: offset + length is inside the destination (checked just above).
        fits.then(|| unsafe { base.add(offset) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume_format::crc::ChecksumForm;
    use volume_format::writer::{encode_needle, NeedleSpec};

    /// Runs a read to its end against `file` (a record at offset 8), fetching as a transport
    /// would; returns the result and the buffer.
    fn run(
        file: &[u8],
        version: Version,
        size: u32,
        range: Option<ByteRange>,
        buffer_length: u32,
    ) -> (ReadResult, Vec<u8>) {
        let read = NeedleRead { volume_id: 1, needle_id: 6, cookie: 5, buffer_offset: 0, buffer_length, range };
        let mut buffer = vec![0u8; buffer_length as usize];
        let mut scratch = [0u8; SCRATCH_BYTES];
        let mut copy = CheckCopy::default();
        let (mut fetch, mut step) = NeedleFetch::begin(&read, version, 8, size);
        for _phase in 0..3 {
            let pieces = match step {
                Step::Fetch(pieces) => pieces,
                Step::Done(result) => return (result, buffer),
                Step::CheckFailed(code) => return (Err((code, u64::MAX)), buffer),
            };
            let base = NonNull::new(buffer.as_mut_ptr()).unwrap();
            for piece in pieces.iter().flatten() {
                let destination = piece.destination(base, buffer_length, NonNull::from(&mut scratch).cast()).unwrap();
                let bytes = &file[piece.file_offset as usize..(piece.file_offset + piece.length_bytes) as usize];
                // SAFETY: `destination` has room for the piece (checked by destination()).
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), destination.as_ptr(), bytes.len()) };
            }
            // SAFETY: every piece landed; the buffer is ours.
            step = unsafe { fetch.landed(base, &scratch, &mut copy) };
        }
        panic!("a read took more than two phases");
    }

    #[test]
    fn whole_and_range_reads_serve_the_needle_in_every_version() {
        let pairs = format!("{{\"k\":\"{}\"}}", "v".repeat(3000));
        for version in Version::ALL {
            for checksum_form in [ChecksumForm::Raw, ChecksumForm::Legacy] {
                let spec = NeedleSpec {
                    cookie: 5,
                    needle_id: 6,
                    data: b"0123456789abcdef",
                    name: Some(b"n"),
                    pairs: Some(pairs.as_bytes()),
                    is_gzipped: true,
                    checksum_form,
                    ..Default::default()
                };
                let record = encode_needle(version, &spec).unwrap();
                let size = u32::from_be_bytes(record[12..16].try_into().unwrap());
                let mut file = vec![0u8; 8];
                file.extend_from_slice(&record);
                let (whole, buffer) = run(&file, version, size, None, record.len() as u32);
                let done = whole.unwrap();
                let data = &buffer[done.data_offset_in_buffer as usize..][..done.data_length as usize];
                assert_eq!(data, spec.data);
                assert_eq!(done.gzipped, version != Version::V1);
                let (ranged, buffer) = run(&file, version, size, Some(ByteRange { offset: 10, length: 100 }), 64);
                assert_eq!(ranged.unwrap().data_length, 6);
                assert_eq!(&buffer[..6], b"abcdef");
                let (small, _) = run(&file, version, size, None, 8);
                assert_eq!(small, Err((ErrorCode::BUFFER_TOO_SMALL, record.len() as u64)));
                let mut rotten = file.clone();
                rotten[8 + 25] ^= 1;
                assert_eq!(
                    run(&rotten, version, size, None, record.len() as u32).0,
                    Err((ErrorCode::CRC_MISMATCH, u64::MAX))
                );
                let mut wrong_cookie = file.clone();
                wrong_cookie[8] ^= 1;
                let (failed, _) = run(&wrong_cookie, version, size, Some(ByteRange { offset: 0, length: 1 }), 64);
                assert_eq!(failed, Err((ErrorCode::COOKIE_MISMATCH, u64::MAX)));
            }
        }
    }
}
