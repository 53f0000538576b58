//! The local transport: volumes on this host, read with `pread` straight
//! into the client's shared buffer (no intermediate copy), then checked in
//! place.

use super::check::{self, CHECK_HEADER_PREFIX_SIZE_BYTES};
use super::ReadDone;
use shm_layout::entry::{ByteRange, ErrorCode, NeedleRead};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use volume_format::index::OffsetWidth;
use volume_format::needle::flags;
use volume_format::version::NEEDLE_HEADER_SIZE_BYTES;
use volume_format::volume::{volume_id_from_dat_path, LocalVolume, Location};

/// One served volume: the parsed index (through `LocalVolume`) and our own
/// read-only handle on the `.dat` for `pread` into shared memory.
#[derive(Debug)]
struct ServedVolume {
    volume: LocalVolume,
    dat: File,
}

/// Every volume found in the configured directories, by volume id.
#[derive(Debug, Default)]
pub struct LocalVolumes {
    volumes: HashMap<u32, ServedVolume>,
}

/// Files SeaweedFS keeps beside volumes that are not ours to read.
fn is_known_companion(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("idx" | "vif" | "note" | "ldb" | "cpd" | "cpx"))
}

impl LocalVolumes {
    /// Loads every volume of `dirs`. A file that is not a usable volume is
    /// reported (which file and why) and skipped; the rest are served.
    pub fn load(dirs: &[PathBuf], width: OffsetWidth) -> Result<LocalVolumes, std::io::Error> {
        let mut volumes = HashMap::new();
        for dir in dirs {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(dir)?.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
            entries.sort();
            for path in entries {
                if path.extension().and_then(|e| e.to_str()) != Some("dat") {
                    if !is_known_companion(&path) {
                        tracing::warn!(file = %path.display(), "not a volume file (no .dat extension); ignored");
                    }
                    continue;
                }
                match Self::open_one(&path, width) {
                    Ok((volume_id, served)) if volumes.contains_key(&volume_id) => {
                        tracing::warn!(file = %served.volume.dat_path().display(), volume_id, "volume id served twice; this copy ignored");
                    }
                    Ok((volume_id, served)) => {
                        tracing::info!(
                            volume_id,
                            file = %path.display(),
                            live_needles = served.volume.index().live_count(),
                            version = served.volume.version().as_byte(),
                            "serving local volume"
                        );
                        volumes.insert(volume_id, served);
                    }
                    Err(reason) => tracing::warn!(file = %path.display(), "not served: {reason}"),
                }
            }
        }
        Ok(LocalVolumes { volumes })
    }

    fn open_one(dat_path: &Path, width: OffsetWidth) -> Result<(u32, ServedVolume), String> {
        let volume_id = volume_id_from_dat_path(dat_path).ok_or("its name is not [collection_]<volume id>.dat")?;
        let idx_path = dat_path.with_extension("idx");
        if !idx_path.exists() {
            return Err(format!("it has no index file {}", idx_path.display()));
        }
        let volume = LocalVolume::open(dat_path, &idx_path, width).map_err(|error| error.to_string())?;
        let dat = File::open(dat_path).map_err(|error| format!("cannot open it: {error}"))?;
        Ok((volume_id, ServedVolume { volume, dat }))
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }

    pub fn serves(&self, volume_id: u32) -> bool {
        self.volumes.contains_key(&volume_id)
    }

    /// Picks up entries appended to every index since the last look.
    pub fn refresh_all(&mut self) {
        for (volume_id, served) in self.volumes.iter_mut() {
            if let Err(error) = served.volume.refresh_index() {
                tracing::warn!(volume_id, %error, "cannot refresh the index");
            }
        }
    }

    /// Reads and checks one needle into `buffer` (the validated range the
    /// SQE named: `read.buffer_length` bytes).
    pub fn read(&mut self, read: &NeedleRead, buffer: NonNull<u8>) -> Result<ReadDone, (ErrorCode, u64)> {
        let served = self.volumes.get_mut(&read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        let location = locate(served, read.needle_id)?;
        match read.range {
            None => read_whole(served, read, &location, buffer),
            Some(range) => read_range(served, read, &location, range, buffer),
        }
    }
}

/// Finds a needle, refreshing the index once on a miss (it may have been
/// appended since the last look).
fn locate(served: &mut ServedVolume, needle_id: u64) -> Result<Location, (ErrorCode, u64)> {
    if let Some(location) = served.volume.locate(needle_id) {
        return Ok(location);
    }
    if let Err(error) = served.volume.refresh_index() {
        tracing::warn!(file = %served.volume.idx_path().display(), %error, "cannot refresh the index");
    }
    if let Some(location) = served.volume.locate(needle_id) {
        return Ok(location);
    }
    if served.volume.index().is_deleted(needle_id) {
        Err((ErrorCode::DELETED, 0))
    } else {
        Err((ErrorCode::NO_SUCH_NEEDLE, 0))
    }
}

/// `pread` of exactly `length` bytes at `offset` into `destination`.
fn pread_exact(file: &File, destination: NonNull<u8>, length: u64, offset: u64) -> Result<(), (ErrorCode, u64)> {
    let mut done = 0u64;
    // Bounded: each pass reads at least one byte or returns.
    while done < length {
        // SAFETY: destination..destination+length lies in the buffer range
        // the SQE named, which Sqe::validate proved is inside the mapped
        // buffer area; the kernel writes at most `length - done` bytes there.
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

fn read_whole(
    served: &ServedVolume,
    read: &NeedleRead,
    location: &Location,
    buffer: NonNull<u8>,
) -> Result<ReadDone, (ErrorCode, u64)> {
    if location.record_size_bytes > read.buffer_length as u64 {
        return Err((ErrorCode::BUFFER_TOO_SMALL, location.record_size_bytes));
    }
    pread_exact(&served.dat, buffer, location.record_size_bytes, location.offset_bytes)?;
    // SAFETY: the record was just read into this range of the validated buffer.
    let record = unsafe { std::slice::from_raw_parts(buffer.as_ptr(), location.record_size_bytes as usize) };
    let checked = check::check_whole(record, served.volume.version(), read.needle_id, read.cookie, location.size)
        .map_err(|code| (code, 0))?;
    Ok(ReadDone {
        data_offset_in_buffer: checked.data_offset_in_record,
        data_length: checked.data_length,
        gzipped: checked.gzipped,
    })
}

fn read_range(
    served: &ServedVolume,
    read: &NeedleRead,
    location: &Location,
    range: ByteRange,
    buffer: NonNull<u8>,
) -> Result<ReadDone, (ErrorCode, u64)> {
    let mut prefix = [0u8; CHECK_HEADER_PREFIX_SIZE_BYTES];
    let prefix_length = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(location.record_size_bytes);
    pread_exact(&served.dat, NonNull::from(&mut prefix).cast(), prefix_length, location.offset_bytes)?;
    let version = served.volume.version();
    let span = check::check_range_prefix(
        &prefix[..prefix_length as usize],
        version,
        read.needle_id,
        read.cookie,
        location.size,
    )
    .map_err(|code| (code, 0))?;
    let (offset_in_record, length) = check::clamp_range(&span, range.offset, range.length).map_err(|code| (code, 0))?;
    if length > read.buffer_length as u64 {
        return Err((ErrorCode::BUFFER_TOO_SMALL, length));
    }
    pread_exact(&served.dat, buffer, length, location.offset_bytes + offset_in_record)?;
    // The flags byte follows the data when the body has room for it (a
    // version 1 needle, or an empty body, has none).
    let flags_offset_in_record = span.data_offset_in_record + span.data_len;
    let body_has_flags = flags_offset_in_record < NEEDLE_HEADER_SIZE_BYTES as u64 + location.size as u64;
    let gzipped = match version {
        volume_format::Version::V1 => false,
        _ if !body_has_flags => false,
        _ => {
            let mut flag_byte = [0u8; 1];
            let flags_offset = location.offset_bytes + flags_offset_in_record;
            pread_exact(&served.dat, NonNull::from(&mut flag_byte).cast(), 1, flags_offset)?;
            flag_byte[0] & flags::IS_COMPRESSED != 0
        }
    };
    Ok(ReadDone { data_offset_in_buffer: 0, data_length: length, gzipped })
}
