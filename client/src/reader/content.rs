//! Reading a needle's content through the engine, the way SeaweedFS's volume
//! server serves `GET /<fid>` to a client that does not accept gzip
//! (`weed/server/volume_server_handlers_read.go`). The [`super::Reader`]
//! (a pool of queue pairs) and `rdma-cat` (one queue pair) each implement
//! [`SubmitRead`], and everything above it is here.
//!
//! - A needle flagged compressed whose data starts with the gzip magic is
//!   decompressed (multi-member, like Go's `gzip.Reader`); flagged data
//!   without the magic is served as stored (`util.DecompressData` returns
//!   `UnsupportedCompression` and the handler keeps the bytes).
//! - A range applies to the bytes served, i.e. to the *decompressed* data of
//!   a gzipped needle, so a range of a gzipped needle is read whole,
//!   decompressed, then cut.
//! - Range semantics are Go's `parseRange` for `bytes=O-E`: an offset at or
//!   past the end is an error (HTTP 416); an end past the data is clipped.
//! - A read whose buffer is too small is re-issued once with the size the
//!   engine asks for (`BUFFER_TOO_SMALL` carries it).
//!
//! Deviation, on purpose: corrupt gzip data is an error here (upstream logs
//! it and answers 200 with an empty body).

use crate::{Buffer, Client, ClientError, Completion, CompletionError, ErrorCode, Operation, ReadSource};
use flate2::read::MultiGzDecoder;
use shm_layout::entry::MAX_BUFFER_LENGTH_BYTES;
use std::io::Read;
use volume_format::file_id::FileId;

/// The first buffer: a 1 MiB needle's whole record (data plus header,
/// checksum, timestamp and padding) in one read, so most needles need no retry.
pub const INITIAL_BUFFER_BYTES: u32 = (1 << 20) + 4096;
/// Largest decompressed needle accepted: a bound against gzip bombs.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;
/// How many times a read is re-issued with the size the engine asked for.
const BUFFER_RETRY_LIMIT: u32 = 1;

/// Why a read failed. [`ReadError::is_retryable`] says whether the same read may succeed
/// later (the engine was restarting or stalled); [`ReadError::engine_code`] gives the
/// engine's code (`docs/design.md`, the error table) when the engine answered with one.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    BadFileId(#[from] volume_format::file_id::FileIdError),
    #[error("cannot attach to the engine: {0}")]
    Attach(ClientError),
    #[error("cannot allocate a buffer in the region: {0}")]
    Buffer(ClientError),
    #[error("the engine did not complete the read: {0}")]
    Engine(ClientError),
    #[error("{0}")]
    Needle(CompletionError),
    #[error("{}: the needle has {data_bytes} bytes, offset {offset} is not inside it", ErrorCode::RANGE_OUT_OF_BOUNDS)]
    RangeNotSatisfiable { offset: u64, data_bytes: u64 },
    #[error("the needle is flagged gzip but its data does not decompress: {0}")]
    Gunzip(std::io::Error),
    #[error("the needle decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,
    #[error("the engine's completion does not place its data inside the buffer")]
    BadCompletion,
    #[error("the read was not served within its deadline")]
    TimedOut,
    #[error("the engine connection is lost: {0}")]
    Disconnected(String),
    #[error("no engine is attached (it is restarting, or not started yet); the read may succeed later")]
    NoEngine,
    #[error("the buffer holds {buffer_bytes} bytes; the needle's data is {data_bytes}")]
    BufferTooSmall { buffer_bytes: usize, data_bytes: usize },
}

impl ReadError {
    /// A short name for counters: the engine's code name, else the reason.
    pub fn label(&self) -> &'static str {
        match self {
            ReadError::Needle(CompletionError::Engine { code, .. }) => code.name(),
            ReadError::Needle(CompletionError::Unknown(_)) => "UNKNOWN_CODE",
            ReadError::BadFileId(_) => "BAD_FILE_ID",
            ReadError::Attach(_) => "ATTACH",
            ReadError::Buffer(_) => "BUFFER",
            ReadError::Engine(_) => "ENGINE",
            ReadError::RangeNotSatisfiable { .. } => "RANGE_NOT_SATISFIABLE",
            ReadError::Gunzip(_) => "GUNZIP",
            ReadError::TooLarge => "TOO_LARGE",
            ReadError::BadCompletion => "BAD_COMPLETION",
            ReadError::TimedOut => "TIMED_OUT",
            ReadError::Disconnected(_) => "DISCONNECTED",
            ReadError::NoEngine => "NO_ENGINE",
            ReadError::BufferTooSmall { .. } => "BUFFER_TOO_SMALL",
        }
    }

    /// Whether the engine went away under this read (its connection closed, it stopped, or it
    /// answered that it is shutting down): the read is worth resubmitting once on the next
    /// engine ([`crate::Reader`] does).
    pub fn engine_went_away(&self) -> bool {
        match self {
            ReadError::Disconnected(_) => true,
            ReadError::Engine(error) => {
                matches!(error, ClientError::EngineGone | ClientError::EngineStopped | ClientError::Retired)
            }
            ReadError::Needle(CompletionError::Engine { code, .. }) => *code == ErrorCode::SHUTDOWN,
            _ => false,
        }
    }

    /// Whether the same read may succeed if tried again: the engine went away or stalled
    /// past the deadline, or answered that it was shutting down, that the deadline passed,
    /// or that the volume's exporter or master could not be reached.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadError::Disconnected(_) | ReadError::NoEngine | ReadError::TimedOut | ReadError::Attach(_) => true,
            ReadError::Engine(error) => {
                matches!(error, ClientError::EngineGone | ClientError::EngineStopped | ClientError::TimedOut { .. })
            }
            ReadError::Needle(CompletionError::Engine { code, .. }) => matches!(
                *code,
                ErrorCode::SHUTDOWN
                    | ErrorCode::DEADLINE_EXCEEDED
                    | ErrorCode::PEER_UNAVAILABLE
                    | ErrorCode::MASTER_UNAVAILABLE
            ),
            _ => false,
        }
    }

    /// The engine's code, when the engine answered with one.
    pub fn engine_code(&self) -> Option<ErrorCode> {
        match self {
            ReadError::Needle(CompletionError::Engine { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

/// What one submission reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// The whole needle record, checked (CRC included) by the engine.
    Whole,
    /// `length` bytes at `offset` of the stored data.
    Range { offset: u64, length: u64 },
}

/// One submission: which needle, what of it, and how big a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSpec {
    pub file_id: FileId,
    pub kind: ReadKind,
    pub buffer_bytes: u32,
}

impl ReadSpec {
    /// The client operation for this read into `buffer`.
    pub fn operation(&self, buffer: Buffer) -> Operation {
        let FileId { volume_id, needle_id, cookie } = self.file_id;
        match self.kind {
            ReadKind::Whole => Operation::ReadNeedle { volume_id, needle_id, cookie, buffer },
            ReadKind::Range { offset, length } => {
                Operation::ReadRange { volume_id, needle_id, cookie, offset, length, buffer }
            }
        }
    }
}

/// Something that can submit one read and hand back its completion: a
/// single queue pair (`rdma-cat`) or a pool of them (`rdma-sidecar`).
pub trait SubmitRead {
    /// Submits `spec` and waits (bounded) for its completion.
    fn submit_read(&mut self, spec: &ReadSpec) -> Result<Completion, ReadError>;
    /// The client whose region holds the completion's buffer.
    fn client(&self) -> &Client;
}

/// One read, re-issued once with the size the engine asks for in
/// `BUFFER_TOO_SMALL`. `read_count` counts submissions.
pub fn read_retrying(
    reader: &mut dyn SubmitRead,
    file_id: FileId,
    kind: ReadKind,
    first_buffer_bytes: u32,
    read_count: &mut u32,
) -> Result<Completion, ReadError> {
    let mut spec = ReadSpec { file_id, kind, buffer_bytes: first_buffer_bytes };
    let mut retries = 0;
    loop {
        *read_count += 1;
        let completion = reader.submit_read(&spec)?;
        match completion.result() {
            Ok(_) => return Ok(completion),
            Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, needed_bytes })
                if retries < BUFFER_RETRY_LIMIT
                    && needed_bytes > spec.buffer_bytes as u64
                    && needed_bytes <= MAX_BUFFER_LENGTH_BYTES as u64 =>
            {
                retries += 1;
                spec.buffer_bytes = needed_bytes as u32;
            }
            Err(error) => return Err(ReadError::Needle(error)),
        }
    }
}

/// The bytes of a successful completion's buffer, and where its data lies in them.
pub fn landed<'a>(
    client: &'a Client,
    completion: &'a Completion,
) -> Result<(&'a [u8], std::ops::Range<usize>), ReadError> {
    let range = completion.data_range().ok_or(ReadError::BadCompletion)?;
    let buffer = completion.buffer.as_ref().ok_or(ReadError::BadCompletion)?;
    let bytes = client.bytes(buffer);
    if range.end > bytes.len() {
        return Err(ReadError::BadCompletion);
    }
    Ok((bytes, range))
}

/// A needle's content as served.
#[derive(Debug)]
pub struct Content {
    pub data: Vec<u8>,
    pub source: ReadSource,
    /// Whether the needle was stored gzip-compressed (and was decompressed).
    pub gzipped: bool,
    /// Reads submitted (1 unless a retry or a whole-needle fallback happened).
    pub read_count: u32,
}

/// One read's data bytes and the completion's facts.
struct Outcome {
    data: Vec<u8>,
    source: ReadSource,
    gzipped: bool,
}

fn read_outcome(
    reader: &mut dyn SubmitRead,
    file_id: FileId,
    kind: ReadKind,
    first_buffer_bytes: u32,
    read_count: &mut u32,
) -> Result<Outcome, ReadError> {
    let completion = read_retrying(reader, file_id, kind, first_buffer_bytes, read_count)?;
    let (bytes, range) = landed(reader.client(), &completion)?;
    Ok(Outcome { data: bytes[range].to_vec(), source: completion.source(), gzipped: completion.gzipped() })
}

/// The content of `file_id`, or of a range of it (`Some((offset, size))`,
/// `size` `None` meaning "to the end"), as the volume server serves it to a
/// client that does not accept gzip.
pub fn read_content(
    reader: &mut dyn SubmitRead,
    file_id: FileId,
    range: Option<(u64, Option<u64>)>,
) -> Result<Content, ReadError> {
    let mut read_count = 0;
    let (data, source, gzipped) = match range {
        None => whole_then_cut(reader, file_id, None, &mut read_count)?,
        // An end past u64::MAX is an end past the data: clip it so the
        // entry's offset + length cannot overflow (the engine refuses that).
        Some((offset, Some(size))) => {
            let length = size.min(u64::MAX - offset).max(1);
            // A range never needs more buffer than its length (or the first size).
            let buffer_bytes = length.min(INITIAL_BUFFER_BYTES as u64) as u32;
            let kind = ReadKind::Range { offset, length };
            match read_outcome(reader, file_id, kind, buffer_bytes, &mut read_count) {
                Ok(outcome) if !outcome.gzipped => (outcome.data, outcome.source, false),
                // A gzipped needle's range is a range of its decompressed bytes,
                // which the engine cannot see; an offset past the stored bytes
                // (or one so large the entry overflows) is judged against the
                // served bytes as HTTP does. All of these need the whole needle.
                Ok(_)
                | Err(ReadError::Needle(CompletionError::Engine {
                    code: ErrorCode::RANGE_OUT_OF_BOUNDS | ErrorCode::BAD_LENGTH,
                    ..
                })) => whole_then_cut(reader, file_id, Some((offset, Some(size))), &mut read_count)?,
                Err(error) => return Err(error),
            }
        }
        Some((offset, None)) => whole_then_cut(reader, file_id, Some((offset, None)), &mut read_count)?,
    };
    Ok(Content { data, source, gzipped, read_count })
}

fn whole_then_cut(
    reader: &mut dyn SubmitRead,
    file_id: FileId,
    range: Option<(u64, Option<u64>)>,
    read_count: &mut u32,
) -> Result<(Vec<u8>, ReadSource, bool), ReadError> {
    let outcome = read_outcome(reader, file_id, ReadKind::Whole, INITIAL_BUFFER_BYTES, read_count)?;
    let source = outcome.source;
    let (data, gzipped) = served_bytes(outcome.data, outcome.gzipped)?;
    match range {
        None => Ok((data, source, gzipped)),
        Some((offset, size)) => Ok((cut_range(data, offset, size)?, source, gzipped)),
    }
}

/// The bytes served for a whole needle's data: decompressed if it is gzip.
pub fn served_bytes(data: Vec<u8>, gzipped: bool) -> Result<(Vec<u8>, bool), ReadError> {
    if gzipped && is_gzip(&data) {
        return gunzip(&data).map(|data| (data, true));
    }
    Ok((data, gzipped))
}

/// Whether `data` starts with the gzip magic (SeaweedFS's `IsGzippedContent`).
pub fn is_gzip(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] == 0x1f && data[1] == 0x8b
}

/// Multi-member gunzip, bounded by [`MAX_DECOMPRESSED_BYTES`].
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let mut decoder = MultiGzDecoder::new(data).take(MAX_DECOMPRESSED_BYTES + 1);
    decoder.read_to_end(&mut out).map_err(ReadError::Gunzip)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

/// Go's `parseRange` for one `bytes=O-E` (or `bytes=O-`) range: the offset
/// must be inside the data, the end is clipped to it.
pub fn cut_range(data: Vec<u8>, offset: u64, size: Option<u64>) -> Result<Vec<u8>, ReadError> {
    let data_bytes = data.len() as u64;
    if offset >= data_bytes {
        return Err(ReadError::RangeNotSatisfiable { offset, data_bytes });
    }
    let end = match size {
        Some(size) => offset.saturating_add(size).min(data_bytes),
        None => data_bytes,
    };
    Ok(data[offset as usize..end as usize].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ranges_follow_go_parse_range() {
        let data: Vec<u8> = (0..10).collect();
        assert_eq!(cut_range(data.clone(), 2, Some(3)).unwrap(), vec![2, 3, 4]);
        assert_eq!(cut_range(data.clone(), 8, Some(100)).unwrap(), vec![8, 9]);
        assert_eq!(cut_range(data.clone(), 7, None).unwrap(), vec![7, 8, 9]);
        assert!(matches!(
            cut_range(data.clone(), 10, Some(1)),
            Err(ReadError::RangeNotSatisfiable { offset: 10, data_bytes: 10 })
        ));
        assert!(cut_range(Vec::new(), 0, None).is_err());
    }

    #[test]
    fn gzip_is_undone_and_non_gzip_is_kept() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"hello needle").unwrap();
        let compressed = encoder.finish().unwrap();
        let (data, gzipped) = served_bytes(compressed.clone(), true).unwrap();
        assert_eq!((data.as_slice(), gzipped), (&b"hello needle"[..], true));
        let (data, _) = served_bytes(b"plain".to_vec(), true).unwrap();
        assert_eq!(data, b"plain");
        let mut broken = compressed;
        broken.truncate(12);
        assert!(matches!(served_bytes(broken, true), Err(ReadError::Gunzip(_))));
    }
}
