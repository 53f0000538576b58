//! The high-level reader: file ids in, needle content out, from any number of threads, across
//! engine restarts.
//!
//! A [`Reader`] holds one attachment with a pool of queue pairs ([`ReadPool`]: reads from
//! many threads share them, many in flight at once) and a keeper thread that attaches again
//! when the engine goes away (socket closed, engine stopped or fenced) and swaps the new pool
//! in. Meanwhile reads wait for the new engine up to their deadline, then fail with
//! [`ReadError::NoEngine`]; a read in flight when the engine went is resubmitted once on the
//! new one (reads are idempotent, [`EngineReader`]), so an application sees an engine restart
//! as latency. Once the old engine has exited, the keeper presents the reader's region to the
//! new one ([`Client::reattach`]), which takes it over: the reader keeps one region for its
//! life, and views it handed out stay where they are. A reader started before its engine
//! waits for it ([`ReaderOptions::engine_wait`]).
//!
//! What a read returns is what SeaweedFS's volume server sends for `GET /<fid>` to a client
//! that does not accept gzip ([`content`]): gzip undone, ranges cut by HTTP's rules, a buffer
//! too small retried with the size the engine asks for. [`Reader::read_view`] is the
//! zero-copy form: the needle's stored bytes in the shared region, valid while the view lives
//! (even after the engine that wrote them is gone).

pub mod content;
mod pool;

pub use content::{Content, ReadError, ReadKind, ReadSpec, SubmitRead};
pub use pool::{PoolReader, ReadPool};

use crate::{AttachOptions, Client, ClientError, Completion, CompletionError, ErrorCode, ReadSource};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use volume_format::file_id::FileId;

/// How a [`Reader`] attaches and reads.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// The region asked for at each attach (queue pairs, entries, buffer area).
    pub attach: AttachOptions,
    /// How long one read may take, waiting for an engine included.
    pub timeout: Duration,
    /// How long [`Reader::connect`] waits for an engine that is not there yet.
    pub engine_wait: Duration,
    /// Attach again when the engine goes away, and resubmit a read it took with it once.
    /// Off: the reader fails every read after the engine went, as a plain [`Client`] does.
    pub reattach: bool,
    /// How often a lost engine is attached again.
    pub retry_interval: Duration,
    /// Present the region to the next engine when one went away ([`Client::reattach`]), so
    /// views the application holds stay valid and new reads land in the same memory.
    /// Off: every re-attach makes a new region (held views still stay valid).
    pub keep_region: bool,
}

impl Default for ReaderOptions {
    fn default() -> ReaderOptions {
        ReaderOptions {
            attach: AttachOptions {
                queue_pairs: 4,
                sq_entries: 256,
                buffer_size_bytes: 64 << 20,
                ..Default::default()
            },
            timeout: Duration::from_secs(10),
            engine_wait: Duration::from_secs(60),
            reattach: true,
            retry_interval: Duration::from_millis(100),
            keep_region: true,
        }
    }
}

/// A thread-safe reader of needles by file id (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: RwLock<Option<Arc<ReadPool>>>,
    socket: PathBuf,
    options: ReaderOptions,
}

/// The [`SubmitRead`] of one request on a [`Reader`]: each read goes to the engine attached
/// now, waiting for one (until the request's deadline) while none is; a read the engine took
/// away with it (its connection closed, it stopped, or it answered `SHUTDOWN`) is submitted
/// once more on the next engine, so an engine restart costs the request latency only. A
/// second loss fails with [`ReadError::NoEngine`]. With re-attach off, reads go to the pool
/// as it is.
#[derive(Debug)]
pub struct EngineReader<'a> {
    reader: &'a Reader,
    /// `None` only while it waits for the next engine: a pool whose engine went away is let
    /// go before that wait, so its queue pairs (and the buffers of the reads the dead engine
    /// took) are freed as soon as no one else holds it.
    pool: Option<Arc<ReadPool>>,
    /// The attachment of the last read (whose region holds its buffer).
    client: Client,
    deadline: Instant,
    resubmitted: bool,
}

impl SubmitRead for EngineReader<'_> {
    fn submit_read(&mut self, spec: &ReadSpec) -> Result<Completion, ReadError> {
        let options = &self.reader.inner.options;
        // Bounded: at most one resubmission, and the waits end at the deadline.
        loop {
            let pool = match &self.pool {
                Some(pool) => pool.clone(),
                None => return Err(ReadError::NoEngine),
            };
            let reply =
                pool.reader_until(self.deadline).submit_read(spec).and_then(|completion| match completion.result() {
                    Err(error @ CompletionError::Engine { code: ErrorCode::SHUTDOWN, .. }) => {
                        Err(ReadError::Needle(error))
                    }
                    _ => Ok(completion),
                });
            match reply {
                Err(error) if options.reattach && error.engine_went_away() => {
                    if self.resubmitted {
                        return Err(ReadError::NoEngine);
                    }
                    if matches!(error, ReadError::Needle(_)) {
                        // It answered SHUTDOWN: wait for the next engine rather than meet it again.
                        pool.engine_leaving();
                    }
                    self.resubmitted = true;
                    self.pool = None;
                    drop(pool);
                    let next = self.reader.inner.pool_until(self.deadline)?;
                    self.client = next.client().clone();
                    self.pool = Some(next);
                }
                outcome => return outcome,
            }
        }
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

/// A needle's stored bytes where the engine put them, in the shared region: no copy. The
/// bytes stay valid (and the region mapped) while the view lives.
#[derive(Debug)]
pub struct NeedleView {
    completion: Completion,
    range: std::ops::Range<usize>,
}

impl NeedleView {
    /// Which transport served the needle.
    pub fn source(&self) -> ReadSource {
        self.completion.source()
    }

    /// Whether the needle is stored gzip-compressed (the view holds the stored bytes; see
    /// [`content::served_bytes`]).
    pub fn gzipped(&self) -> bool {
        self.completion.gzipped()
    }
}

impl std::ops::Deref for NeedleView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The range was checked against the buffer when the view was made.
        self.completion.buffer.as_ref().map_or(&[], |buffer| &buffer.bytes()[self.range.clone()])
    }
}

impl Reader {
    /// Attaches to the engine at `socket` (waiting for it at most `options.engine_wait`) and,
    /// with `options.reattach`, starts the keeper thread.
    pub fn connect(socket: impl AsRef<Path>, options: ReaderOptions) -> Result<Reader, ReadError> {
        let inner = Inner { pool: RwLock::new(None), socket: socket.as_ref().to_path_buf(), options };
        let deadline = Instant::now() + inner.options.engine_wait;
        let mut said = false;
        // Bounded by the deadline.
        let pool = loop {
            match inner.attach() {
                Ok(pool) => break pool,
                Err(error) if Instant::now() < deadline => {
                    if !said {
                        tracing::warn!(socket = %inner.socket.display(), %error, wait_s = inner.options.engine_wait.as_secs(), "waiting for the engine");
                        said = true;
                    }
                    std::thread::sleep(inner.options.retry_interval);
                }
                Err(error) => return Err(error),
            }
        };
        if said {
            tracing::info!(socket = %inner.socket.display(), "attached to the engine");
        }
        let pool = Arc::new(pool);
        inner.replace(Some(pool.clone()));
        let inner = Arc::new(inner);
        if inner.options.reattach {
            let keeper = Arc::downgrade(&inner);
            let thread = std::thread::Builder::new()
                .name("rdma-reader-attach".into())
                .spawn(move || keep(&keeper))
                .map_err(|error| ReadError::Disconnected(format!("cannot start the keeper thread: {error}")))?;
            pool.watch(thread.thread().clone());
        }
        Ok(Reader { inner })
    }

    /// The content of file id `fid` (e.g. `3,01637037d6`) as the volume server serves it.
    pub fn read_file_id(&self, fid: &str) -> Result<Vec<u8>, ReadError> {
        Ok(self.read(fid.parse()?, None)?.data)
    }

    /// `length` bytes at `offset` of what [`Reader::read_file_id`] returns (HTTP's rules: an
    /// offset at or past the end is [`ReadError::RangeNotSatisfiable`], an end past the data
    /// is clipped).
    pub fn read_range(&self, fid: &str, offset: u64, length: u64) -> Result<Vec<u8>, ReadError> {
        Ok(self.read(fid.parse()?, Some((offset, Some(length))))?.data)
    }

    /// Reads `fid`'s content into `buffer`; the number of bytes written.
    /// [`ReadError::BufferTooSmall`] when it does not fit (nothing is written then).
    pub fn read_into(&self, fid: &str, buffer: &mut [u8]) -> Result<usize, ReadError> {
        let view = self.read_view(fid)?;
        let copy = |data: &[u8], buffer: &mut [u8]| match buffer.get_mut(..data.len()) {
            Some(target) => {
                target.copy_from_slice(data);
                Ok(data.len())
            }
            None => Err(ReadError::BufferTooSmall { buffer_bytes: buffer.len(), data_bytes: data.len() }),
        };
        if view.gzipped() && content::is_gzip(&view) {
            return copy(&content::gunzip(&view)?, buffer);
        }
        copy(&view, buffer)
    }

    /// The needle's stored data where the engine landed it (zero-copy; see [`NeedleView`]).
    pub fn read_view(&self, fid: &str) -> Result<NeedleView, ReadError> {
        let file_id: FileId = fid.parse()?;
        self.with_pool(|reader| {
            let mut read_count = 0;
            let completion = content::read_retrying(
                reader,
                file_id,
                ReadKind::Whole,
                content::INITIAL_BUFFER_BYTES,
                &mut read_count,
            )?;
            let (_, range) = content::landed(reader.client(), &completion)?;
            Ok(NeedleView { completion, range })
        })
    }

    /// Many needles at once, zero-copy: every read is submitted before any is waited for
    /// (the pool's lanes batch them), which is how one thread keeps many reads in flight.
    /// One result per file id, in order; a needle too large for the first buffer is read
    /// again alone with the size the engine asked for.
    pub fn read_many_views(&self, fids: &[&str]) -> Vec<Result<NeedleView, ReadError>> {
        let deadline = Instant::now() + self.inner.options.timeout;
        let parsed: Vec<Result<FileId, ReadError>> =
            fids.iter().map(|fid| fid.parse::<FileId>().map_err(ReadError::from)).collect();
        let specs: Vec<ReadSpec> = parsed
            .iter()
            .flatten()
            .map(|&file_id| ReadSpec { file_id, kind: ReadKind::Whole, buffer_bytes: content::INITIAL_BUFFER_BYTES })
            .collect();
        let mut replies = match self.inner.pool_until(deadline) {
            Ok(pool) => pool.submit_many(&specs, deadline).into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        parsed
            .into_iter()
            .zip(fids)
            .map(|(file_id, fid)| {
                file_id?;
                match replies.next() {
                    Some(Ok(completion)) => match completion.result() {
                        Ok(_) => {
                            let range = completion.data_range().filter(|range| {
                                completion.buffer.as_ref().is_some_and(|buffer| range.end <= buffer.length() as usize)
                            });
                            Ok(NeedleView { range: range.ok_or(ReadError::BadCompletion)?, completion })
                        }
                        Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, .. }) => self.read_view(fid),
                        Err(error) => Err(ReadError::Needle(error)),
                    },
                    // A lost engine, no pool, or a read the lane could not take: this one
                    // alone, through the path that waits for an engine and retries.
                    _ => self.read_view(fid),
                }
            })
            .collect()
    }

    /// The content of `file_id`, or of a range of it (`Some((offset, size))`, `size` `None`
    /// meaning to the end), with how it was served.
    pub fn read(&self, file_id: FileId, range: Option<(u64, Option<u64>)>) -> Result<Content, ReadError> {
        self.with_pool(|reader| content::read_content(reader, file_id, range))
    }

    /// The region's memfd (device, inode) of the attachment now, if any: the same after an
    /// engine restart when the new engine took the region over.
    pub fn region_file(&self) -> Option<(u64, u64)> {
        self.inner.current().and_then(|pool| pool.client().region_file().ok())
    }

    /// Whether an engine is attached and alive now.
    pub fn connected(&self) -> bool {
        self.inner.current().is_some_and(|pool| pool.connected())
    }

    /// The read pool of the engine attached now, if any.
    pub fn pool(&self) -> Option<Arc<ReadPool>> {
        self.inner.current()
    }

    /// Runs `read` with the read's deadline on the engine attached now (see [`EngineReader`]).
    fn with_pool<T>(&self, read: impl Fn(&mut EngineReader<'_>) -> Result<T, ReadError>) -> Result<T, ReadError> {
        read(&mut self.engine_reader(Instant::now() + self.inner.options.timeout)?)
    }

    /// A reader for one request whose reads all end by `deadline`, on whatever engine is
    /// attached (see [`EngineReader`]); waits for one until `deadline` while none is. For
    /// callers that drive [`content`]'s functions themselves, as `rdma-sidecar` does.
    pub fn engine_reader(&self, deadline: Instant) -> Result<EngineReader<'_>, ReadError> {
        let pool = self.inner.pool_until(deadline)?;
        Ok(EngineReader { reader: self, client: pool.client().clone(), pool: Some(pool), deadline, resubmitted: false })
    }

    /// How long one read may take ([`ReaderOptions::timeout`]).
    pub fn timeout(&self) -> Duration {
        self.inner.options.timeout
    }
}

impl Inner {
    fn attach(&self) -> Result<ReadPool, ReadError> {
        let client = Client::attach(&self.socket, &self.options.attach).map_err(ReadError::Attach)?;
        ReadPool::start(client, self.options.timeout).map_err(ReadError::Attach)
    }

    /// Attaches after the engine went away: presents the region of `lost` (the retired pool
    /// of that engine) to the new engine when the old engine has exited (a live one could
    /// still write into its rings), else attaches a new region. `lost` is cleared once it is
    /// settled. The pool is held until the exit is known, so its queue pairs, dropped after,
    /// free the buffers of reads the old engine never answered instead of quarantining them.
    fn attach_again(&self, lost: &mut Option<Lost>) -> Result<ReadPool, ReadError> {
        if let Some(previous) = lost.as_ref() {
            match previous.client.engine_exited(ENGINE_EXIT_LOOK) {
                // Still draining, or closing its descriptors: the next engine cannot be up yet.
                Some(false) if previous.since.elapsed() < ENGINE_EXIT_WAIT => return Err(ReadError::NoEngine),
                Some(false) => {
                    tracing::info!(
                        "the old engine has not exited; attaching a new region instead of presenting the old one"
                    );
                    *lost = None;
                }
                _ => {}
            }
        }
        if let Some(Lost { client: previous, pool, since }) = lost.take() {
            drop(pool);
            match previous.reattach(&self.socket, &self.options.attach.client_name) {
                Ok(client) => {
                    tracing::info!("the new engine took this reader's region over");
                    return ReadPool::start(client, self.options.timeout).map_err(ReadError::Attach);
                }
                Err(ClientError::Refused(reason)) => {
                    tracing::warn!(%reason, "the engine did not take this reader's region over; attaching a new one");
                }
                Err(error) => {
                    // No engine yet: present the region again next time.
                    *lost = Some(Lost { client: previous, pool: None, since });
                    return Err(ReadError::Attach(error));
                }
            }
        }
        self.attach()
    }

    fn current(&self) -> Option<Arc<ReadPool>> {
        self.pool.read().ok().and_then(|pool| pool.clone())
    }

    /// A pool not known to be disconnected, waiting for the keeper to attach one until
    /// `deadline` (a read on a pool whose engine died meanwhile fails with `Disconnected`
    /// and is resubmitted). Without re-attach, the pool as it is (its reads then fail with
    /// what broke it).
    fn pool_until(&self, deadline: Instant) -> Result<Arc<ReadPool>, ReadError> {
        // Bounded by the deadline.
        loop {
            match self.current() {
                Some(pool) if !self.options.reattach || !pool.known_disconnected() => return Ok(pool),
                _ if Instant::now() >= deadline => return Err(ReadError::NoEngine),
                _ => std::thread::sleep(RETRY_POLL.min(deadline.saturating_duration_since(Instant::now()))),
            }
        }
    }

    /// Swaps the pool; the old one is dropped here, outside the lock (its lanes end once
    /// their reads have failed or landed).
    fn replace(&self, pool: Option<Arc<ReadPool>>) {
        let old = match self.pool.write() {
            Ok(mut held) => std::mem::replace(&mut *held, pool),
            Err(_) => pool,
        };
        drop(old);
    }
}

/// How often a read waiting for an engine looks for the keeper's new pool.
const RETRY_POLL: Duration = Duration::from_millis(5);
/// The keeper's pause between attach attempts for [`RETRY_FAST_FOR`] after the engine went
/// away (a restarted engine is usually back within it); then it doubles up to
/// [`ReaderOptions::retry_interval`].
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_FAST_FOR: Duration = Duration::from_secs(2);
/// How long the keeper waits for an engine that went away (closed its socket, stopped, or
/// said it is shutting down) to have exited before it presents the region to the next one;
/// past it, it attaches a new region. An engine closes its descriptors moments before it
/// exits, and drains its reads (bounded by their deadlines) when it shuts down.
const ENGINE_EXIT_WAIT: Duration = Duration::from_secs(30);
/// How long one look of the keeper's waits for that exit.
const ENGINE_EXIT_LOOK: Duration = Duration::from_millis(20);

/// The attachment of an engine that went away, whose region the next engine may take over,
/// with its retired pool (held until the old engine is known to have exited).
struct Lost {
    client: Client,
    pool: Option<Arc<ReadPool>>,
    /// When the engine was found gone.
    since: Instant,
}

/// The keeper: watches the engine and attaches again when it is gone; ends with the reader.
fn keep(inner: &Weak<Inner>) {
    let mut failures = 0u64;
    // The attachment of the engine that went away, whose region the next engine may take over.
    let mut lost: Option<Lost> = None;
    let interval = match inner.upgrade() {
        Some(inner) => inner.options.retry_interval,
        None => return,
    };
    let mut pause = interval;
    let mut gone_since = Instant::now();
    // Ends when the last Reader is dropped. Parked between looks: a lane that finds the
    // engine gone unparks it at once.
    loop {
        std::thread::park_timeout(pause);
        let Some(inner) = inner.upgrade() else { return };
        if inner.current().is_some_and(|pool| pool.connected()) {
            continue;
        }
        if let Some(pool) = inner.current() {
            tracing::warn!(socket = %inner.socket.display(), "the engine is gone; attaching again (every {interval:?} at most)");
            // A fenced region stays with its (live) engine; a stopped or vanished engine's
            // region can go to the next one.
            let gone = pool.engine_is_leaving()
                || matches!(pool.client().check_alive(), Err(ClientError::EngineGone | ClientError::EngineStopped));
            pool.retire();
            if gone && inner.options.keep_region {
                lost = Some(Lost { client: pool.client().clone(), pool: Some(pool.clone()), since: Instant::now() });
            }
            inner.replace(None);
            gone_since = Instant::now();
        }
        match inner.attach_again(&mut lost) {
            Ok(pool) => {
                tracing::info!(socket = %inner.socket.display(), after_failures = failures, "attached to the engine again");
                failures = 0;
                pause = interval;
                let pool = Arc::new(pool);
                pool.watch(std::thread::current());
                inner.replace(Some(pool));
            }
            Err(error) => {
                failures += 1;
                pause = if gone_since.elapsed() < RETRY_FAST_FOR { RETRY_FIRST } else { (pause * 2).min(interval) };
                if failures.is_power_of_two() {
                    tracing::info!(%error, failures, "no engine to attach to yet");
                }
            }
        }
    }
}
