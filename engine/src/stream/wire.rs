//! The stream protocol's bytes: the handshake messages, the request and the reply header,
//! as `#[repr(C)]` zerocopy types with little-endian fields, and their checked decoders.
//! `docs/stream-protocol.md` describes the same bytes for other implementations; the sizes and
//! offsets asserted here are the ones it lists.
//!
//! Decoders take exactly the bytes of one fixed-size message and either return a validated
//! value or say what is wrong; nothing here panics on input (`fuzz/fuzz_targets/stream_frames.rs`).

use shm_layout::entry::{ByteRange, ErrorCode, MAX_BUFFER_LENGTH_BYTES};
use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The first four bytes of both hellos.
pub const MAGIC: [u8; 4] = *b"SWRS";
/// The one protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of each side's fresh random nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an HMAC-SHA-256 proof.
pub const PROOF_BYTES: usize = 32;

/// How the exporter authenticates readers (`ServerHello::auth`).
pub mod auth_mode {
    /// No key: the exporter admits readers by address (`--allow-peer`) only.
    pub const ADDRESS_ONLY: u16 = 0;
    /// Both sides prove they hold SeaweedFS's read key (HMAC-SHA-256 over both nonces).
    pub const READ_KEY: u16 = 1;
}

/// Request and reply kinds.
pub mod kind {
    /// Read one needle, whole or a byte range of its data.
    pub const READ: u8 = 1;
    /// List the volumes the exporter serves.
    pub const VOLUMES: u8 = 2;
}

/// `RequestHeader::flags` bits.
pub mod request_flags {
    /// A byte range of the needle's data (`range_offset`, `range_length`), not the whole record.
    pub const RANGE: u8 = 1;
}

/// Reader → exporter, first message after the TCP (or TLS) connection is up: 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ClientHello {
    pub magic: [u8; 4],
    pub version: U16,
    /// Zero (room to grow).
    pub flags: U16,
    pub nonce: [u8; NONCE_BYTES],
}
const _: () = assert!(core::mem::size_of::<ClientHello>() == 40);

/// Exporter → reader, the answer to the hello: 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ServerHello {
    pub magic: [u8; 4],
    pub version: U16,
    /// [`auth_mode`].
    pub auth: U16,
    pub nonce: [u8; NONCE_BYTES],
    /// `READ_KEY`: the exporter's proof ([`super::auth`]); zeros otherwise.
    pub proof: [u8; PROOF_BYTES],
}
const _: () = assert!(core::mem::size_of::<ServerHello>() == 72);

/// Reader → exporter: the reader's proof (zeros when the exporter asked for none): 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ClientProof {
    pub proof: [u8; PROOF_BYTES],
}
const _: () = assert!(core::mem::size_of::<ClientProof>() == 32);

/// Exporter → reader, the end of the handshake: 8 bytes. A status other than 0 is followed by
/// the exporter closing the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HandshakeDone {
    /// [`handshake_status`].
    pub status: I32,
    pub _reserved: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<HandshakeDone>() == 8);

/// `HandshakeDone::status` values.
pub mod handshake_status {
    pub const OK: i32 = 0;
    /// The reader's proof does not match the read key.
    pub const BAD_PROOF: i32 = 1;
}

/// Bytes of a request.
pub const REQUEST_BYTES: usize = 48;
/// Bytes of a reply header.
pub const REPLY_HEADER_BYTES: usize = 40;

/// Reader → exporter, one request: 48 bytes, nothing follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestHeader {
    /// [`kind`].
    pub kind: u8,
    /// [`request_flags`].
    pub flags: u8,
    pub _reserved: [u8; 2],
    pub volume_id: U32,
    /// The reader's; the reply carries it back.
    pub token: U64,
    pub needle_id: U64,
    pub cookie: U32,
    /// The reader's buffer length: a reply never carries more data than this.
    pub max_bytes: U32,
    pub range_offset: U64,
    pub range_length: U64,
}
const _: () = assert!(core::mem::size_of::<RequestHeader>() == REQUEST_BYTES);
const _: () = assert!(core::mem::offset_of!(RequestHeader, token) == 8);
const _: () = assert!(core::mem::offset_of!(RequestHeader, range_offset) == 32);

/// Exporter → reader, the head of one reply: 40 bytes, then `check_length` bytes, then
/// `data_length` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReplyHeader {
    /// The request's [`kind`].
    pub kind: u8,
    /// READ that succeeded: the volume's needle version (1, 2 or 3).
    pub version: u8,
    pub _reserved: [u8; 2],
    /// 0, or a negative error code of the one table (`ErrorCode`).
    pub status: I32,
    pub token: U64,
    /// `BUFFER_TOO_SMALL`: the buffer length needed. VOLUMES: the exporter's catalogue
    /// generation. Else 0.
    pub aux: U64,
    /// READ that succeeded: the needle's size as the exporter's index has it.
    pub index_size: U32,
    /// Bytes for the reader's check that follow this header (range reads).
    pub check_length: U32,
    /// Bytes after those: the record (whole read), the range (range read), or the volume ids
    /// (VOLUMES, 4 bytes each, little-endian).
    pub data_length: U32,
    pub _reserved2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ReplyHeader>() == REPLY_HEADER_BYTES);
const _: () = assert!(core::mem::offset_of!(ReplyHeader, token) == 8);
const _: () = assert!(core::mem::offset_of!(ReplyHeader, index_size) == 24);

/// Most check bytes one reply carries: the record prefix, the head of the fields after the
/// data and the append time (`read::fetch::SCRATCH_BYTES` bounds all three).
pub const CHECK_LENGTH_MAX: u32 = crate::read::fetch::SCRATCH_BYTES as u32;
/// Most volumes one VOLUMES reply lists.
pub const VOLUMES_MAX: u32 = 1 << 16;

/// Why bytes are not a message of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message does not start with the protocol's magic")]
    Magic,
    #[error("protocol version {0} is not the {PROTOCOL_VERSION} this build speaks")]
    Version(u16),
    #[error("a reserved field or flag is not zero")]
    Reserved,
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("unknown authentication mode {0}")]
    AuthMode(u16),
    #[error("a length is out of its bounds ({0})")]
    Length(&'static str),
    #[error("status {0} is not one the protocol defines")]
    Status(i32),
}

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Read(ReadRequest),
    Volumes { token: u64 },
}

/// The needle a READ names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub token: u64,
    pub volume_id: u32,
    pub needle_id: u64,
    pub cookie: u32,
    pub max_bytes: u32,
    pub range: Option<ByteRange>,
}

impl Request {
    /// Checks a request's bytes.
    pub fn decode(bytes: &[u8; REQUEST_BYTES]) -> Result<Request, WireError> {
        let header = RequestHeader::read_from_bytes(bytes).map_err(|_| WireError::Length("request"))?;
        if header._reserved != [0; 2] {
            return Err(WireError::Reserved);
        }
        match header.kind {
            kind::READ => {
                if header.flags & !request_flags::RANGE != 0 {
                    return Err(WireError::Reserved);
                }
                let max_bytes = header.max_bytes.get();
                if max_bytes == 0 || max_bytes > MAX_BUFFER_LENGTH_BYTES {
                    return Err(WireError::Length("max_bytes"));
                }
                let range = if header.flags & request_flags::RANGE != 0 {
                    let (offset, length) = (header.range_offset.get(), header.range_length.get());
                    if length == 0 || offset.checked_add(length).is_none() {
                        return Err(WireError::Length("range"));
                    }
                    Some(ByteRange { offset, length })
                } else if header.range_offset.get() != 0 || header.range_length.get() != 0 {
                    return Err(WireError::Reserved);
                } else {
                    None
                };
                Ok(Request::Read(ReadRequest {
                    token: header.token.get(),
                    volume_id: header.volume_id.get(),
                    needle_id: header.needle_id.get(),
                    cookie: header.cookie.get(),
                    max_bytes,
                    range,
                }))
            }
            kind::VOLUMES => {
                let unused = header.flags != 0
                    || header.volume_id.get() != 0
                    || header.needle_id.get() != 0
                    || header.cookie.get() != 0
                    || header.max_bytes.get() != 0
                    || header.range_offset.get() != 0
                    || header.range_length.get() != 0;
                if unused {
                    return Err(WireError::Reserved);
                }
                Ok(Request::Volumes { token: header.token.get() })
            }
            other => Err(WireError::Kind(other)),
        }
    }

    /// The request's bytes.
    pub fn encode(&self) -> RequestHeader {
        match *self {
            Request::Read(read) => {
                let range = read.range.unwrap_or(ByteRange { offset: 0, length: 0 });
                RequestHeader {
                    kind: kind::READ,
                    flags: if read.range.is_some() { request_flags::RANGE } else { 0 },
                    volume_id: read.volume_id.into(),
                    token: read.token.into(),
                    needle_id: read.needle_id.into(),
                    cookie: read.cookie.into(),
                    max_bytes: read.max_bytes.into(),
                    range_offset: range.offset.into(),
                    range_length: range.length.into(),
                    ..RequestHeader::default()
                }
            }
            Request::Volumes { token } => {
                RequestHeader { kind: kind::VOLUMES, token: token.into(), ..Default::default() }
            }
        }
    }
}

/// A validated reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub token: u64,
    pub status: Result<(), ErrorCode>,
    pub aux: u64,
    pub version: u8,
    pub index_size: u32,
    pub check_length: u32,
    pub data_length: u32,
}

/// Error codes an exporter may answer a READ with.
pub const READ_ERRORS: [ErrorCode; 8] = [
    ErrorCode::NO_SUCH_VOLUME,
    ErrorCode::NO_SUCH_NEEDLE,
    ErrorCode::DELETED,
    ErrorCode::COOKIE_MISMATCH,
    ErrorCode::RANGE_OUT_OF_BOUNDS,
    ErrorCode::BUFFER_TOO_SMALL,
    ErrorCode::IO_ERROR,
    ErrorCode::CORRUPT_NEEDLE,
];

impl Reply {
    /// Checks a reply header's bytes: its kind and status are the protocol's, and its lengths
    /// within the protocol's bounds (the reader checks them against its request too).
    pub fn decode(bytes: &[u8; REPLY_HEADER_BYTES]) -> Result<Reply, WireError> {
        let header = ReplyHeader::read_from_bytes(bytes).map_err(|_| WireError::Length("reply"))?;
        if header._reserved != [0; 2] || header._reserved2 != [0; 4] {
            return Err(WireError::Reserved);
        }
        let status = match header.status.get() {
            0 => Ok(()),
            value => match ErrorCode::from_result(value) {
                Some(code) if header.kind == kind::READ && READ_ERRORS.contains(&code) => Err(code),
                _ => return Err(WireError::Status(value)),
            },
        };
        let (check_length, data_length) = (header.check_length.get(), header.data_length.get());
        match header.kind {
            kind::READ => {
                if status.is_err() && (check_length != 0 || data_length != 0 || header.version != 0) {
                    return Err(WireError::Length("an error reply carries bytes"));
                }
                if status.is_ok() && !(1..=3).contains(&header.version) {
                    return Err(WireError::Length("version"));
                }
                if check_length > CHECK_LENGTH_MAX || data_length > MAX_BUFFER_LENGTH_BYTES {
                    return Err(WireError::Length("check or data length"));
                }
            }
            kind::VOLUMES => {
                if status.is_err() || check_length != 0 || header.version != 0 || header.index_size.get() != 0 {
                    return Err(WireError::Reserved);
                }
                if data_length % 4 != 0 || data_length / 4 > VOLUMES_MAX {
                    return Err(WireError::Length("volume list"));
                }
            }
            other => return Err(WireError::Kind(other)),
        }
        Ok(Reply {
            kind: header.kind,
            token: header.token.get(),
            status,
            aux: header.aux.get(),
            version: header.version,
            index_size: header.index_size.get(),
            check_length,
            data_length,
        })
    }

    /// The reply's header bytes.
    pub fn encode(&self) -> ReplyHeader {
        ReplyHeader {
            kind: self.kind,
            version: self.version,
            status: self.status.map_or_else(|code| code.result(), |()| 0).into(),
            token: self.token.into(),
            aux: self.aux.into(),
            index_size: self.index_size.into(),
            check_length: self.check_length.into(),
            data_length: self.data_length.into(),
            ..ReplyHeader::default()
        }
    }

    /// A READ's error answer.
    pub fn read_error(token: u64, code: ErrorCode, aux: u64) -> Reply {
        Reply {
            kind: kind::READ,
            token,
            status: Err(code),
            aux,
            version: 0,
            index_size: 0,
            check_length: 0,
            data_length: 0,
        }
    }
}

impl ClientHello {
    pub fn new(nonce: [u8; NONCE_BYTES]) -> ClientHello {
        ClientHello { magic: MAGIC, version: PROTOCOL_VERSION.into(), flags: 0.into(), nonce }
    }

    /// Checks a hello's bytes; a hello of another version is `WireError::Version`.
    pub fn decode(bytes: &[u8; 40]) -> Result<ClientHello, WireError> {
        let hello = ClientHello::read_from_bytes(bytes).map_err(|_| WireError::Length("hello"))?;
        if hello.magic != MAGIC {
            return Err(WireError::Magic);
        }
        if hello.version.get() != PROTOCOL_VERSION {
            return Err(WireError::Version(hello.version.get()));
        }
        if hello.flags.get() != 0 {
            return Err(WireError::Reserved);
        }
        Ok(hello)
    }
}

impl ServerHello {
    /// Checks the exporter's hello.
    pub fn decode(bytes: &[u8; 72]) -> Result<ServerHello, WireError> {
        let hello = ServerHello::read_from_bytes(bytes).map_err(|_| WireError::Length("hello"))?;
        if hello.magic != MAGIC {
            return Err(WireError::Magic);
        }
        if hello.version.get() != PROTOCOL_VERSION {
            return Err(WireError::Version(hello.version.get()));
        }
        match hello.auth.get() {
            auth_mode::ADDRESS_ONLY | auth_mode::READ_KEY => Ok(hello),
            other => Err(WireError::AuthMode(other)),
        }
    }
}

/// Decodes a VOLUMES reply's data (4 bytes per volume id, little-endian).
pub fn decode_volume_ids(data: &[u8]) -> impl Iterator<Item = u32> + '_ {
    data.chunks_exact(4).map(|id| u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(range: Option<ByteRange>) -> Request {
        Request::Read(ReadRequest { token: 7, volume_id: 3, needle_id: 0x1637, cookie: 0x37d6, max_bytes: 4096, range })
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        for request in [read(None), read(Some(ByteRange { offset: 5, length: 10 })), Request::Volumes { token: 9 }] {
            let bytes: [u8; 48] = request.encode().as_bytes().try_into().unwrap();
            assert_eq!(Request::decode(&bytes), Ok(request));
        }
        let good: [u8; 48] = read(None).encode().as_bytes().try_into().unwrap();
        let with = |offset: usize, value: u8| {
            let mut bytes = good;
            bytes[offset] = value;
            Request::decode(&bytes)
        };
        assert_eq!(with(0, 9), Err(WireError::Kind(9)));
        assert_eq!(with(1, 2), Err(WireError::Reserved));
        assert_eq!(with(2, 1), Err(WireError::Reserved));
        // A whole read with a range offset set.
        assert_eq!(with(32, 1), Err(WireError::Reserved));
        let mut huge = read(None).encode();
        huge.max_bytes = (MAX_BUFFER_LENGTH_BYTES + 1).into();
        assert_eq!(Request::decode(huge.as_bytes().try_into().unwrap()), Err(WireError::Length("max_bytes")));
        let overflowing = read(Some(ByteRange { offset: u64::MAX, length: 2 })).encode();
        assert_eq!(Request::decode(overflowing.as_bytes().try_into().unwrap()), Err(WireError::Length("range")));
        let empty = read(Some(ByteRange { offset: 0, length: 0 })).encode();
        assert_eq!(Request::decode(empty.as_bytes().try_into().unwrap()), Err(WireError::Length("range")));
    }

    #[test]
    fn replies_round_trip_and_bad_ones_are_refused() {
        let ok = Reply {
            kind: kind::READ,
            token: 1,
            status: Ok(()),
            aux: 0,
            version: 3,
            index_size: 100,
            check_length: 0,
            data_length: 140,
        };
        let error = Reply::read_error(2, ErrorCode::BUFFER_TOO_SMALL, 140);
        for reply in [ok, error] {
            let bytes: [u8; 40] = reply.encode().as_bytes().try_into().unwrap();
            assert_eq!(Reply::decode(&bytes), Ok(reply));
        }
        let decode = |reply: Reply| Reply::decode(reply.encode().as_bytes().try_into().unwrap());
        assert_eq!(decode(Reply { version: 4, ..ok }), Err(WireError::Length("version")));
        assert!(decode(Reply { check_length: CHECK_LENGTH_MAX + 1, ..ok }).is_err());
        assert!(decode(Reply { data_length: 1, ..error }).is_err());
        // Codes a reader never takes from an exporter.
        assert!(decode(Reply::read_error(2, ErrorCode::BAD_BUFFER, 0)).is_err());
        assert!(decode(Reply { kind: kind::VOLUMES, version: 0, index_size: 0, data_length: 6, ..ok }).is_err());
        let volumes = Reply { kind: kind::VOLUMES, version: 0, index_size: 0, data_length: 8, ..ok };
        assert_eq!(decode(volumes), Ok(volumes));
    }

    /// The worked example of `docs/stream-protocol.md`, byte for byte.
    #[test]
    fn the_documented_worked_example_holds() {
        let request = read(None).encode();
        let mut expected = [0u8; 48];
        expected[..16].copy_from_slice(&[1, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        expected[16..32].copy_from_slice(&[0x37, 0x16, 0, 0, 0, 0, 0, 0, 0xd6, 0x37, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(request.as_bytes(), &expected);
        let refusal = Reply::read_error(7, ErrorCode::BUFFER_TOO_SMALL, 5032).encode();
        let mut expected = [0u8; 40];
        expected[..16].copy_from_slice(&[1, 0, 0, 0, 0xf2, 0xff, 0xff, 0xff, 7, 0, 0, 0, 0, 0, 0, 0]);
        expected[16..18].copy_from_slice(&[0xa8, 0x13]);
        assert_eq!(refusal.as_bytes(), &expected);
        let answer = Reply {
            kind: kind::READ,
            token: 7,
            status: Ok(()),
            aux: 0,
            version: 3,
            index_size: 1000,
            check_length: 0,
            data_length: 1032,
        };
        let mut expected = [0u8; 40];
        expected[..2].copy_from_slice(&[1, 3]);
        expected[8] = 7;
        expected[24..26].copy_from_slice(&[0xe8, 0x03]);
        expected[32..34].copy_from_slice(&[0x08, 0x04]);
        assert_eq!(answer.encode().as_bytes(), &expected);
        assert_eq!(volume_format::needle::record_size_bytes(volume_format::version::Version::V3, 5000), 5032);
        assert_eq!(
            &ClientHello::new([0x11; NONCE_BYTES]).as_bytes()[..10],
            &[0x53, 0x57, 0x52, 0x53, 1, 0, 0, 0, 0x11, 0x11]
        );
    }

    #[test]
    fn hellos_are_checked() {
        let hello = ClientHello::new([7; NONCE_BYTES]);
        let mut bytes: [u8; 40] = hello.as_bytes().try_into().unwrap();
        assert!(ClientHello::decode(&bytes).is_ok());
        bytes[4] = 2;
        assert_eq!(ClientHello::decode(&bytes).unwrap_err(), WireError::Version(2));
        bytes[0] = b'X';
        assert_eq!(ClientHello::decode(&bytes).unwrap_err(), WireError::Magic);
    }
}
