//! Submission and completion entries, the operation codes, and the one table
//! of error codes a completion can carry.
//!
//! An SQE is written by the client and read by the engine exactly once, by
//! copying all 64 bytes out of the ring ([`crate::ring`]); the copy is then
//! validated with [`Sqe::validate`] against the region's buffer area. Nothing
//! about an SQE is trusted before that.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Operation codes (`Sqe::opcode`). Zero is deliberately not an operation, so
/// a zeroed or wiped entry is rejected.
pub mod opcode {
    /// No operation: completes with result 0. For benchmarks and liveness.
    pub const NOP: u8 = 1;
    /// Read a whole needle into the buffer, validated (cookie, id, size, CRC).
    pub const READ_NEEDLE: u8 = 2;
    /// Read `range_length` bytes at `range_offset` of a needle's data; the
    /// needle header is still checked.
    pub const READ_RANGE: u8 = 3;
    /// Cancel the in-flight request whose `user_data` is `cancel_user_data()`.
    pub const CANCEL: u8 = 4;
}

/// One submission queue entry: 64 bytes, written by the client.
///
/// Field use by operation:
/// - `NOP`: only `user_data` and `deadline_ns`.
/// - `READ_NEEDLE`: `volume_id`, `needle_id`, `cookie`, `buffer_offset`, `buffer_length`.
/// - `READ_RANGE`: the above plus `range_offset`, `range_length`.
/// - `CANCEL`: `needle_id` carries the target's `user_data`.
///
/// Unused fields must be zero; `flags` must be zero (no flags are defined).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub _reserved: u16,
    pub volume_id: u32,
    /// Echoed unchanged in the completion.
    pub user_data: u64,
    pub needle_id: u64,
    pub cookie: u32,
    /// Length of the destination buffer, in bytes.
    pub buffer_length: u32,
    /// Offset of the destination buffer from the start of the buffer area.
    pub buffer_offset: u64,
    pub range_offset: u64,
    pub range_length: u64,
    /// Absolute `CLOCK_MONOTONIC` time in ns after which the engine fails the
    /// request with `DEADLINE_EXCEEDED`; 0 means the engine's default.
    pub deadline_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Sqe>() == 64);
const _: () = assert!(core::mem::offset_of!(Sqe, user_data) == 8);
const _: () = assert!(core::mem::offset_of!(Sqe, buffer_offset) == 32);
const _: () = assert!(core::mem::offset_of!(Sqe, deadline_ns) == 56);

/// One completion queue entry: 32 bytes, written by the engine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Cqe {
    /// The submission's `user_data`, unchanged.
    pub user_data: u64,
    /// A byte count (>= 0) or a negative [`ErrorCode`].
    pub result: i32,
    /// [`cqe_flags`] bits: which path served the read, gzip marking.
    pub flags: u32,
    /// For a successful read: where the needle's data begins, as an offset
    /// from the start of the buffer area (inside the submitted buffer).
    pub data_offset: u64,
    /// `BUFFER_TOO_SMALL`: the buffer length needed. Otherwise 0.
    pub aux: u64,
}

const _: () = assert!(core::mem::size_of::<Cqe>() == 32);
const _: () = assert!(core::mem::offset_of!(Cqe, result) == 8);
const _: () = assert!(core::mem::offset_of!(Cqe, data_offset) == 16);

/// Bits of [`Cqe::flags`].
pub mod cqe_flags {
    /// Mask of the source field: which path served the read. (Two bits wide before the
    /// stream transport; engines never set bit 2 before it, so older clients read a stream
    /// completion's source as `SOURCE_NONE`.)
    pub const SOURCE_MASK: u32 = 0b111;
    pub const SOURCE_NONE: u32 = 0;
    pub const SOURCE_LOCAL: u32 = 1;
    /// UCX one-sided gets (RDMA NICs, or UCX's software transports when allowed).
    pub const SOURCE_RDMA: u32 = 2;
    pub const SOURCE_HTTP: u32 = 3;
    /// The stream transport (our protocol over TCP, from an exporter).
    pub const SOURCE_STREAM: u32 = 4;
    /// The needle is stored gzip-compressed; the bytes handed over are the
    /// stored (compressed) bytes.
    pub const NEEDLE_GZIPPED: u32 = 1 << 8;
}

macro_rules! error_codes {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        /// Negative completion results. The one table of their meanings: the
        /// value is what `Cqe::result` carries, the text is what a tool prints.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum ErrorCode { $($name,)* }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The (negative) value a completion carries.
            pub const fn result(self) -> i32 {
                match self { $(ErrorCode::$name => $value,)* }
            }

            /// The code for a negative completion result, if it is one.
            pub const fn from_result(result: i32) -> Option<ErrorCode> {
                match result { $($value => Some(ErrorCode::$name),)* _ => None }
            }

            /// One sentence for an operator.
            pub const fn describe(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* }
            }

            /// The name as documented, e.g. `NO_SUCH_NEEDLE`.
            pub const fn name(self) -> &'static str {
                match self { $(ErrorCode::$name => stringify!($name),)* }
            }
        }
    };
}

error_codes! {
    UNKNOWN_OPCODE = -1, "the entry's opcode is not an operation this layout version defines";
    BAD_BUFFER = -2, "the entry's buffer range is not inside the region's buffer area";
    BAD_LENGTH = -3, "the entry's lengths are nonsense (zero, or a range that overflows)";
    BAD_RESERVED = -4, "the entry sets flags or reserved fields that must be zero";
    SHUTDOWN = -5, "the engine is shutting down and did not serve this request";
    CANCELED = -6, "the request was canceled before it completed";
    NOTHING_TO_CANCEL = -7, "no request with that user_data is in flight (it may have completed)";
    DEADLINE_EXCEEDED = -8, "the request's deadline passed before it could be served";
    NO_SUCH_VOLUME = -9, "the engine serves no volume with that id";
    NO_SUCH_NEEDLE = -10, "the volume's index has no needle with that id";
    DELETED = -11, "the needle was deleted";
    COOKIE_MISMATCH = -12, "the needle's cookie does not match the one asked for";
    CRC_MISMATCH = -13, "the needle's data failed its CRC-32C check";
    BUFFER_TOO_SMALL = -14, "the buffer is too small; the completion's aux field holds the size needed";
    IO_ERROR = -15, "reading the volume file failed";
    CORRUPT_NEEDLE = -16, "the needle's header does not match its index entry (id or size), or the record is malformed";
    RANGE_OUT_OF_BOUNDS = -17, "the requested byte range is outside the needle's data";
    PEER_UNAVAILABLE = -18, "the volume's exporter could not be reached, or its connection failed during the read";
    NOT_SUPPORTED = -19, "the engine was not configured with a transport that can serve this request";
    MASTER_UNAVAILABLE = -20, "the SeaweedFS master could not be reached or did not answer the volume lookup";
    HTTP_FAILED = -21, "the volume server's HTTP fallback failed: connection lost or an error status (in aux)";
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.result(), self.describe())
    }
}

/// Largest buffer one entry may name: 1 GiB. Needles are small; a bound
/// keeps every length computation far from overflow.
pub const MAX_BUFFER_LENGTH_BYTES: u32 = 1 << 30;

/// A validated submission: the engine acts on this, never on the raw entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Nop,
    ReadNeedle(NeedleRead),
    Cancel { target_user_data: u64 },
}

/// Where a read's bytes come from and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedleRead {
    pub volume_id: u32,
    pub needle_id: u64,
    pub cookie: u32,
    /// Offset of the destination from the start of the buffer area; the
    /// range `buffer_offset .. buffer_offset + buffer_length` is inside it.
    pub buffer_offset: u64,
    pub buffer_length: u32,
    /// `None` for a whole-needle read.
    pub range: Option<ByteRange>,
}

/// A byte range of a needle's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

impl Sqe {
    /// Validates an entry copied out of the ring. `buffer_area_size_bytes` is
    /// the engine's own record of the buffer area, never the shared header.
    pub fn validate(&self, buffer_area_size_bytes: u64) -> Result<Request, ErrorCode> {
        if self.flags != 0 || self._reserved != 0 {
            return Err(ErrorCode::BAD_RESERVED);
        }
        match self.opcode {
            opcode::NOP => self.validate_unused_read_fields().map(|()| Request::Nop),
            opcode::CANCEL => Ok(Request::Cancel { target_user_data: self.needle_id }),
            opcode::READ_NEEDLE => {
                if self.range_offset != 0 || self.range_length != 0 {
                    return Err(ErrorCode::BAD_RESERVED);
                }
                self.validate_read(buffer_area_size_bytes, None)
            }
            opcode::READ_RANGE => {
                if self.range_length == 0 || self.range_offset.checked_add(self.range_length).is_none() {
                    return Err(ErrorCode::BAD_LENGTH);
                }
                let range = ByteRange { offset: self.range_offset, length: self.range_length };
                self.validate_read(buffer_area_size_bytes, Some(range))
            }
            _ => Err(ErrorCode::UNKNOWN_OPCODE),
        }
    }

    fn validate_unused_read_fields(&self) -> Result<(), ErrorCode> {
        let unused = self.volume_id as u64
            | self.needle_id
            | self.cookie as u64
            | self.buffer_length as u64
            | self.buffer_offset
            | self.range_offset
            | self.range_length;
        if unused == 0 {
            Ok(())
        } else {
            Err(ErrorCode::BAD_RESERVED)
        }
    }

    fn validate_read(&self, buffer_area_size_bytes: u64, range: Option<ByteRange>) -> Result<Request, ErrorCode> {
        if self.buffer_length == 0 || self.buffer_length > MAX_BUFFER_LENGTH_BYTES {
            return Err(ErrorCode::BAD_LENGTH);
        }
        let end = self.buffer_offset.checked_add(self.buffer_length as u64).ok_or(ErrorCode::BAD_BUFFER)?;
        if end > buffer_area_size_bytes {
            return Err(ErrorCode::BAD_BUFFER);
        }
        Ok(Request::ReadNeedle(NeedleRead {
            volume_id: self.volume_id,
            needle_id: self.needle_id,
            cookie: self.cookie,
            buffer_offset: self.buffer_offset,
            buffer_length: self.buffer_length,
            range,
        }))
    }

    /// A NOP entry.
    pub const fn nop(user_data: u64) -> Sqe {
        Sqe {
            opcode: opcode::NOP,
            flags: 0,
            _reserved: 0,
            volume_id: 0,
            user_data,
            needle_id: 0,
            cookie: 0,
            buffer_length: 0,
            buffer_offset: 0,
            range_offset: 0,
            range_length: 0,
            deadline_ns: 0,
        }
    }

    /// A CANCEL entry aimed at the request whose user data is `target_user_data`.
    pub const fn cancel(user_data: u64, target_user_data: u64) -> Sqe {
        Sqe { opcode: opcode::CANCEL, needle_id: target_user_data, ..Sqe::nop(user_data) }
    }
}

impl Cqe {
    /// A completion carrying an error.
    pub const fn error(user_data: u64, code: ErrorCode) -> Cqe {
        Cqe { user_data, result: code.result(), flags: 0, data_offset: 0, aux: 0 }
    }

    /// The error this completion carries, if any. A negative result that is
    /// not in the table is reported as `None` here; see [`Cqe::outcome`].
    pub fn error_code(&self) -> Option<ErrorCode> {
        if self.result < 0 {
            ErrorCode::from_result(self.result)
        } else {
            None
        }
    }

    /// Which path served the read (`cqe_flags::SOURCE_*`).
    pub const fn source(&self) -> u32 {
        self.flags & cqe_flags::SOURCE_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_distinct_and_round_trip() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert!(code.result() < 0);
            assert_eq!(ErrorCode::from_result(code.result()), Some(*code));
            for other in &ErrorCode::ALL[index + 1..] {
                assert_ne!(code.result(), other.result());
            }
        }
        assert_eq!(ErrorCode::from_result(0), None);
    }

    #[test]
    fn nop_validates_and_zero_entry_does_not() {
        assert_eq!(Sqe::nop(7).validate(4096), Ok(Request::Nop));
        assert_eq!(Sqe::default().validate(4096), Err(ErrorCode::UNKNOWN_OPCODE));
    }

    #[test]
    fn read_buffer_must_be_inside_the_area() {
        let mut sqe = Sqe { opcode: opcode::READ_NEEDLE, buffer_offset: 4000, buffer_length: 96, ..Sqe::default() };
        assert!(sqe.validate(4096).is_ok());
        sqe.buffer_length = 97;
        assert_eq!(sqe.validate(4096), Err(ErrorCode::BAD_BUFFER));
        sqe.buffer_offset = u64::MAX - 10;
        assert_eq!(sqe.validate(u64::MAX), Err(ErrorCode::BAD_BUFFER));
        sqe.buffer_length = 0;
        assert_eq!(sqe.validate(4096), Err(ErrorCode::BAD_LENGTH));
    }

    #[test]
    fn range_must_not_overflow() {
        let sqe = Sqe {
            opcode: opcode::READ_RANGE,
            buffer_length: 16,
            range_offset: u64::MAX,
            range_length: 2,
            ..Sqe::default()
        };
        assert_eq!(sqe.validate(4096), Err(ErrorCode::BAD_LENGTH));
    }
}
