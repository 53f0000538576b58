//! SQE decode and validation (`shm_layout::entry`), as the engine runs them on every entry
//! a client writes into its SQ.
//!
//! Input: 64 bytes of entry, then up to 8 bytes (little-endian) of buffer-area size; a
//! missing size is the 1 MiB area of a small region.
//!
//! What must hold:
//! - no panic, for any bytes and any area size;
//! - the entry round-trips: its bytes read back are the same bytes;
//! - decode never accepts what validation rejects: an accepted entry has no flag or reserved
//!   bit set, its unused fields are zero, and a read names a non-empty buffer of at most
//!   `MAX_BUFFER_LENGTH_BYTES` inside the area, with a range that does not overflow;
//! - an accepted request rebuilt as an entry validates to the same request (one meaning
//!   per entry), and a rejected entry's error code is in the table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_layout::entry::{opcode, ErrorCode, Request, Sqe, MAX_BUFFER_LENGTH_BYTES};
use zerocopy::{FromBytes, IntoBytes};

const DEFAULT_AREA_SIZE_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((entry_bytes, rest)) = data.split_first_chunk::<64>() else { return };
    let area_size_bytes = rdma_fuzz::trailing_u64_le(rest, DEFAULT_AREA_SIZE_BYTES);
    let sqe = Sqe::read_from_bytes(entry_bytes).expect("64 bytes are one entry");
    assert_eq!(sqe.as_bytes(), entry_bytes, "an entry's bytes must read back unchanged");

    match sqe.validate(area_size_bytes) {
        Ok(request) => {
            check_accepted(&sqe, &request, area_size_bytes);
            let rebuilt = rebuild(&sqe, &request);
            assert_eq!(rebuilt.validate(area_size_bytes), Ok(request), "rebuilt entry {rebuilt:?}");
        }
        Err(code) => assert_eq!(ErrorCode::from_result(code.result()), Some(code)),
    }
});

fn check_accepted(sqe: &Sqe, request: &Request, area_size_bytes: u64) {
    assert_eq!((sqe.flags, sqe._reserved), (0, 0), "accepted with flags or reserved bits: {sqe:?}");
    match request {
        Request::Nop => {
            assert_eq!(sqe.opcode, opcode::NOP);
            assert_eq!(Sqe { deadline_ns: 0, ..*sqe }, Sqe::nop(sqe.user_data), "NOP with fields set: {sqe:?}");
        }
        Request::Cancel { target_user_data } => {
            assert_eq!(sqe.opcode, opcode::CANCEL);
            assert_eq!(*target_user_data, sqe.needle_id);
        }
        Request::ReadNeedle(read) => {
            assert!(read.buffer_length > 0 && read.buffer_length <= MAX_BUFFER_LENGTH_BYTES, "{read:?}");
            let end = read.buffer_offset.checked_add(u64::from(read.buffer_length));
            assert!(end.is_some_and(|end| end <= area_size_bytes), "buffer outside the area: {read:?}");
            assert_eq!((read.volume_id, read.needle_id, read.cookie), (sqe.volume_id, sqe.needle_id, sqe.cookie));
            match read.range {
                None => assert_eq!((sqe.opcode, sqe.range_offset, sqe.range_length), (opcode::READ_NEEDLE, 0, 0)),
                Some(range) => {
                    assert_eq!(sqe.opcode, opcode::READ_RANGE);
                    assert!(range.length > 0 && range.offset.checked_add(range.length).is_some(), "{range:?}");
                }
            }
        }
    }
}

/// The entry a well-behaved client writes for `request`, with the same `user_data` and
/// deadline as the original.
fn rebuild(sqe: &Sqe, request: &Request) -> Sqe {
    let base = Sqe { deadline_ns: sqe.deadline_ns, ..Sqe::nop(sqe.user_data) };
    match *request {
        Request::Nop => base,
        Request::Cancel { target_user_data } => {
            Sqe { deadline_ns: sqe.deadline_ns, ..Sqe::cancel(sqe.user_data, target_user_data) }
        }
        Request::ReadNeedle(read) => {
            let (opcode, range_offset, range_length) = match read.range {
                None => (opcode::READ_NEEDLE, 0, 0),
                Some(range) => (opcode::READ_RANGE, range.offset, range.length),
            };
            Sqe {
                opcode,
                volume_id: read.volume_id,
                needle_id: read.needle_id,
                cookie: read.cookie,
                buffer_offset: read.buffer_offset,
                buffer_length: read.buffer_length,
                range_offset,
                range_length,
                ..base
            }
        }
    }
}
