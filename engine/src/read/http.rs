//! The HTTP fallback: `GET http://<volume server>/<vid>,<key><cookie>` from SeaweedFS's own
//! volume server, straight into the client's buffer, by a small pool of worker threads (the
//! poller never blocks on a socket).
//!
//! The request asks for the needle as stored: `Accept-Encoding: gzip` (a gzipped needle
//! arrives compressed, with `Content-Encoding: gzip`, and is flagged as on the other paths),
//! `cm=false` (a chunk manifest arrives as stored, not expanded), `Range` for a range read
//! (applied to the stored bytes, as on the other paths). A whole read is checked against the
//! `ETag`, which the volume server makes from the needle's CRC-32C: bytes that do not match
//! are never handed over. Keep-alive connections are pooled per worker.
//!
//! Status mapping: 404 → `NO_SUCH_NEEDLE` (the volume server answers 404 alike for missing,
//! deleted, expired and wrong-cookie needles), 416 → `RANGE_OUT_OF_BOUNDS`, any other error
//! status or a lost connection → `HTTP_FAILED` (aux = the status, 0 for none), the read's
//! deadline passing → `DEADLINE_EXCEEDED`.

use std::collections::HashMap;
use std::io::Read;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use volume_format::file_id::FileId;

use super::{ReadDone, ReadResult};

/// Called by a thread of the engine's after it queued something for the poller: rings the
/// poller's doorbell so a sleeping poller picks it up at once.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// No token is canceled in this slot (tokens are `generation << 32 | slot`, and a slot index
/// never reaches `u32::MAX`).
const NOT_CANCELED: u64 = u64::MAX;
/// Bytes copied per step from a response into the client's buffer.
const COPY_CHUNK_BYTES: usize = 64 << 10;
/// Longest an HTTP read may take when its entry has no deadline.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read past a too-small buffer to learn the size needed.
const OVERRUN_COUNT_MAX_BYTES: u64 = 1 << 30;

/// The HTTP fallback's settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Worker threads (requests in flight at once).
    pub threads: usize,
    /// Reads in flight at most: the size of the engine's table of reads in flight.
    pub capacity: usize,
}

/// One read handed to a worker.
struct Job {
    token: u64,
    slot: usize,
    server: Arc<str>,
    file_id: FileId,
    range: Option<ByteRange>,
    destination: Destination,
    deadline: Instant,
}

/// The client's buffer, as a worker may write it.
struct Destination {
    start: NonNull<u8>,
    length_bytes: usize,
}

// SAFETY: the buffer lies in a region the poller keeps mapped while this job is in flight
// (HttpReads::release_region answers false until its completion was popped), and the engine
// owns the buffer from submission to completion: only this job writes it meanwhile.
unsafe impl Send for Destination {}

impl Destination {
    /// Copies `bytes` to `offset` of the buffer; the caller keeps `offset + len` in bounds.
    fn write(&self, offset: usize, bytes: &[u8]) {
        debug_assert!(offset + bytes.len() <= self.length_bytes);
        // SAFETY: offset + len <= length_bytes (checked by the caller, who stops at the
        // buffer's end), inside the buffer the job owns (see `Send` above); `bytes` is the
        // worker's own memory, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.start.as_ptr().add(offset), bytes.len()) }
    }
}

/// The poller's side of the HTTP fallback.
pub struct HttpReads {
    jobs: Option<SyncSender<Job>>,
    done: Arc<ArrayQueue<(u64, ReadResult)>>,
    /// Per table slot: the token canceled there ([`NOT_CANCELED`]: none). Workers check it.
    canceled: Arc<[AtomicU64]>,
    /// Per table slot: the region its job writes into.
    job_regions: Vec<u64>,
    regions_in_flight: HashMap<u64, u32>,
    in_flight: usize,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HttpReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReads").field("in_flight", &self.in_flight).field("workers", &self.workers.len()).finish()
    }
}

impl HttpReads {
    /// Starts the worker threads. `wake` rings the poller after each completion.
    pub fn spawn(config: HttpConfig, wake: Waker) -> std::io::Result<HttpReads> {
        let capacity = config.capacity.max(1);
        let (jobs, receiver) = mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let done = Arc::new(ArrayQueue::new(capacity));
        let canceled: Arc<[AtomicU64]> = (0..capacity).map(|_| AtomicU64::new(NOT_CANCELED)).collect();
        let mut workers = Vec::with_capacity(config.threads);
        for index in 0..config.threads.max(1) {
            let worker = Worker { receiver: receiver.clone(), done: done.clone(), canceled: canceled.clone() };
            let wake = wake.clone();
            let thread = std::thread::Builder::new().name(format!("http-{index}")).spawn(move || worker.run(&*wake))?;
            workers.push(thread);
        }
        Ok(HttpReads {
            jobs: Some(jobs),
            done,
            canceled,
            job_regions: vec![0; capacity],
            regions_in_flight: HashMap::new(),
            in_flight: 0,
            workers,
        })
    }

    /// Starts reading `read` from the volume server `server` (`HOST:PORT`) into `buffer` (the
    /// validated range of `region_id`'s buffer area the read names). `token`'s low 32 bits
    /// are its slot in the engine's table. Exactly one completion with `token` follows.
    pub fn start(
        &mut self,
        token: u64,
        region_id: u64,
        server: Arc<str>,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        deadline: Instant,
    ) -> Result<(), (ErrorCode, u64)> {
        let slot = (token & u32::MAX as u64) as usize;
        let Some(jobs) = self.jobs.as_ref().filter(|_| slot < self.job_regions.len()) else {
            return Err((ErrorCode::NOT_SUPPORTED, 0));
        };
        self.canceled[slot].store(NOT_CANCELED, Ordering::Relaxed);
        let job = Job {
            token,
            slot,
            server,
            file_id: FileId { volume_id: read.volume_id, needle_id: read.needle_id, cookie: read.cookie },
            range: read.range,
            destination: Destination { start: buffer, length_bytes: read.buffer_length as usize },
            deadline,
        };
        // Never blocks: the channel holds as many jobs as the table has slots.
        if jobs.try_send(job).is_err() {
            return Err((ErrorCode::HTTP_FAILED, 0));
        }
        self.job_regions[slot] = region_id;
        *self.regions_in_flight.entry(region_id).or_insert(0) += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Marks the read `token` canceled: it completes with `CANCELED` when its worker is done
    /// with the buffer (a request already sent is not cut short).
    pub fn cancel(&mut self, token: u64) {
        let slot = (token & u32::MAX as u64) as usize;
        if let Some(word) = self.canceled.get(slot) {
            word.store(token, Ordering::Relaxed);
        }
    }

    /// The next finished read.
    pub fn poll_completion(&mut self) -> Option<(u64, ReadResult)> {
        let (token, result) = self.done.pop()?;
        let slot = (token & u32::MAX as u64) as usize;
        if let Some(&region_id) = self.job_regions.get(slot) {
            if let Some(count) = self.regions_in_flight.get_mut(&region_id) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.regions_in_flight.remove(&region_id);
                }
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        Some((token, result))
    }

    /// Whether a completion is waiting (checked before the poller sleeps).
    pub fn has_completions(&self) -> bool {
        !self.done.is_empty()
    }

    /// Reads started and not yet popped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// True once no worker can write into `region_id`'s buffers any more.
    pub fn release_region(&self, region_id: u64) -> bool {
        !self.regions_in_flight.contains_key(&region_id)
    }
}

impl Drop for HttpReads {
    fn drop(&mut self) {
        // Closing the channel ends the workers once their current request is done; they are
        // not joined (a stalled volume server must not hold up shutdown, and a job in flight
        // writes only into a region the process still maps until it exits).
        self.jobs = None;
    }
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Job>>>,
    done: Arc<ArrayQueue<(u64, ReadResult)>>,
    canceled: Arc<[AtomicU64]>,
}

impl Worker {
    fn run(self, wake: &(dyn Fn() + Send + Sync)) {
        let agent = ureq::AgentBuilder::new().max_idle_connections_per_host(4).build();
        let mut chunk = vec![0u8; COPY_CHUNK_BYTES];
        loop {
            let job = match self.receiver.lock() {
                Ok(receiver) => match receiver.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                Err(_) => return,
            };
            let mut result = fetch(&agent, &job, &mut chunk);
            if self.canceled[job.slot].load(Ordering::Relaxed) == job.token {
                result = Err((ErrorCode::CANCELED, 0));
            }
            // The queue holds one entry per table slot, so it has room for this one.
            if self.done.push((job.token, result)).is_err() {
                tracing::error!("HTTP completion queue full; a read is lost");
            }
            wake();
        }
    }
}

/// One GET into the job's buffer, checked.
fn fetch(agent: &ureq::Agent, job: &Job, chunk: &mut [u8]) -> ReadResult {
    let remaining = job.deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err((ErrorCode::DEADLINE_EXCEEDED, 0));
    }
    let url = format!("http://{}/{},{}?cm=false", job.server, job.file_id.volume_id, job.file_id.key_cookie_string());
    let mut request = agent.get(&url).timeout(remaining).set("Accept-Encoding", "gzip");
    if let Some(range) = job.range {
        // Sqe::validate proved length > 0 and offset + length does not overflow.
        request = request.set("Range", &format!("bytes={}-{}", range.offset, range.offset + range.length - 1));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(status, _)) => return Err(status_code(status)),
        Err(ureq::Error::Transport(error)) => {
            let timed_out = Instant::now() >= job.deadline;
            tracing::debug!(%url, %error, "HTTP fallback request failed");
            return Err(if timed_out { (ErrorCode::DEADLINE_EXCEEDED, 0) } else { (ErrorCode::HTTP_FAILED, 0) });
        }
    };
    let status = response.status();
    if status != 200 && status != 206 {
        return Err((ErrorCode::HTTP_FAILED, status as u64));
    }
    let gzipped = response.header("Content-Encoding").is_some_and(|encoding| encoding.eq_ignore_ascii_case("gzip"));
    let etag_crc = response.header("ETag").and_then(parse_etag);
    // A 200 to a range request carries the whole data: skip to the range.
    let skip = match (job.range, status) {
        (Some(range), 200) => range.offset,
        _ => 0,
    };
    let limit = match job.range {
        Some(range) => range.length.min(job.destination.length_bytes as u64),
        None => job.destination.length_bytes as u64,
    };
    let mut reader = response.into_reader();
    let (copied, crc) = copy_body(&mut reader, skip, limit, &job.destination, chunk, job.deadline)?;
    if job.range.is_none() {
        // A whole read must fit: count what is left to say how much room it needs.
        let rest = std::io::copy(&mut (&mut reader).take(OVERRUN_COUNT_MAX_BYTES), &mut std::io::sink())
            .map_err(|_| (ErrorCode::HTTP_FAILED, 0))?;
        if rest > 0 {
            return Err((ErrorCode::BUFFER_TOO_SMALL, copied + rest));
        }
        // Checked over the worker's own copy of the bytes, not the shared buffer.
        if etag_crc.is_some_and(|expected| expected != crc) {
            return Err((ErrorCode::CRC_MISMATCH, 0));
        }
    } else if skip > 0 && copied == 0 {
        return Err((ErrorCode::RANGE_OUT_OF_BOUNDS, 0));
    }
    Ok(ReadDone { data_offset_in_buffer: 0, data_length: copied, gzipped })
}

/// Copies at most `limit` bytes of the body, after skipping `skip`, into the buffer. Returns
/// the bytes copied and their CRC-32C.
fn copy_body(
    reader: &mut impl Read,
    mut skip: u64,
    limit: u64,
    destination: &Destination,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<(u64, u32), (ErrorCode, u64)> {
    let mut copied = 0u64;
    let mut crc = 0u32;
    // Bounded: every pass consumes at least one byte or ends; the socket read is bounded by
    // the request's timeout.
    loop {
        let want = if skip > 0 { skip.min(chunk.len() as u64) } else { (limit - copied).min(chunk.len() as u64) };
        if want == 0 {
            return Ok((copied, crc));
        }
        let count = match reader.read(&mut chunk[..want as usize]) {
            Ok(0) => return Ok((copied, crc)),
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if Instant::now() >= deadline => return Err((ErrorCode::DEADLINE_EXCEEDED, 0)),
            Err(_) => return Err((ErrorCode::HTTP_FAILED, 0)),
        };
        if skip > 0 {
            skip -= count as u64;
            continue;
        }
        destination.write(copied as usize, &chunk[..count]);
        crc = crc32c::crc32c_append(crc, &chunk[..count]);
        copied += count as u64;
    }
}

/// The CRC-32C an `ETag` carries: the volume server writes it as 8 hex digits, quoted.
fn parse_etag(etag: &str) -> Option<u32> {
    let digits = etag.trim().trim_start_matches("W/").trim_matches('"');
    (digits.len() == 8).then(|| u32::from_str_radix(digits, 16).ok()).flatten()
}

/// The completion for an HTTP error status.
fn status_code(status: u16) -> (ErrorCode, u64) {
    match status {
        404 => (ErrorCode::NO_SUCH_NEEDLE, 0),
        416 => (ErrorCode::RANGE_OUT_OF_BOUNDS, 0),
        _ => (ErrorCode::HTTP_FAILED, status as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_statuses() {
        assert_eq!(parse_etag("\"0a1b2c3d\""), Some(0x0a1b_2c3d));
        assert_eq!(parse_etag("W/\"0a1b2c3d\""), Some(0x0a1b_2c3d));
        assert_eq!(parse_etag("\"abc\""), None);
        assert_eq!(parse_etag("\"zzzzzzzz\""), None);
        assert_eq!(status_code(404), (ErrorCode::NO_SUCH_NEEDLE, 0));
        assert_eq!(status_code(416), (ErrorCode::RANGE_OUT_OF_BOUNDS, 0));
        assert_eq!(status_code(500), (ErrorCode::HTTP_FAILED, 500));
    }

    #[test]
    fn body_copy_stops_at_the_limit_and_skips() {
        let mut buffer = vec![0u8; 8];
        let destination = Destination { start: NonNull::new(buffer.as_mut_ptr()).unwrap(), length_bytes: 8 };
        let mut chunk = vec![0u8; 3];
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut body: &[u8] = b"0123456789abcdef";
        let crc = crc32c::crc32c(b"23456789");
        assert_eq!(copy_body(&mut body, 2, 8, &destination, &mut chunk, deadline), Ok((8, crc)));
        assert_eq!(&buffer, b"23456789");
        assert_eq!(body, b"abcdef", "nothing past the limit is consumed");
    }
}
