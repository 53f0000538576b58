//! `rdma-cat`: one needle (or a byte range of it) through the engine, with
//! the bytes SeaweedFS's volume server sends for `GET /<fid>` to a client
//! that does not accept gzip (`weed/server/volume_server_handlers_read.go`):
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
//!
//! Deviations, on purpose: corrupt gzip data is an error here (upstream logs
//! it and answers 200 with an empty body), and chunk manifests are printed
//! as stored (upstream follows them; the engine does not flag them).

use flate2::read::MultiGzDecoder;
use rdma_client::{
    AttachOptions, Buffer, Client, ClientError, Completion, CompletionError, ErrorCode, Operation, QueuePair,
    ReadSource,
};
use shm_layout::entry::MAX_BUFFER_LENGTH_BYTES;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

/// The first buffer: a 1 MiB needle's whole record (data plus header,
/// checksum, timestamp and padding) in one read, so most needles need no retry.
pub const INITIAL_BUFFER_BYTES: u32 = (1 << 20) + 4096;
/// The first buffer area: the initial buffer plus room for a needle header.
const INITIAL_AREA_BYTES: u64 = 2 << 20;
/// Largest decompressed needle accepted: a bound against gzip bombs.
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;
/// How many times a read is re-issued with the size the engine asked for.
const BUFFER_RETRY_LIMIT: u32 = 1;

/// What to read.
#[derive(Clone, Debug)]
pub struct CatRequest {
    pub socket: PathBuf,
    pub file_id: FileId,
    /// `Some((offset, size))` for a range; `size` `None` means "to the end".
    pub range: Option<(u64, Option<u64>)>,
    pub timeout: Duration,
}

/// What was read.
#[derive(Debug)]
pub struct CatOutput {
    /// The bytes to write to stdout.
    pub data: Vec<u8>,
    pub source: ReadSource,
    /// Whether the needle was stored gzip-compressed (and was decompressed).
    pub gzipped: bool,
    /// Reads submitted (1 unless a retry or a whole-needle fallback happened).
    pub read_count: u32,
    /// From the first submission to the bytes being ready, decompression included.
    pub latency: Duration,
    /// Connecting and attaching a region (before the first submission).
    pub attach: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CatError {
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
}

impl CatError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CatError::Attach(_) | CatError::Engine(_) | CatError::BadCompletion => crate::exit_code::ENGINE,
            CatError::Needle(_) | CatError::RangeNotSatisfiable { .. } | CatError::Gunzip(_) | CatError::TooLarge => {
                crate::exit_code::NEEDLE
            }
            CatError::Buffer(_) => crate::exit_code::OTHER,
        }
    }
}

/// A buffer area that surely holds one `length`-byte buffer: the client's
/// allocator rounds a request up to its size classes (at most 1/8 more), so
/// an area of exactly `length` bytes can be too small.
fn area_for(length: u32) -> u64 {
    let length = length as u64;
    (length + length / 4 + 65_536).div_ceil(4096) * 4096
}

/// A one-shot session: a client with one queue pair, re-attached with a
/// bigger buffer area when a needle needs it.
struct Session {
    socket: PathBuf,
    client: Client,
    queue_pair: QueuePair,
    area_bytes: u64,
    deadline: Instant,
    read_count: u32,
}

/// One read's outcome: the data bytes and the completion's facts.
struct ReadOutcome {
    data: Vec<u8>,
    source: ReadSource,
    gzipped: bool,
}

fn attach(socket: &Path, area_bytes: u64) -> Result<(Client, QueuePair), CatError> {
    let options =
        AttachOptions { queue_pairs: 1, sq_entries: 2, buffer_size_bytes: area_bytes, client_name: "rdma-cat".into() };
    let client = Client::attach(socket, &options).map_err(CatError::Attach)?;
    let queue_pair = client.take_queue_pair(0).map_err(CatError::Attach)?;
    Ok((client, queue_pair))
}

impl Session {
    fn new(request: &CatRequest, deadline: Instant) -> Result<Session, CatError> {
        let (client, queue_pair) = attach(&request.socket, INITIAL_AREA_BYTES)?;
        Ok(Session {
            socket: request.socket.clone(),
            client,
            queue_pair,
            area_bytes: INITIAL_AREA_BYTES,
            deadline,
            read_count: 0,
        })
    }

    /// One read of the operation `build` makes for a buffer, re-issued once
    /// with the size the engine asks for in `BUFFER_TOO_SMALL`.
    fn read(&mut self, build: &dyn Fn(Buffer) -> Operation) -> Result<ReadOutcome, CatError> {
        let mut length = INITIAL_BUFFER_BYTES;
        let mut retries = 0;
        loop {
            let completion = self.submit_one(build, length)?;
            match completion.result() {
                Ok(_) => return self.outcome(&completion),
                Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, needed_bytes })
                    if retries < BUFFER_RETRY_LIMIT
                        && needed_bytes > length as u64
                        && needed_bytes <= MAX_BUFFER_LENGTH_BYTES as u64 =>
                {
                    retries += 1;
                    length = needed_bytes as u32;
                }
                Err(error) => return Err(CatError::Needle(error)),
            }
        }
    }

    fn submit_one(&mut self, build: &dyn Fn(Buffer) -> Operation, length: u32) -> Result<Completion, CatError> {
        if length as u64 > self.area_bytes {
            // The buffer area cannot hold this needle: attach anew with room
            // for it (the old region is released when its handles drop).
            self.area_bytes = area_for(length);
            (self.client, self.queue_pair) = attach(&self.socket, self.area_bytes)?;
        }
        let buffer = self.client.allocate(length).map_err(CatError::Buffer)?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + remaining.as_nanos() as u64;
        self.read_count += 1;
        let queue_pair = &mut self.queue_pair;
        queue_pair
            .prepare_with_deadline(build(buffer), 1, deadline_ns)
            .and_then(|()| queue_pair.submit())
            .and_then(|_| queue_pair.wait(1, remaining))
            .map_err(CatError::Engine)?;
        queue_pair.reap_one().map_err(CatError::Engine)?.ok_or(CatError::BadCompletion)
    }

    fn outcome(&self, completion: &Completion) -> Result<ReadOutcome, CatError> {
        let range = completion.data_range().ok_or(CatError::BadCompletion)?;
        let buffer = completion.buffer.as_ref().ok_or(CatError::BadCompletion)?;
        let data = self.client.bytes(buffer).get(range).ok_or(CatError::BadCompletion)?.to_vec();
        Ok(ReadOutcome { data, source: completion.source(), gzipped: completion.gzipped() })
    }

    fn read_whole(&mut self, file_id: FileId) -> Result<ReadOutcome, CatError> {
        self.read(&|buffer| Operation::ReadNeedle {
            volume_id: file_id.volume_id,
            needle_id: file_id.needle_id,
            cookie: file_id.cookie,
            buffer,
        })
    }

    fn read_range(&mut self, file_id: FileId, offset: u64, size: u64) -> Result<ReadOutcome, CatError> {
        self.read(&|buffer| Operation::ReadRange {
            volume_id: file_id.volume_id,
            needle_id: file_id.needle_id,
            cookie: file_id.cookie,
            offset,
            length: size,
            buffer,
        })
    }
}

/// The bytes served for a whole needle: decompressed if it is gzip.
fn served_bytes(outcome: ReadOutcome) -> Result<(Vec<u8>, bool), CatError> {
    if outcome.gzipped && is_gzip(&outcome.data) {
        return gunzip(&outcome.data).map(|data| (data, true));
    }
    Ok((outcome.data, outcome.gzipped))
}

fn is_gzip(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] == 0x1f && data[1] == 0x8b
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, CatError> {
    let mut out = Vec::new();
    let mut decoder = MultiGzDecoder::new(data).take(MAX_DECOMPRESSED_BYTES + 1);
    decoder.read_to_end(&mut out).map_err(CatError::Gunzip)?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(CatError::TooLarge);
    }
    Ok(out)
}

/// Go's `parseRange` for one `bytes=O-E` (or `bytes=O-`) range: the offset
/// must be inside the data, the end is clipped to it.
pub fn cut_range(data: Vec<u8>, offset: u64, size: Option<u64>) -> Result<Vec<u8>, CatError> {
    let data_bytes = data.len() as u64;
    if offset >= data_bytes {
        return Err(CatError::RangeNotSatisfiable { offset, data_bytes });
    }
    let end = match size {
        Some(size) => offset.saturating_add(size).min(data_bytes),
        None => data_bytes,
    };
    Ok(data[offset as usize..end as usize].to_vec())
}

/// Reads what `request` names, the way the volume server would serve it.
pub fn run(request: &CatRequest) -> Result<CatOutput, CatError> {
    let attach_start = Instant::now();
    let mut session = Session::new(request, attach_start + request.timeout)?;
    let start = Instant::now();
    let file_id = request.file_id;
    let (data, source, gzipped) = match request.range {
        None => {
            let outcome = session.read_whole(file_id)?;
            let source = outcome.source;
            let (data, gzipped) = served_bytes(outcome)?;
            (data, source, gzipped)
        }
        // An end past u64::MAX is an end past the data: clip it so the
        // entry's offset + length cannot overflow (the engine refuses that).
        Some((offset, Some(size))) => match session.read_range(file_id, offset, size.min(u64::MAX - offset).max(1)) {
            Ok(outcome) if !outcome.gzipped => (outcome.data, outcome.source, false),
            // A gzipped needle's range is a range of its decompressed bytes,
            // which the engine cannot see; an offset past the stored bytes
            // (or one so large the entry overflows) is judged against the
            // served bytes as HTTP does. All of these need the whole needle.
            Ok(_)
            | Err(CatError::Needle(CompletionError::Engine {
                code: ErrorCode::RANGE_OUT_OF_BOUNDS | ErrorCode::BAD_LENGTH,
                ..
            })) => whole_then_cut(&mut session, file_id, offset, Some(size))?,
            Err(error) => return Err(error),
        },
        Some((offset, None)) => whole_then_cut(&mut session, file_id, offset, None)?,
    };
    Ok(CatOutput {
        data,
        source,
        gzipped,
        read_count: session.read_count,
        latency: start.elapsed(),
        attach: start.duration_since(attach_start),
    })
}

fn whole_then_cut(
    session: &mut Session,
    file_id: FileId,
    offset: u64,
    size: Option<u64>,
) -> Result<(Vec<u8>, ReadSource, bool), CatError> {
    let outcome = session.read_whole(file_id)?;
    let source = outcome.source;
    let (data, gzipped) = served_bytes(outcome)?;
    Ok((cut_range(data, offset, size)?, source, gzipped))
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
            Err(CatError::RangeNotSatisfiable { offset: 10, data_bytes: 10 })
        ));
        assert!(cut_range(Vec::new(), 0, None).is_err());
    }

    #[test]
    fn gzip_is_undone_and_non_gzip_is_kept() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"hello needle").unwrap();
        let compressed = encoder.finish().unwrap();
        let outcome = |data: Vec<u8>| ReadOutcome { data, source: ReadSource::Local, gzipped: true };
        let (data, gzipped) = served_bytes(outcome(compressed.clone())).unwrap();
        assert_eq!((data.as_slice(), gzipped), (&b"hello needle"[..], true));
        let (data, _) = served_bytes(outcome(b"plain".to_vec())).unwrap();
        assert_eq!(data, b"plain");
        let mut broken = compressed;
        broken.truncate(12);
        assert!(matches!(served_bytes(outcome(broken)), Err(CatError::Gunzip(_))));
    }
}
