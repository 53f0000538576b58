//! Creating a version 3 volume (`.dat` + `.idx`) and appending needles to it,
//! in the order and layout a `weed volume` server would.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::encode::{encode_needle, EncodeError, NeedleSpec};
use crate::error::FormatError;
use crate::file_id::FileId;
use crate::index::{IndexEntry, OffsetWidth};
use crate::superblock::SuperBlock;
use crate::ttl::Ttl;
use crate::version::Version;

/// The version [`VolumeWriter`] writes: today's SeaweedFS default.
pub const WRITER_VERSION: Version = Version::V3;

/// Errors creating or appending to a volume.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Creating, writing or syncing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file exists and overwriting was not asked for.
    #[error("{path} already exists; remove it or ask to overwrite")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The needle cannot be encoded.
    #[error("cannot encode needle {needle_id:#x} for {path}: {source}")]
    Encode {
        /// The `.dat`.
        path: PathBuf,
        /// The needle.
        needle_id: u64,
        /// Why.
        source: EncodeError,
    },
    /// The super block or an index entry cannot be encoded (volume full).
    #[error("cannot append to {path} at byte offset {offset_bytes}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The `.dat` offset the record would start at.
        offset_bytes: u64,
        /// Why.
        source: FormatError,
    },
}

/// How to create a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeWriterOptions {
    /// `.idx` entry width; 4 bytes unless the server is a `5BytesOffset` build.
    pub offset_width: OffsetWidth,
    /// Super block replica placement byte (e.g. 1 for "001").
    pub replica_placement: u8,
    /// Super block TTL.
    pub ttl: Ttl,
    /// Replace existing files instead of failing.
    pub overwrite: bool,
}

/// Appends needles to a new volume. Call [`VolumeWriter::finish`] to flush
/// and sync; dropping it flushes without reporting errors.
#[derive(Debug)]
pub struct VolumeWriter {
    volume_id: u32,
    dat_path: PathBuf,
    idx_path: PathBuf,
    dat: BufWriter<File>,
    idx: BufWriter<File>,
    offset_width: OffsetWidth,
    /// `.dat` size so far: where the next record starts (a multiple of 8).
    end_offset_bytes: u64,
    /// Strictly increasing across appends, as SeaweedFS keeps it.
    last_append_at_ns: u64,
    needle_count: u64,
}

/// What a finished volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// The `.dat`.
    pub dat_path: PathBuf,
    /// The `.idx`.
    pub idx_path: PathBuf,
    /// Records appended (deletions included).
    pub needle_count: u64,
    /// Final `.dat` size.
    pub dat_size_bytes: u64,
}

/// SeaweedFS's file name stem: `collection_N`, or `N` without a collection.
pub fn volume_file_stem(collection: Option<&str>, volume_id: u32) -> String {
    match collection {
        Some(collection) if !collection.is_empty() => format!("{collection}_{volume_id}"),
        _ => volume_id.to_string(),
    }
}

impl VolumeWriter {
    /// Create `dir/[collection_]N.dat` and `.idx` and write the super block.
    pub fn create_in(
        dir: &Path,
        collection: Option<&str>,
        volume_id: u32,
        options: VolumeWriterOptions,
    ) -> Result<VolumeWriter, WriteError> {
        let stem = volume_file_stem(collection, volume_id);
        let dat_path = dir.join(format!("{stem}.dat"));
        let idx_path = dir.join(format!("{stem}.idx"));
        VolumeWriter::create(&dat_path, &idx_path, volume_id, options)
    }

    /// Create the two files and write a version 3 super block.
    pub fn create(
        dat_path: &Path,
        idx_path: &Path,
        volume_id: u32,
        options: VolumeWriterOptions,
    ) -> Result<VolumeWriter, WriteError> {
        let mut super_block = SuperBlock::new(WRITER_VERSION, options.replica_placement);
        super_block.ttl = options.ttl;
        let header = super_block.encode().map_err(|source| WriteError::Format {
            path: dat_path.to_path_buf(),
            offset_bytes: 0,
            source,
        })?;
        let mut dat = BufWriter::new(create_file(dat_path, options.overwrite)?);
        let idx = BufWriter::new(create_file(idx_path, options.overwrite)?);
        dat.write_all(&header).map_err(|source| io_error(dat_path, source))?;
        Ok(VolumeWriter {
            volume_id,
            dat_path: dat_path.to_path_buf(),
            idx_path: idx_path.to_path_buf(),
            dat,
            idx,
            offset_width: options.offset_width,
            end_offset_bytes: header.len() as u64,
            last_append_at_ns: 0,
            needle_count: 0,
        })
    }

    /// Make everything appended so far visible to readers: the `.dat` is
    /// flushed (and synced) before the `.idx`, so an index entry never points
    /// at a record that is not there yet.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        flush_and_sync(&mut self.dat, &self.dat_path)?;
        flush_and_sync(&mut self.idx, &self.idx_path)
    }

    /// Append a needle: its record to the `.dat`, then its entry to the
    /// `.idx`. The writer sets `append_at_ns` (now, or one past the last).
    pub fn append(&mut self, spec: &NeedleSpec<'_>) -> Result<FileId, WriteError> {
        self.append_at(spec, self.next_append_at_ns())
    }

    /// [`VolumeWriter::append`] with the append time given: a needle written in the past,
    /// such as one whose TTL has run out. Times need not grow (SeaweedFS's do).
    pub fn append_at(&mut self, spec: &NeedleSpec<'_>, append_at_ns: u64) -> Result<FileId, WriteError> {
        let spec = NeedleSpec { append_at_ns, ..*spec };
        let record = encode_needle(WRITER_VERSION, &spec).map_err(|source| WriteError::Encode {
            path: self.dat_path.clone(),
            needle_id: spec.needle_id,
            source,
        })?;
        let size = i32::from_be_bytes([record[12], record[13], record[14], record[15]]);
        self.append_record(
            &record,
            IndexEntry { needle_id: spec.needle_id, offset_bytes: self.end_offset_bytes, size },
        )?;
        self.last_append_at_ns = self.last_append_at_ns.max(append_at_ns);
        Ok(FileId { volume_id: self.volume_id, needle_id: spec.needle_id, cookie: spec.cookie })
    }

    /// Delete a needle as `weed` does: append an empty record with its id
    /// and cookie, then a tombstone entry (size -1) pointing at that record.
    pub fn delete(&mut self, needle_id: u64, cookie: u32) -> Result<(), WriteError> {
        let append_at_ns = self.next_append_at_ns();
        let spec = NeedleSpec { needle_id, cookie, append_at_ns, ..Default::default() };
        let record = encode_needle(WRITER_VERSION, &spec).map_err(|source| WriteError::Encode {
            path: self.dat_path.clone(),
            needle_id,
            source,
        })?;
        self.append_record(&record, IndexEntry { needle_id, offset_bytes: self.end_offset_bytes, size: -1 })?;
        self.last_append_at_ns = append_at_ns;
        Ok(())
    }

    fn append_record(&mut self, record: &[u8], entry: IndexEntry) -> Result<(), WriteError> {
        // Encode the entry first: it fails when the volume is full for this width.
        let entry_bytes = entry.encode(self.offset_width).map_err(|source| WriteError::Format {
            path: self.idx_path.clone(),
            offset_bytes: self.end_offset_bytes,
            source,
        })?;
        self.dat.write_all(record).map_err(|source| io_error(&self.dat_path, source))?;
        self.idx.write_all(&entry_bytes).map_err(|source| io_error(&self.idx_path, source))?;
        self.end_offset_bytes += record.len() as u64;
        self.needle_count += 1;
        Ok(())
    }

    fn next_append_at_ns(&self) -> u64 {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        now_ns.max(self.last_append_at_ns.saturating_add(1))
    }

    /// Where the next record will start; also the `.dat` size so far.
    pub fn end_offset_bytes(&self) -> u64 {
        self.end_offset_bytes
    }

    /// The `.dat` path.
    pub fn dat_path(&self) -> &Path {
        &self.dat_path
    }

    /// The `.idx` path.
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }

    /// Flush and sync both files.
    pub fn finish(mut self) -> Result<WriteSummary, WriteError> {
        flush_and_sync(&mut self.dat, &self.dat_path)?;
        flush_and_sync(&mut self.idx, &self.idx_path)?;
        Ok(WriteSummary {
            dat_path: self.dat_path.clone(),
            idx_path: self.idx_path.clone(),
            needle_count: self.needle_count,
            dat_size_bytes: self.end_offset_bytes,
        })
    }
}

fn io_error(path: &Path, source: io::Error) -> WriteError {
    WriteError::Io { path: path.to_path_buf(), source }
}

fn create_file(path: &Path, overwrite: bool) -> Result<File, WriteError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => WriteError::AlreadyExists { path: path.to_path_buf() },
        _ => io_error(path, source),
    })
}

fn flush_and_sync(writer: &mut BufWriter<File>, path: &Path) -> Result<(), WriteError> {
    writer.flush().map_err(|source| io_error(path, source))?;
    writer.get_ref().sync_all().map_err(|source| io_error(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::LocalVolume;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volume-format-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_volume_reads_back() {
        let dir = temp_dir("writer");
        for width in [OffsetWidth::Four, OffsetWidth::Five] {
            let options = VolumeWriterOptions { offset_width: width, overwrite: true, ..Default::default() };
            let mut writer = VolumeWriter::create_in(&dir, Some("c"), 9, options).unwrap();
            let first =
                writer.append(&NeedleSpec { needle_id: 1, cookie: 7, data: b"one", ..Default::default() }).unwrap();
            let second =
                writer.append(&NeedleSpec { needle_id: 2, cookie: 8, data: b"two!", ..Default::default() }).unwrap();
            writer.delete(1, 7).unwrap();
            let summary = writer.finish().unwrap();
            assert_eq!(first.to_string(), "9,0100000007");
            assert_eq!(summary.dat_path, dir.join("c_9.dat"));
            let volume = LocalVolume::open(&summary.dat_path, &summary.idx_path, width).unwrap();
            assert!(volume.locate(first.needle_id).is_none());
            let record = volume.read_checked(second.needle_id, second.cookie).unwrap();
            let parsed = crate::needle::NeedleRecord::parse(&record, Version::V3).unwrap();
            assert_eq!(parsed.data, b"two!");
            assert_eq!(volume.index().tombstone_entry_count(), 1);
        }
        assert!(matches!(
            VolumeWriter::create_in(&dir, Some("c"), 9, VolumeWriterOptions::default()),
            Err(WriteError::AlreadyExists { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn append_times_strictly_increase() {
        let dir = temp_dir("times");
        let options = VolumeWriterOptions { overwrite: true, ..Default::default() };
        let mut writer = VolumeWriter::create_in(&dir, None, 1, options).unwrap();
        for needle_id in 1..=50 {
            writer.append(&NeedleSpec { needle_id, cookie: 1, data: b"x", ..Default::default() }).unwrap();
        }
        let summary = writer.finish().unwrap();
        let mut last_ns = 0;
        for record in crate::volume::scan(&summary.dat_path).unwrap() {
            let record = record.unwrap();
            let append_at_ns = record.parse().unwrap().append_at_ns.unwrap();
            assert!(append_at_ns > last_ns);
            last_ns = append_at_ns;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
