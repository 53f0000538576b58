//! Walking every record of a `.dat` in order, without an index.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{io_error, read_super_block, VolumeError};
use crate::error::FormatError;
use crate::needle::{NeedleHeader, NeedleRecord};
use crate::superblock::SuperBlock;
use crate::version::{Version, NEEDLE_HEADER_SIZE_BYTES};

/// One record found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Byte offset of the record in the `.dat`.
    pub offset_bytes: u64,
    /// Its header.
    pub header: NeedleHeader,
    /// The volume's version.
    pub version: Version,
    /// The whole record, padding included.
    pub bytes: Vec<u8>,
}

impl ScannedRecord {
    /// Parse the record's fields.
    pub fn parse(&self) -> Result<NeedleRecord<'_>, FormatError> {
        NeedleRecord::parse(&self.bytes, self.version)
    }
}

/// Iterator over the records of a `.dat`; see [`scan`].
#[derive(Debug)]
pub struct VolumeScan {
    path: PathBuf,
    reader: BufReader<File>,
    super_block: SuperBlock,
    /// Offset of the next record; only grows, never past `file_size_bytes`.
    position_bytes: u64,
    /// File size when the scan started; later growth is not followed.
    file_size_bytes: u64,
    done: bool,
}

/// Open `dat_path` and walk its records in order. A record cut short by the
/// end of the file yields one [`VolumeError::Truncated`] naming the file and
/// the offset, and the scan stops; so does a header with a negative size.
pub fn scan(dat_path: &Path) -> Result<VolumeScan, VolumeError> {
    let file = File::open(dat_path).map_err(|source| io_error(dat_path, source))?;
    let super_block = read_super_block(&file, dat_path)?;
    let file_size_bytes = file.metadata().map_err(|source| io_error(dat_path, source))?.len();
    let mut reader = BufReader::new(file);
    let position_bytes = super_block.size_bytes();
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(position_bytes))
        .map_err(|source| io_error(dat_path, source))?;
    Ok(VolumeScan { path: dat_path.to_path_buf(), reader, super_block, position_bytes, file_size_bytes, done: false })
}

impl VolumeScan {
    /// The volume's super block.
    pub fn super_block(&self) -> &SuperBlock {
        &self.super_block
    }

    fn truncated(&self, needed_bytes: u64, available_bytes: u64) -> VolumeError {
        VolumeError::Truncated {
            path: self.path.clone(),
            offset_bytes: self.position_bytes,
            needed_bytes,
            available_bytes,
        }
    }

    fn next_record(&mut self) -> Result<ScannedRecord, VolumeError> {
        let available_bytes = self.file_size_bytes - self.position_bytes;
        if available_bytes < NEEDLE_HEADER_SIZE_BYTES as u64 {
            return Err(self.truncated(NEEDLE_HEADER_SIZE_BYTES as u64, available_bytes));
        }
        let mut header_bytes = [0u8; NEEDLE_HEADER_SIZE_BYTES];
        self.reader.read_exact(&mut header_bytes).map_err(|source| io_error(&self.path, source))?;
        let version = self.super_block.version;
        let header = NeedleHeader::parse(&header_bytes)
            .and_then(|header| header.record_size_bytes(version).map(|size| (header, size)));
        let (header, record_size_bytes) = header.map_err(|source| VolumeError::Record {
            path: self.path.clone(),
            offset_bytes: self.position_bytes,
            source,
        })?;
        if available_bytes < record_size_bytes {
            return Err(self.truncated(record_size_bytes, available_bytes));
        }
        let mut bytes = vec![0u8; record_size_bytes as usize];
        bytes[..NEEDLE_HEADER_SIZE_BYTES].copy_from_slice(&header_bytes);
        self.reader
            .read_exact(&mut bytes[NEEDLE_HEADER_SIZE_BYTES..])
            .map_err(|source| io_error(&self.path, source))?;
        let record = ScannedRecord { offset_bytes: self.position_bytes, header, version, bytes };
        self.position_bytes += record_size_bytes;
        Ok(record)
    }
}

impl Iterator for VolumeScan {
    type Item = Result<ScannedRecord, VolumeError>;

    /// Bounded: each record advances the position by at least 24 bytes
    /// towards the fixed file size, and any error ends the scan.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.position_bytes >= self.file_size_bytes {
            self.done = true;
            return None;
        }
        let result = self.next_record();
        self.done = result.is_err();
        Some(result)
    }
}

impl std::iter::FusedIterator for VolumeScan {}
