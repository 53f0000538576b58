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

mod scan;

use super::check::{self, CHECK_HEADER_PREFIX_SIZE_BYTES};
use super::ReadDone;
use crate::metrics::{IndexRefresh, METRICS};
use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::{Duration, Instant};
use volume_format::index::OffsetWidth;
use volume_format::needle::{NeedleHeader, NeedleMeta, META_HEAD_MAX_BYTES};
use volume_format::version::TIMESTAMP_SIZE_BYTES;
use volume_format::volume::{LocalVolume, Location};

pub(crate) use self::scan::{stamp_of, Refusal, Refusals};

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
}

impl LocalVolumes {
    /// Loads every volume of `dirs`. A file that is not a usable volume is
    /// reported (which file and why) and skipped; the rest are served.
    /// Every directory must be readable: one that is not is named with its reason (a
    /// missing mount would otherwise pass for a directory without volumes).
    pub fn load(dirs: &[PathBuf], width: OffsetWidth) -> Result<LocalVolumes, (PathBuf, std::io::Error)> {
        for dir in dirs {
            std::fs::read_dir(dir).map_err(|error| (dir.clone(), error))?;
        }
        let mut volumes = LocalVolumes {
            dirs: dirs.to_vec(),
            width,
            volumes: HashMap::new(),
            refusals: Refusals::default(),
            last_scan: Instant::now(),
        };
        volumes.scan();
        Ok(volumes)
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
                tracing::info!(volume_id, file = %dat_path.display(), live_needles, "local volume replaced (compacted or copied); reading the new files");
                served.volume = reopened;
                METRICS.count_index_refresh(IndexRefresh::Replaced);
            }
            Err(Refusal::Later) => {}
            Err(Refusal::Now(reason)) => {
                self.volumes.remove(&volume_id);
                tracing::warn!(volume_id, file = %dat_path.display(), "local volume withdrawn: {reason}");
            }
        }
    }

    /// Reads and checks one needle into `buffer` (the validated range the
    /// SQE named: `read.buffer_length` bytes). A check that fails on a volume
    /// whose files were replaced meanwhile is retried once on the new files.
    pub fn read(&mut self, read: &NeedleRead, buffer: NonNull<u8>) -> Result<ReadDone, (ErrorCode, u64)> {
        let result = self.read_once(read, buffer);
        let stale = matches!(
            result,
            Err((
                ErrorCode::COOKIE_MISMATCH | ErrorCode::CRC_MISMATCH | ErrorCode::CORRUPT_NEEDLE | ErrorCode::IO_ERROR,
                _
            ))
        );
        if stale && self.volumes.get(&read.volume_id).is_some_and(|served| served.volume.is_replaced()) {
            self.refresh(read.volume_id);
            return self.read_once(read, buffer);
        }
        result
    }

    fn read_once(&mut self, read: &NeedleRead, buffer: NonNull<u8>) -> Result<ReadDone, (ErrorCode, u64)> {
        let served = self.volumes.get(&read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        // The common case: a fresh index that has the needle (one clock read, one lookup).
        if served.refreshed_at.elapsed() < INDEX_MAX_AGE {
            if let Some(location) = served.volume.locate(read.needle_id) {
                return read_located(&served.volume, read, &location, buffer);
            }
        } else {
            self.refresh(read.volume_id);
        }
        let location = self.locate(read.volume_id, read.needle_id)?;
        let volume = &self.volumes.get(&read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?.volume;
        read_located(volume, read, &location, buffer)
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

/// `pread` of exactly `length` bytes at `offset` into `destination`.
fn pread_exact(file: &File, destination: NonNull<u8>, length: u64, offset: u64) -> Result<(), (ErrorCode, u64)> {
    let mut done = 0u64;
    // Bounded: each pass reads at least one byte or returns.
    while done < length {
        // SAFETY: destination..destination+length lies in the buffer range
        // the SQE named, which Sqe::validate proved is inside the mapped
        // buffer area (or in a buffer of ours of at least `length` bytes);
        // the kernel writes at most `length - done` bytes there.
        let result = unsafe {
            libc::pread(
                file.as_raw_fd(),
                destination.as_ptr().add(done as usize).cast(),
                (length - done) as usize,
                (offset + done) as libc::off_t,
            )
        };
        match result {
            0 => return Err((ErrorCode::IO_ERROR, 0)),
            count if count > 0 => done += count as u64,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err((ErrorCode::IO_ERROR, 0)),
        }
    }
    Ok(())
}

fn read_located(
    volume: &LocalVolume,
    read: &NeedleRead,
    location: &Location,
    buffer: NonNull<u8>,
) -> Result<ReadDone, (ErrorCode, u64)> {
    match read.range {
        None => read_whole(volume, read, location, buffer),
        Some(range) => read_range(volume, read, location, range, buffer),
    }
}

fn read_whole(
    volume: &LocalVolume,
    read: &NeedleRead,
    location: &Location,
    buffer: NonNull<u8>,
) -> Result<ReadDone, (ErrorCode, u64)> {
    if location.record_size_bytes > read.buffer_length as u64 {
        return Err((ErrorCode::BUFFER_TOO_SMALL, location.record_size_bytes));
    }
    pread_exact(volume.dat_file(), buffer, location.record_size_bytes, location.offset_bytes)?;
    // SAFETY: the record was just read into this range of the validated buffer.
    let record = unsafe { std::slice::from_raw_parts(buffer.as_ptr(), location.record_size_bytes as usize) };
    let checked = check::check_whole(record, volume.version(), read.needle_id, read.cookie, location.size)
        .map_err(|code| (code, 0))?;
    Ok(ReadDone {
        data_offset_in_buffer: checked.data_offset_in_record,
        data_length: checked.data_length,
        gzipped: checked.gzipped,
    })
}

fn read_range(
    volume: &LocalVolume,
    read: &NeedleRead,
    location: &Location,
    range: ByteRange,
    buffer: NonNull<u8>,
) -> Result<ReadDone, (ErrorCode, u64)> {
    let dat = volume.dat_file();
    let mut prefix = [0u8; CHECK_HEADER_PREFIX_SIZE_BYTES];
    let prefix_length = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(location.record_size_bytes);
    pread_exact(dat, NonNull::from(&mut prefix).cast(), prefix_length, location.offset_bytes)?;
    let version = volume.version();
    let prefix = &prefix[..prefix_length as usize];
    let span = check::check_range_prefix(prefix, version, read.needle_id, read.cookie, location.size)
        .map_err(|code| (code, 0))?;
    // The flags (gzip mark) and the TTL follow the data: read them before the data, so an
    // expired needle writes nothing into the client's buffer.
    let header = NeedleHeader::parse(prefix).map_err(|error| (check::error_code(&error), 0))?;
    let ranges = NeedleMeta::ranges(version, location.size, &span);
    let mut head = [0u8; META_HEAD_MAX_BYTES];
    let head_length = ranges.head.end - ranges.head.start;
    pread_exact(dat, NonNull::from(&mut head).cast(), head_length, location.offset_bytes + ranges.head.start)?;
    let mut append_at = [0u8; TIMESTAMP_SIZE_BYTES];
    if let Some(range) = &ranges.append_at {
        pread_exact(
            dat,
            NonNull::from(&mut append_at).cast(),
            TIMESTAMP_SIZE_BYTES as u64,
            location.offset_bytes + range.start,
        )?;
    }
    let append_at = ranges.append_at.as_ref().map(|_| &append_at[..]);
    let meta = NeedleMeta::parse_head(&head, append_at, version, header, &span)
        .map_err(|error| (check::error_code(&error), 0))?;
    check::check_meta(&meta).map_err(|code| (code, 0))?;
    let (offset_in_record, length) = check::clamp_range(&span, range.offset, range.length).map_err(|code| (code, 0))?;
    if length > read.buffer_length as u64 {
        return Err((ErrorCode::BUFFER_TOO_SMALL, length));
    }
    pread_exact(dat, buffer, length, location.offset_bytes + offset_in_record)?;
    Ok(ReadDone { data_offset_in_buffer: 0, data_length: length, gzipped: meta.is_gzipped() })
}
