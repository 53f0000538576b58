//! A volume on local disk: its `.dat` (super block + needle records) and its
//! `.idx`. [`LocalVolume`] locates needles through the index; [`scan`] walks
//! every record of a `.dat` in order without one.

mod scan;

pub use scan::{scan, ScannedRecord, VolumeScan};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::FormatError;
use crate::index::{ApplyOutcome, IndexError, NeedleIndex, OffsetWidth};
use crate::needle::{record_size_bytes, NeedleRecord};
use crate::superblock::{SuperBlock, SUPER_BLOCK_SIZE_BYTES};
use crate::version::Version;

/// Errors reading a volume; each names the file, and the byte offset where
/// one applies.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Opening or reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The super block at the start of the `.dat` is bad.
    #[error("volume file {path} has a bad super block: {source}")]
    SuperBlock {
        /// The `.dat`.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// Loading or refreshing the `.idx` failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A record runs past the end of the file.
    #[error("volume file {path} is truncated at byte offset {offset_bytes}: the record there needs {needed_bytes} bytes but only {available_bytes} remain")]
    Truncated {
        /// The `.dat`.
        path: PathBuf,
        /// Where the record starts.
        offset_bytes: u64,
        /// Bytes the record needs (16 when its header is cut).
        needed_bytes: u64,
        /// Bytes left in the file from there.
        available_bytes: u64,
    },
    /// A record's bytes are bad, or are not the needle asked for.
    #[error("volume file {path} has a bad record at byte offset {offset_bytes}: {source}")]
    Record {
        /// The `.dat`.
        path: PathBuf,
        /// Where the record starts.
        offset_bytes: u64,
        /// What is wrong.
        source: FormatError,
    },
    /// SeaweedFS is renaming new files over the volume's (a compaction's commit): the pair
    /// opened might not match.
    #[error("volume {path} is being replaced (a compaction is committing); try again")]
    BeingReplaced {
        /// The `.dat`.
        path: PathBuf,
    },
    /// The index has no live entry for the needle.
    #[error("needle {needle_id:#x} is not in the index of {path} (never written or deleted)")]
    NotFound {
        /// The `.idx`.
        path: PathBuf,
        /// The needle asked for.
        needle_id: u64,
    },
}

/// Where a live needle's record is in the `.dat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Byte offset of the record.
    pub offset_bytes: u64,
    /// Header size as the index holds it.
    pub size: u32,
    /// The whole record: header, body, checksum, v3 timestamp, padding.
    pub record_size_bytes: u64,
}

/// An opened volume: its super block and its replayed index, read through the `.dat` and
/// `.idx` it opened, which stay a consistent pair even after SeaweedFS renames new files over
/// the paths (a vacuum's commit): see [`LocalVolume::is_replaced`].
#[derive(Debug)]
pub struct LocalVolume {
    dat_path: PathBuf,
    idx_path: PathBuf,
    /// Shared with reads in flight, which keep it open past a replacement.
    dat: Arc<File>,
    idx: File,
    /// (device, inode) of `dat` and `idx` as opened.
    identity: [(u64, u64); 2],
    super_block: SuperBlock,
    index: NeedleIndex,
}

impl LocalVolume {
    /// Read the super block of `dat_path` and replay all of `idx_path` (but a trailing
    /// partial entry, which a live volume server may be appending).
    ///
    /// The pair is consistent even while SeaweedFS commits a compaction, which writes a
    /// `.cpc` marker, renames the new `.dat` over the old, then the new `.idx`, then removes
    /// the marker: the `.idx` is opened first, so a new `.idx` means the `.dat` opened after
    /// it is new too; an old `.idx` with a new `.dat` is caught afterwards, because then the
    /// marker is still there or the `.idx` path names another file. Either is
    /// [`VolumeError::BeingReplaced`]: try again later.
    pub fn open(dat_path: &Path, idx_path: &Path, width: OffsetWidth) -> Result<LocalVolume, VolumeError> {
        let idx = File::open(idx_path).map_err(|source| io_error(idx_path, source))?;
        let dat = open_without_atime(dat_path).map_err(|source| io_error(dat_path, source))?;
        let identity = [identity_of(&dat, dat_path)?, identity_of(&idx, idx_path)?];
        let super_block = read_super_block(&dat, dat_path)?;
        // A trailing partial entry is an append in progress: left for the next refresh.
        let mut index = NeedleIndex::new(width);
        index.apply_open(&idx, idx_path)?;
        if compaction_commit_marker(dat_path).exists() || path_identity(idx_path) != Some(identity[1]) {
            return Err(VolumeError::BeingReplaced { path: dat_path.to_path_buf() });
        }
        Ok(LocalVolume {
            dat_path: dat_path.to_path_buf(),
            idx_path: idx_path.to_path_buf(),
            dat: Arc::new(dat),
            idx,
            identity,
            super_block,
            index,
        })
    }

    /// Opens the same paths again (after [`LocalVolume::is_replaced`]).
    pub fn reopen(&self) -> Result<LocalVolume, VolumeError> {
        LocalVolume::open(&self.dat_path, &self.idx_path, self.index.width())
    }

    /// Whether the files at the paths are no longer the ones open (a vacuum renamed new ones
    /// over them, or they were removed or copied anew), or the open `.idx` shrank below what
    /// was replayed. The open pair still reads consistently (the old inodes live while open);
    /// [`LocalVolume::reopen`] gets the current one.
    pub fn is_replaced(&self) -> bool {
        let paths = [&self.dat_path, &self.idx_path];
        let moved = paths.iter().zip(self.identity).any(|(path, opened)| path_identity(path) != Some(opened));
        let shrank = self.idx.metadata().map_or(true, |metadata| metadata.len() < self.index.applied_bytes());
        moved || shrank
    }

    /// The open `.dat`, for positioned reads.
    pub fn dat_file(&self) -> &File {
        &self.dat
    }

    /// (device, inode) of the open `.dat`, as read when it was opened.
    pub fn dat_identity(&self) -> (u64, u64) {
        self.identity[0]
    }

    /// The open `.dat`, for reads that outlive this borrow (asynchronous I/O in flight).
    pub fn shared_dat_file(&self) -> Arc<File> {
        Arc::clone(&self.dat)
    }

    /// Where a live needle is, or `None` if never written or deleted.
    pub fn locate(&self, needle_id: u64) -> Option<Location> {
        let value = self.index.get(needle_id)?;
        Some(Location {
            offset_bytes: value.offset_bytes,
            size: value.size,
            record_size_bytes: record_size_bytes(self.version(), value.size),
        })
    }

    /// Apply the entries appended to the `.idx` since the last load or
    /// refresh. A trailing partial entry is left for the next refresh.
    pub fn refresh_index(&mut self) -> Result<ApplyOutcome, VolumeError> {
        Ok(self.index.apply_open(&self.idx, &self.idx_path)?)
    }

    /// Read a located record's bytes.
    pub fn read_record(&self, location: &Location) -> Result<Vec<u8>, VolumeError> {
        let file_size_bytes = self.dat.metadata().map_err(|source| io_error(&self.dat_path, source))?.len();
        let available_bytes = file_size_bytes.saturating_sub(location.offset_bytes);
        if available_bytes < location.record_size_bytes {
            return Err(VolumeError::Truncated {
                path: self.dat_path.clone(),
                offset_bytes: location.offset_bytes,
                needed_bytes: location.record_size_bytes,
                available_bytes,
            });
        }
        let mut record = vec![0u8; location.record_size_bytes as usize];
        self.dat
            .read_exact_at(&mut record, location.offset_bytes)
            .map_err(|source| io_error(&self.dat_path, source))?;
        Ok(record)
    }

    /// Read a needle's record and check it as SeaweedFS does before serving
    /// it: header size against the index, needle id, cookie and CRC.
    pub fn read_checked(&self, needle_id: u64, cookie: u32) -> Result<Vec<u8>, VolumeError> {
        let location =
            self.locate(needle_id).ok_or_else(|| VolumeError::NotFound { path: self.idx_path.clone(), needle_id })?;
        let record = self.read_record(&location)?;
        let record_error =
            |source| VolumeError::Record { path: self.dat_path.clone(), offset_bytes: location.offset_bytes, source };
        let parsed = NeedleRecord::parse(&record, self.version()).map_err(record_error)?;
        parsed.check_indexed(needle_id, cookie, location.size).map_err(record_error)?;
        Ok(record)
    }

    /// The super block.
    pub fn super_block(&self) -> &SuperBlock {
        &self.super_block
    }

    /// The needle layout version.
    pub fn version(&self) -> Version {
        self.super_block.version
    }

    /// The replayed index.
    pub fn index(&self) -> &NeedleIndex {
        &self.index
    }

    /// The `.dat` path.
    pub fn dat_path(&self) -> &Path {
        &self.dat_path
    }

    /// The `.idx` path.
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }
}

/// The volume id in a SeaweedFS data file name, `[collection_]N.dat` (the inverse of
/// [`crate::writer::volume_file_stem`] plus `.dat`): `None` for any other name, an `.idx`
/// included. The id is the ASCII digits after the last `_`.
pub fn volume_id_from_dat_path(path: &Path) -> Option<u32> {
    if path.extension()? != "dat" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let digits = stem.rsplit('_').next()?;
    // `parse` alone would take a leading `+`.
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The marker SeaweedFS keeps beside a volume while it renames a compaction's files into
/// place (`weed/storage/volume_vacuum.go`, `writeCompactCommitMarker`).
pub fn compaction_commit_marker(dat_path: &Path) -> PathBuf {
    dat_path.with_extension("cpc")
}

/// (device, inode) of what `path` names now.
fn path_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|metadata| (metadata.dev(), metadata.ino()))
}

fn identity_of(file: &File, path: &Path) -> Result<(u64, u64), VolumeError> {
    let metadata = file.metadata().map_err(|source| io_error(path, source))?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Opens a `.dat` for reading without updating its access time: every read of a file opened
/// otherwise asks the file system whether the atime is due (about 4 % of a cached 4 KiB read's
/// CPU in a profile of the engine). `O_NOATIME` is only allowed to the file's owner or a
/// process with `CAP_FOWNER`; anyone else gets the plain open.
fn open_without_atime(path: &Path) -> io::Result<File> {
    match OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path) {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => File::open(path),
        opened => opened,
    }
}
fn io_error(path: &Path, source: io::Error) -> VolumeError {
    VolumeError::Io { path: path.to_path_buf(), source }
}

/// Read the super block (and its extra bytes) from the start of `dat`.
fn read_super_block(dat: &File, path: &Path) -> Result<SuperBlock, VolumeError> {
    let bad = |source| VolumeError::SuperBlock { path: path.to_path_buf(), source };
    let mut fixed = [0u8; SUPER_BLOCK_SIZE_BYTES];
    let fixed_read_bytes = read_up_to(dat, &mut fixed, 0).map_err(|source| io_error(path, source))?;
    let extra_size_bytes = SuperBlock::extra_size_bytes(&fixed[..fixed_read_bytes]).map_err(bad)?;
    let mut whole = vec![0u8; SUPER_BLOCK_SIZE_BYTES + extra_size_bytes];
    let whole_read_bytes = read_up_to(dat, &mut whole, 0).map_err(|source| io_error(path, source))?;
    SuperBlock::parse(&whole[..whole_read_bytes]).map_err(bad)
}

/// Fill as much of `buffer` as the file has from `offset`; returns the count.
fn read_up_to(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    // Bounded: each pass reads at least one byte into a finite buffer, or stops.
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read_bytes) => filled += read_bytes,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::volume_file_stem;

    #[test]
    fn volume_ids_follow_seaweedfs_names() {
        assert_eq!(volume_id_from_dat_path(Path::new("/v/3.dat")), Some(3));
        assert_eq!(volume_id_from_dat_path(Path::new("/v/pictures_17.dat")), Some(17));
        assert_eq!(volume_id_from_dat_path(Path::new("/v/a_b_9.dat")), Some(9));
        assert_eq!(volume_id_from_dat_path(Path::new("3.dat")), Some(3));
        assert_eq!(volume_id_from_dat_path(Path::new("/v/4294967295.dat")), Some(u32::MAX));
        for not_a_volume in [
            "/v/3.idx",
            "/v/3.cpd",
            "/v/3",
            "/v/healthy_volume.dat",
            "/v/_.dat",
            "/v/notes.dat",
            "/v/+3.dat",
            "/v/-3.dat",
            "/v/4294967296.dat",
            "/v/.dat",
        ] {
            assert_eq!(volume_id_from_dat_path(Path::new(not_a_volume)), None, "{not_a_volume}");
        }
    }

    #[test]
    fn volume_ids_round_trip_through_the_writer_stem() {
        for (collection, id) in [(None, 0), (None, 7), (Some(""), 12), (Some("pictures"), 42), (Some("a_b"), u32::MAX)]
        {
            let name = format!("{}.dat", volume_file_stem(collection, id));
            assert_eq!(volume_id_from_dat_path(Path::new(&name)), Some(id), "{name}");
        }
    }
}
