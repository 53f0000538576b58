//! The local transport: volumes on this host, read with `pread` straight
//! into the client's shared buffer (no intermediate copy), then checked in
//! place.
//!
//! The directories are a live SeaweedFS volume server's `-dir`: volumes appear
//! (found by [`LocalVolumes::refresh_all`] and on a read of an unknown volume),
//! grow (index tails applied when a read finds the index older than
//! [`INDEX_MAX_AGE`], on a miss, and once a second), and are replaced by
//! a vacuum (noticed by device and inode, or a shrunk `.idx`, and reopened as a
//! consistent pair: see [`volume_format::volume::LocalVolume::open`]). Until
//! the new pair is open the old one is read, so a read returns the old needle,
//! the new one, or an error, never bytes of another needle. Everything in a
//! directory that is not `[collection_]<id>.dat` (`.idx`, `.vif`, `.ldb/`,
//! `.vid_stamp`, `vol_dir.uuid`, compaction files) is skipped without a word;
//! a volume that cannot be served is said once, with its reason.

pub mod io;
mod reads;
mod scan;

use super::check::CheckCopy;
use super::fetch::{NeedleFetch, Step, SCRATCH_BYTES};
use super::ReadResult;
use crate::metrics::{IndexRefresh, METRICS};
use shm_layout::entry::{ErrorCode, NeedleRead};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};
use volume_format::index::OffsetWidth;
use volume_format::version::Version;
use volume_format::volume::{LocalVolume, Location};

pub use self::reads::Started;
pub(crate) use self::scan::{stamp_of, Refusal, Refusals};

/// Largest read served at once from the page cache on the poller (see
/// [`LocalVolumes::try_inline`]); larger reads go through the I/O backend, whose kernel
/// workers copy them while the poller serves other clients.
pub const INLINE_BYTES_MAX: u64 = 4 << 20;
/// Bytes a poller pass reads inline at most (the read that crosses it is the last): the rest
/// of the pass's reads go to the I/O backend, so one client's large reads do not hold up the
/// others' small ones. 2 MiB holds a depth-32 batch of 64 KiB reads: at 1 MiB half of them
/// went to io_uring's workers, which on a 2-vCPU host take the client's CPU (64 KiB depth 32:
/// 73 k/s at 1 MiB, 111-116 k/s at 2 MiB, single-thread `pread` + CRC 141 k/s). A pass is
/// then at most about a quarter of a millisecond of copying and checking.
pub const INLINE_BYTES_PER_PASS: u64 = 2 << 20;
/// Least time between two directory scans caused by reads of unknown volumes
/// (a client can ask for any volume id, as often as it likes).
const MISS_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Oldest a volume's index may be when a read uses it: entries appended since
/// (a delete's tombstone) are seen within this bound. A deleted needle's record
/// is still in the `.dat`, so only the index tells; refreshing costs three
/// `stat`s, at most once per bound and volume.
pub const INDEX_MAX_AGE: Duration = Duration::from_millis(1);

/// A served volume and when its index was last brought up to date.
#[derive(Debug)]
struct Served {
    volume: LocalVolume,
    refreshed_at: Instant,
}

/// Every volume found in the configured directories, by volume id.
#[derive(Debug)]
pub struct LocalVolumes {
    dirs: Vec<PathBuf>,
    width: OffsetWidth,
    volumes: HashMap<u32, Served>,
    /// Files seen and not served, so each is said once.
    refusals: Refusals,
    last_scan: Instant,
    /// Where landed records are copied to be checked.
    copy: CheckCopy,
    /// Reads in flight in the I/O backend, once [`LocalVolumes::start_io`] ran.
    reads: Option<reads::LocalReads>,
    /// Scratch list of backend answers (kept to not allocate per pass).
    answers: Vec<(u64, i64)>,
    /// `RWF_NOWAIT` reads work on these files (cleared the first time they do not).
    nowait_works: bool,
    /// What this poller pass may still read inline.
    inline_budget_bytes: u64,
}

impl LocalVolumes {
    /// Loads every volume of `dirs`. A file that is not a usable volume is
    /// reported (which file and why) and skipped; the rest are served.
    /// Every directory must be readable: one that is not is named with its reason (a
    /// missing mount would otherwise pass for a directory without volumes).
    pub fn load(dirs: &[PathBuf], width: OffsetWidth) -> Result<LocalVolumes, (PathBuf, std::io::Error)> {
        LocalVolumes::load_with(dirs, width, Refusals::default())
    }

    /// Loads like [`LocalVolumes::load`] and says nothing of the volumes it serves or
    /// refuses: for an index beside another scan of the same directories that says it (the
    /// UCX exporter's lookups).
    pub fn load_quietly(dirs: &[PathBuf], width: OffsetWidth) -> Result<LocalVolumes, (PathBuf, std::io::Error)> {
        LocalVolumes::load_with(dirs, width, Refusals::quiet())
    }

    fn load_with(
        dirs: &[PathBuf],
        width: OffsetWidth,
        refusals: Refusals,
    ) -> Result<LocalVolumes, (PathBuf, std::io::Error)> {
        for dir in dirs {
            std::fs::read_dir(dir).map_err(|error| (dir.clone(), error))?;
        }
        let mut volumes = LocalVolumes {
            dirs: dirs.to_vec(),
            width,
            volumes: HashMap::new(),
            refusals,
            last_scan: Instant::now(),
            copy: CheckCopy::default(),
            reads: None,
            answers: Vec::new(),
            nowait_works: true,
            inline_budget_bytes: INLINE_BYTES_PER_PASS,
        };
        volumes.scan();
        crate::allocator::release_free_memory();
        Ok(volumes)
    }

    /// Starts the I/O backend that reads in flight use (on the poller thread; `wake` rings its
    /// doorbell), for at most `capacity` reads at once.
    pub fn start_io(
        &mut self,
        kind: io::LocalIoKind,
        threads: usize,
        capacity: usize,
        wake: super::http::Waker,
    ) -> std::io::Result<()> {
        let backend = io::LocalIo::start(kind, threads, capacity * 3, wake)?;
        let reads = reads::LocalReads::new(backend, capacity);
        tracing::info!(backend = reads.backend(), "local reads ready");
        self.answers = Vec::with_capacity(capacity * 3);
        self.reads = Some(reads);
        Ok(())
    }

    /// Whether volume directories are configured (volumes may appear in them later).
    pub fn has_dirs(&self) -> bool {
        !self.dirs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    /// Whether `volume_id` is served here. An unknown id rescans the
    /// directories first (at most every [`MISS_SCAN_INTERVAL`]): the volume
    /// server may have just created it.
    pub fn serves(&mut self, volume_id: u32) -> bool {
        if self.volumes.contains_key(&volume_id) {
            return true;
        }
        if self.dirs.is_empty() || self.last_scan.elapsed() < MISS_SCAN_INTERVAL {
            return false;
        }
        self.scan();
        self.volumes.contains_key(&volume_id)
    }

    /// Picks up new volumes, entries appended to every index, replaced and
    /// removed volumes.
    pub fn refresh_all(&mut self) {
        self.scan();
        let ids: Vec<u32> = self.volumes.keys().copied().collect();
        for volume_id in ids {
            self.refresh(volume_id);
        }
    }

    /// Bytes the volumes' needle indexes hold.
    pub fn index_bytes(&self) -> usize {
        self.volumes.values().map(|served| served.volume.index().memory_bytes()).sum()
    }

    /// The ids of the volumes served.
    pub fn volume_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.volumes.keys().copied()
    }

    /// The export role's lookup: where a needle lies (by an index at most [`INDEX_MAX_AGE`]
    /// old at `now`), the volume's version and its `.dat`, held open while a reply is sent.
    pub fn locate_shared(
        &mut self,
        volume_id: u32,
        needle_id: u64,
        now: Instant,
    ) -> Result<(Location, Version, Arc<File>), (ErrorCode, u64)> {
        if !self.serves(volume_id) {
            return Err((ErrorCode::NO_SUCH_VOLUME, 0));
        }
        let read = NeedleRead { volume_id, needle_id, cookie: 0, buffer_offset: 0, buffer_length: 0, range: None };
        let location = self.locate_fresh(&read, now)?;
        let volume = &self.volumes.get(&volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?.volume;
        Ok((location, volume.version(), volume.shared_dat_file()))
    }

    /// (device, inode) of the `.dat` a volume is served from (no system call).
    pub fn dat_identity(&self, volume_id: u32) -> Option<(u64, u64)> {
        self.volumes.get(&volume_id).map(|served| served.volume.dat_identity())
    }

    /// Opens a volume's files again when they were replaced (a check failed on them: they may
    /// have been compacted meanwhile). Whether they were.
    pub fn refresh_if_replaced(&mut self, volume_id: u32) -> bool {
        let replaced = self.volumes.get(&volume_id).is_some_and(|served| served.volume.is_replaced());
        if replaced {
            self.refresh(volume_id);
        }
        replaced
    }

    /// Follows one volume: reopens it when its files were replaced (keeping
    /// the old pair while a compaction is committing), else applies its index
    /// tail. A volume that cannot be reopened is withdrawn.
    fn refresh(&mut self, volume_id: u32) {
        let Some(served) = self.volumes.get_mut(&volume_id) else { return };
        served.refreshed_at = Instant::now();
        if !served.volume.is_replaced() {
            match served.volume.refresh_index() {
                Ok(applied) if applied.entry_count > 0 => METRICS.count_index_refresh(IndexRefresh::Appended),
                Ok(_) => {}
                Err(error) => tracing::warn!(volume_id, %error, "cannot refresh the index"),
            }
            return;
        }
        let dat_path = served.volume.dat_path().to_path_buf();
        match scan::open_checked(&dat_path, self.width) {
            Ok(reopened) => {
                let live_needles = reopened.index().live_count();
                if !self.refusals.is_quiet() {
                    tracing::info!(volume_id, file = %dat_path.display(), live_needles, "local volume replaced (compacted or copied); reading the new files");
                }
                served.volume = reopened;
                crate::allocator::release_free_memory();
                METRICS.count_index_refresh(IndexRefresh::Replaced);
            }
            Err(Refusal::Later) => {}
            Err(Refusal::Now(reason)) => {
                self.volumes.remove(&volume_id);
                if !self.refusals.is_quiet() {
                    tracing::warn!(volume_id, file = %dat_path.display(), "local volume withdrawn: {reason}");
                }
            }
        }
    }

    /// Reads and checks one needle into `buffer` (the validated range the
    /// SQE named: `read.buffer_length` bytes) with blocking `pread`s: what serves when no I/O
    /// backend was started. A check that fails on a volume whose files were replaced meanwhile
    /// is retried once on the new files.
    pub fn read(&mut self, read: &NeedleRead, buffer: NonNull<u8>) -> ReadResult {
        self.read_now(read, buffer, Wait::Block, None).unwrap_or(Err((ErrorCode::IO_ERROR, 0)))
    }

    /// A poller pass begins: its inline budget is whole again.
    pub fn begin_pass(&mut self) {
        self.inline_budget_bytes = INLINE_BYTES_PER_PASS;
    }

    /// Serves a read at once when it is small ([`INLINE_BYTES_MAX`]), the pass's budget
    /// ([`INLINE_BYTES_PER_PASS`]) is not spent, and its pages are cached
    /// (`preadv2` with `RWF_NOWAIT`: one system call on the poller, which never waits for the
    /// disk). `None`: it goes through [`LocalVolumes::start`] instead. `now` is when the
    /// caller took the read (the index's age is judged by it: one clock read less per read).
    pub fn try_inline(&mut self, read: &NeedleRead, buffer: NonNull<u8>, now: Instant) -> Option<ReadResult> {
        if self.reads.is_none() {
            return Some(self.read(read, buffer));
        }
        if !self.nowait_works || self.inline_budget_bytes == 0 {
            return None;
        }
        let location = match self.locate_fresh(read, now) {
            Ok(location) => location,
            Err(error) => return Some(Err(error)),
        };
        let inline_bytes = read.range.map_or(location.record_size_bytes, |range| range.length);
        if inline_bytes > INLINE_BYTES_MAX {
            return None;
        }
        self.inline_budget_bytes = self.inline_budget_bytes.saturating_sub(inline_bytes);
        match self.read_now(read, buffer, Wait::NotForTheDisk, Some(location)) {
            Ok(result) => Some(result),
            Err(WouldBlock::Disk) => None,
            Err(WouldBlock::Unsupported) => {
                self.nowait_works = false;
                tracing::info!("the volume file system cannot read without waiting (RWF_NOWAIT); every local read goes through the I/O backend");
                None
            }
        }
    }

    /// Reads (at `located`, when the caller looked the needle up already) and checks; a check
    /// that fails on a volume replaced meanwhile is retried once on the new files.
    fn read_now(
        &mut self,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        wait: Wait,
        located: Option<Location>,
    ) -> Result<ReadResult, WouldBlock> {
        let result = self.read_once(read, buffer, wait, located)?;
        if is_stale(&result) && self.volumes.get(&read.volume_id).is_some_and(|served| served.volume.is_replaced()) {
            self.refresh(read.volume_id);
            return self.read_once(read, buffer, wait, None);
        }
        Ok(result)
    }

    fn read_once(
        &mut self,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        wait: Wait,
        located: Option<Location>,
    ) -> Result<ReadResult, WouldBlock> {
        let location = match located.map_or_else(|| self.locate_fresh(read, Instant::now()), Ok) {
            Ok(location) => location,
            Err(error) => return Ok(Err(error)),
        };
        let Some(served) = self.volumes.get(&read.volume_id) else { return Ok(Err((ErrorCode::NO_SUCH_VOLUME, 0))) };
        read_located(&served.volume, read, &location, buffer, &mut self.copy, wait)
    }

    /// Where the needle is, by an index at most [`INDEX_MAX_AGE`] old (refreshed first when
    /// older than that at `now`, and on a miss).
    fn locate_fresh(&mut self, read: &NeedleRead, now: Instant) -> Result<Location, (ErrorCode, u64)> {
        let served = self.volumes.get(&read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        // The common case: a fresh index that has the needle (one lookup).
        if now.saturating_duration_since(served.refreshed_at) < INDEX_MAX_AGE {
            if let Some(location) = served.volume.locate(read.needle_id) {
                return Ok(location);
            }
        } else {
            self.refresh(read.volume_id);
        }
        self.locate(read.volume_id, read.needle_id)
    }

    /// Finds a needle, refreshing the volume once on a miss (it may have been
    /// appended since the last look, or replaced).
    fn locate(&mut self, volume_id: u32, needle_id: u64) -> Result<Location, (ErrorCode, u64)> {
        let volume = &self.volumes.get(&volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?.volume;
        if let Some(location) = volume.locate(needle_id) {
            return Ok(location);
        }
        self.refresh(volume_id);
        let volume = &self.volumes.get(&volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?.volume;
        if let Some(location) = volume.locate(needle_id) {
            return Ok(location);
        }
        if volume.index().is_deleted(needle_id) {
            Err((ErrorCode::DELETED, 0))
        } else {
            Err((ErrorCode::NO_SUCH_NEEDLE, 0))
        }
    }
}

/// Whether a failed read may have read a volume that was replaced meanwhile (the check failed,
/// or the file ended early).
fn is_stale(result: &ReadResult) -> bool {
    matches!(
        result,
        Err((
            ErrorCode::COOKIE_MISMATCH | ErrorCode::CRC_MISMATCH | ErrorCode::CORRUPT_NEEDLE | ErrorCode::IO_ERROR,
            _
        ))
    )
}

/// Whether a `pread` may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Block,
    /// `RWF_NOWAIT`: only what the page cache holds.
    NotForTheDisk,
}

/// A read that would have had to wait for the disk (or cannot be asked not to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WouldBlock {
    Disk,
    Unsupported,
}

/// What one piece's `pread`s gave.
enum Fetched {
    Done,
    Failed(ErrorCode),
    Blocked(WouldBlock),
}

/// `pread` of exactly `length` bytes at `offset` into `destination`.
fn pread_exact(file: &File, destination: NonNull<u8>, length: u64, offset: u64, wait: Wait) -> Fetched {
    let flags = if wait == Wait::NotForTheDisk { libc::RWF_NOWAIT } else { 0 };
    let mut done = 0u64;
    // Bounded: each pass reads at least one byte or returns.
    while done < length {
        let iov = libc::iovec {
            // SAFETY: destination..destination+length lies in the buffer range the SQE named,
            // which Sqe::validate proved is inside the mapped buffer area (or in a buffer of ours
            // of at least `length` bytes); the kernel writes at most `length - done` bytes there.
            iov_base: unsafe { destination.as_ptr().add(done as usize).cast() },
            iov_len: (length - done) as usize,
        };
        // SAFETY: one iovec, described above.
        let result = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, (offset + done) as libc::off_t, flags) };
        match result {
            0 => return Fetched::Failed(ErrorCode::IO_ERROR),
            count if count > 0 => done += count as u64,
            _ => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) if flags != 0 => return Fetched::Blocked(WouldBlock::Disk),
                Some(libc::EOPNOTSUPP) if flags != 0 => return Fetched::Blocked(WouldBlock::Unsupported),
                _ => return Fetched::Failed(ErrorCode::IO_ERROR),
            },
        }
    }
    Fetched::Done
}

/// Reads and checks one needle with `pread`s, phase by phase ([`NeedleFetch`]).
fn read_located(
    volume: &LocalVolume,
    read: &NeedleRead,
    location: &Location,
    buffer: NonNull<u8>,
    copy: &mut CheckCopy,
    wait: Wait,
) -> Result<ReadResult, WouldBlock> {
    let (mut fetch, mut step) = NeedleFetch::begin(read, volume.version(), location.offset_bytes, location.size);
    let mut scratch = [0u8; SCRATCH_BYTES];
    // Bounded: a read has at most two phases, each of at most three pieces.
    loop {
        match step {
            Step::Done(result) => return Ok(result),
            Step::CheckFailed(code) => return Ok(Err((code, 0))),
            Step::Fetch(pieces) => {
                for piece in pieces.iter().flatten() {
                    let scratch_base = NonNull::from(&mut scratch).cast();
                    let Some(destination) = piece.destination(buffer, read.buffer_length, scratch_base) else {
                        return Ok(Err((ErrorCode::IO_ERROR, 0)));
                    };
                    match pread_exact(volume.dat_file(), destination, piece.length_bytes, piece.file_offset, wait) {
                        Fetched::Done => {}
                        Fetched::Failed(code) => return Ok(Err((code, 0))),
                        Fetched::Blocked(why) => return Err(why),
                    }
                }
                // SAFETY: `buffer` is the read's validated range and every piece has landed.
                step = unsafe { fetch.landed(buffer, &scratch, copy) };
            }
        }
    }
}
