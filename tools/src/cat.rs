//! `rdma-cat`: one needle (or a byte range of it) through the engine, with
//! the bytes SeaweedFS's volume server sends for `GET /<fid>` to a client
//! that does not accept gzip. The read semantics (gzip, ranges, buffer
//! retry) are [`rdma_client::reader::content`]'s; this module is the one-shot session
//! over a single queue pair. Chunk manifests are printed as stored (upstream
//! follows them).

use rdma_client::reader::content::{self, ReadSpec, SubmitRead};
use rdma_client::{AttachOptions, Client, Completion, QueuePair, ReadSource};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

pub use rdma_client::reader::content::ReadError as CatError;

/// The first buffer area: the initial buffer plus room for a needle header.
const INITIAL_AREA_BYTES: u64 = 2 << 20;

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

/// Exit codes of `rdma-cat` for each error.
pub fn exit_code(error: &CatError) -> i32 {
    match error {
        CatError::Attach(_)
        | CatError::Engine(_)
        | CatError::BadCompletion
        | CatError::TimedOut
        | CatError::Disconnected(_)
        | CatError::NoEngine => crate::exit_code::ENGINE,
        CatError::Needle(_) | CatError::RangeNotSatisfiable { .. } | CatError::Gunzip(_) | CatError::TooLarge => {
            crate::exit_code::NEEDLE
        }
        CatError::BadFileId(_) => crate::exit_code::USAGE,
        CatError::Buffer(_) | CatError::BufferTooSmall { .. } => crate::exit_code::OTHER,
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
        Ok(Session { socket: request.socket.clone(), client, queue_pair, area_bytes: INITIAL_AREA_BYTES, deadline })
    }
}

impl SubmitRead for Session {
    fn submit_read(&mut self, spec: &ReadSpec) -> Result<Completion, CatError> {
        let length = spec.buffer_bytes;
        if length as u64 > self.area_bytes {
            // The buffer area cannot hold this needle: attach anew with room
            // for it (the old region is released when its handles drop).
            self.area_bytes = area_for(length);
            (self.client, self.queue_pair) = attach(&self.socket, self.area_bytes)?;
        }
        let buffer = self.client.allocate(length).map_err(CatError::Buffer)?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let deadline_ns = rdma_ipc::clock::monotonic_ns() + remaining.as_nanos() as u64;
        let queue_pair = &mut self.queue_pair;
        queue_pair
            .prepare_with_deadline(spec.operation(buffer), 1, deadline_ns)
            .and_then(|()| queue_pair.submit())
            .and_then(|_| queue_pair.wait(1, remaining))
            .map_err(CatError::Engine)?;
        queue_pair.reap_one().map_err(CatError::Engine)?.ok_or(CatError::BadCompletion)
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

/// Reads what `request` names, the way the volume server would serve it.
pub fn run(request: &CatRequest) -> Result<CatOutput, CatError> {
    let attach_start = Instant::now();
    let mut session = Session::new(request, attach_start + request.timeout)?;
    let start = Instant::now();
    let content = content::read_content(&mut session, request.file_id, request.range)?;
    Ok(CatOutput {
        data: content.data,
        source: content.source,
        gzipped: content.gzipped,
        read_count: content.read_count,
        latency: start.elapsed(),
        attach: start.duration_since(attach_start),
    })
}
