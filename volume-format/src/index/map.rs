//! Replaying `.idx` entries into a needle id -> location map.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::compact::{CompactMap, State};
use super::{IndexEntry, OffsetWidth};
use crate::version::NEEDLE_ALIGNMENT_BYTES;

/// Entries read per chunk when replaying from a file (as SeaweedFS's `RowsToRead`).
const CHUNK_ENTRY_COUNT: usize = 1024;

/// Errors loading or refreshing an index from a file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading the file failed.
    #[error("cannot read index file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The whole file was expected to hold whole entries, and does not.
    #[error("index file {path} ends mid-entry at byte offset {offset_bytes}: {trailing_bytes} bytes left over where an entry needs {entry_size_bytes}")]
    TruncatedEntry {
        /// The file.
        path: PathBuf,
        /// Where the partial entry starts.
        offset_bytes: u64,
        /// How many bytes of it exist.
        trailing_bytes: u64,
        /// Bytes of a whole entry (16 or 17).
        entry_size_bytes: u64,
    },
    /// The file is now shorter than what was already applied.
    #[error(
        "index file {path} shrank to {size_bytes} bytes after {applied_bytes} bytes were applied; reopen the volume"
    )]
    Shrank {
        /// The file.
        path: PathBuf,
        /// Its size now.
        size_bytes: u64,
        /// Bytes applied before.
        applied_bytes: u64,
    },
}

/// Reads `file` from `offset_bytes` to `end_bytes` with positioned reads (the descriptor's
/// own offset is left alone).
struct OffsetReader<'a> {
    file: &'a File,
    offset_bytes: u64,
    end_bytes: u64,
}

impl Read for OffsetReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.end_bytes.saturating_sub(self.offset_bytes);
        let wanted = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read_bytes = std::os::unix::fs::FileExt::read_at(self.file, &mut buffer[..wanted], self.offset_bytes)?;
        self.offset_bytes += read_bytes as u64;
        Ok(read_bytes)
    }
}

/// Where the index says a live needle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexValue {
    /// Byte offset of the record in the `.dat`.
    pub offset_bytes: u64,
    /// Record header size (0 for an empty file).
    pub size: u32,
}

/// What one [`NeedleIndex::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// Bytes of whole entries applied; pass the rest again once it is complete.
    pub consumed_bytes: usize,
    /// Entries applied.
    pub entry_count: usize,
    /// Bytes of a trailing partial entry left unapplied (0 when none).
    pub trailing_partial_bytes: usize,
}

/// Needle id -> (offset, size), built by replaying entries in order: the last
/// entry for an id wins; a live entry ([`IndexEntry::is_live`]) sets, any other
/// deletes. Ids whose last entry deleted them are remembered, so a reader can say
/// "deleted" rather than "never written". Stored compactly (`compact`): about 16 to 20
/// bytes a needle.
#[derive(Debug, Clone)]
pub struct NeedleIndex {
    width: OffsetWidth,
    map: CompactMap,
    /// Entries applied so far; also `applied_bytes / entry size`.
    entry_count: u64,
    /// Applied entries that deleted (tombstones and offset-0 entries).
    tombstone_entry_count: u64,
    /// Bytes of whole entries applied so far: the file position to resume at.
    applied_bytes: u64,
}

impl NeedleIndex {
    /// An empty index for entries of `width`.
    pub fn new(width: OffsetWidth) -> NeedleIndex {
        NeedleIndex {
            width,
            map: CompactMap::new(width == OffsetWidth::Five),
            entry_count: 0,
            tombstone_entry_count: 0,
            applied_bytes: 0,
        }
    }

    /// Replay a whole `.idx` file. A file that ends mid-entry is an error
    /// naming the file and the offset of the partial entry.
    pub fn load_file(path: &Path, width: OffsetWidth) -> Result<NeedleIndex, IndexError> {
        let file = File::open(path).map_err(|source| IndexError::Io { path: path.to_path_buf(), source })?;
        NeedleIndex::load_open(&file, path, width)
    }

    /// [`NeedleIndex::load_file`] from a file already open (`path` names it in errors).
    pub fn load_open(file: &File, path: &Path, width: OffsetWidth) -> Result<NeedleIndex, IndexError> {
        let mut index = NeedleIndex::new(width);
        let outcome = index.apply_open(file, path)?;
        if outcome.trailing_partial_bytes != 0 {
            return Err(IndexError::TruncatedEntry {
                path: path.to_path_buf(),
                offset_bytes: index.applied_bytes,
                trailing_bytes: outcome.trailing_partial_bytes as u64,
                entry_size_bytes: width.entry_size_bytes() as u64,
            });
        }
        Ok(index)
    }

    /// Replay whatever `path` holds past [`NeedleIndex::applied_bytes`]: the
    /// entries appended since the last call. A trailing partial entry is left
    /// for the next call and reported, not an error.
    pub fn apply_file(&mut self, path: &Path) -> Result<ApplyOutcome, IndexError> {
        let file = File::open(path).map_err(|source| IndexError::Io { path: path.to_path_buf(), source })?;
        self.apply_open(&file, path)
    }

    /// [`NeedleIndex::apply_file`] from a file kept open, so the entries come from the same
    /// file even after another one was renamed over `path` (`path` names it in errors).
    pub fn apply_open(&mut self, file: &File, path: &Path) -> Result<ApplyOutcome, IndexError> {
        let io_error = |source| IndexError::Io { path: path.to_path_buf(), source };
        let size_bytes = file.metadata().map_err(io_error)?.len();
        if size_bytes < self.applied_bytes {
            return Err(IndexError::Shrank { path: path.to_path_buf(), size_bytes, applied_bytes: self.applied_bytes });
        }
        let reader = OffsetReader { file, offset_bytes: self.applied_bytes, end_bytes: size_bytes };
        self.apply_reader(reader).map_err(io_error)
    }

    /// Replay entries from `reader` until it ends, in chunks.
    fn apply_reader(&mut self, reader: impl Read) -> io::Result<ApplyOutcome> {
        self.map.begin_replay();
        let replayed = self.replay_chunks(reader);
        self.map.settle();
        replayed
    }

    fn replay_chunks(&mut self, mut reader: impl Read) -> io::Result<ApplyOutcome> {
        let mut chunk = vec![0u8; self.width.entry_size_bytes() * CHUNK_ENTRY_COUNT];
        let mut filled_bytes = 0;
        let mut total = ApplyOutcome::default();
        // Bounded: every pass reads at least one byte of a finite (`take`n) reader.
        loop {
            let read_bytes = match reader.read(&mut chunk[filled_bytes..]) {
                Ok(0) => break,
                Ok(read_bytes) => read_bytes,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            filled_bytes += read_bytes;
            let outcome = self.apply_entries(&chunk[..filled_bytes]);
            total.consumed_bytes += outcome.consumed_bytes;
            total.entry_count += outcome.entry_count;
            chunk.copy_within(outcome.consumed_bytes..filled_bytes, 0);
            filled_bytes -= outcome.consumed_bytes;
        }
        total.trailing_partial_bytes = filled_bytes;
        Ok(total)
    }

    /// Apply the whole entries at the start of `bytes` (a tail appended to
    /// the `.idx`, starting at an entry boundary). Never fails: a trailing
    /// partial entry is reported in the outcome and not consumed.
    pub fn apply(&mut self, bytes: &[u8]) -> ApplyOutcome {
        self.map.begin_replay();
        let outcome = self.apply_entries(bytes);
        self.map.settle();
        outcome
    }

    /// One part of a replay that comes in parts (an `.idx` pulled over the network in
    /// chunks): as [`NeedleIndex::apply`], with the map's merges sized for a replay; call
    /// [`NeedleIndex::settle`] after the last part.
    pub fn apply_part(&mut self, bytes: &[u8]) -> ApplyOutcome {
        self.map.begin_replay();
        self.apply_entries(bytes)
    }

    /// Ends a replay made of [`NeedleIndex::apply_part`]s: what it left in the map's hash of
    /// recent changes goes into its sorted run (lookups stay one search).
    pub fn settle(&mut self) {
        self.map.settle();
    }

    /// [`NeedleIndex::apply`] without settling the map (a replay in chunks settles once, at
    /// its end).
    fn apply_entries(&mut self, bytes: &[u8]) -> ApplyOutcome {
        let entry_size_bytes = self.width.entry_size_bytes();
        let mut entries = bytes.chunks_exact(entry_size_bytes);
        let mut entry_count = 0;
        for entry_bytes in entries.by_ref() {
            // chunks_exact hands out whole entries, so parsing cannot fail.
            if let Ok(entry) = IndexEntry::parse(entry_bytes, self.width) {
                self.apply_entry(entry);
                entry_count += 1;
            }
        }
        let consumed_bytes = entry_count * entry_size_bytes;
        self.applied_bytes += consumed_bytes as u64;
        ApplyOutcome { consumed_bytes, entry_count, trailing_partial_bytes: entries.remainder().len() }
    }

    /// Apply one entry.
    pub fn apply_entry(&mut self, entry: IndexEntry) {
        self.entry_count += 1;
        match u32::try_from(entry.size) {
            Ok(size) if entry.is_live() => {
                self.map.set_live(entry.needle_id, entry.offset_bytes / NEEDLE_ALIGNMENT_BYTES, size)
            }
            _ => {
                self.tombstone_entry_count += 1;
                self.map.delete(entry.needle_id);
            }
        }
    }

    /// Where a live needle is.
    pub fn get(&self, needle_id: u64) -> Option<IndexValue> {
        match self.map.state(needle_id)? {
            State::Live { units, size } => Some(IndexValue { offset_bytes: units * NEEDLE_ALIGNMENT_BYTES, size }),
            State::Deleted => None,
        }
    }

    /// Whether the needle was written and then deleted (its last entry is a
    /// tombstone).
    pub fn is_deleted(&self, needle_id: u64) -> bool {
        self.map.state(needle_id) == Some(State::Deleted)
    }

    /// Live needles, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, IndexValue)> + '_ {
        self.map.live().map(|(id, units, size)| (id, IndexValue { offset_bytes: units * NEEDLE_ALIGNMENT_BYTES, size }))
    }

    /// How many needles are live.
    pub fn live_count(&self) -> usize {
        self.map.live_count()
    }

    /// Bytes the index holds in memory (its allocations' capacities).
    pub fn memory_bytes(&self) -> usize {
        self.map.memory_bytes()
    }

    /// How many entries were applied, tombstones included.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// How many applied entries deleted a needle.
    pub fn tombstone_entry_count(&self) -> u64 {
        self.tombstone_entry_count
    }

    /// Bytes of whole entries applied: where the next tail starts in the file.
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    /// The entry width this index replays.
    pub fn width(&self) -> OffsetWidth {
        self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_bytes(needle_id: u64, offset_bytes: u64, size: i32) -> Vec<u8> {
        IndexEntry { needle_id, offset_bytes, size }.encode(OffsetWidth::Four).unwrap()
    }

    #[test]
    fn last_write_wins_and_tombstones_delete() {
        let log =
            [entry_bytes(1, 8, 10), entry_bytes(2, 48, 20), entry_bytes(1, 96, 11), entry_bytes(2, 128, -1)].concat();
        let mut index = NeedleIndex::new(OffsetWidth::Four);
        let outcome = index.apply(&log);
        assert_eq!(outcome, ApplyOutcome { consumed_bytes: 64, entry_count: 4, trailing_partial_bytes: 0 });
        assert_eq!(index.get(1), Some(IndexValue { offset_bytes: 96, size: 11 }));
        assert_eq!(index.get(2), None);
        assert!(index.is_deleted(2));
        assert!(!index.is_deleted(1));
        assert!(!index.is_deleted(3));
        assert_eq!(index.live_count(), 1);
        assert_eq!(index.tombstone_entry_count(), 1);
        assert!(index.iter().all(|(id, _)| !index.is_deleted(id)));
    }

    #[test]
    fn partial_tail_is_reported_then_completed() {
        let log = [entry_bytes(1, 8, 10), entry_bytes(2, 48, 20)].concat();
        let mut index = NeedleIndex::new(OffsetWidth::Four);
        let first = index.apply(&log[..20]);
        assert_eq!(first, ApplyOutcome { consumed_bytes: 16, entry_count: 1, trailing_partial_bytes: 4 });
        let second = index.apply(&log[first.consumed_bytes..]);
        assert_eq!(second.entry_count, 1);
        assert_eq!(index.applied_bytes(), 32);
        assert_eq!(index.get(2), Some(IndexValue { offset_bytes: 48, size: 20 }));
    }

    #[test]
    fn chunked_reader_carries_partial_entries() {
        let log: Vec<u8> = (1..=3000u64).flat_map(|id| entry_bytes(id, id * 8, 1)).collect();
        let mut index = NeedleIndex::new(OffsetWidth::Four);
        let outcome = index.apply_reader(&log[..log.len() - 3]).unwrap();
        assert_eq!(outcome.entry_count, 2999);
        assert_eq!(outcome.trailing_partial_bytes, 13);
        assert_eq!(index.live_count(), 2999);
    }
}
