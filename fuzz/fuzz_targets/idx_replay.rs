//! `.idx` replay (`volume_format::index`): the log of entries the engine replays into its
//! needle map at open, and again for every tail SeaweedFS appends (locally from the file,
//! remotely from the bytes an exporter's `.idx` yields over RDMA).
//!
//! The needle map merges its recent changes into its sorted run every 4 changes under
//! `cargo fuzz` (256 otherwise), so short inputs exercise the merges too.
//!
//! Input: one control byte, then the `.idx` bytes. Bit 0 of the control byte picks the
//! offset width (4 or 5 bytes); the other bits give the length of the pieces the log is fed
//! in (`1 + control / 2` bytes), and where it is cut for the appended-tail replay.
//!
//! What must hold:
//! - no panic, and a trailing partial entry is reported, never applied;
//! - every whole entry round-trips (`encode(parse(bytes)) == bytes`);
//! - the replay is SeaweedFS's rule, stated per needle: the last entry for an id wins; the id
//!   is live iff that entry has a non-zero offset and a size >= 0, and reported deleted iff
//!   that entry deletes and some earlier entry for the id set it; the counters agree;
//! - fed in pieces (each carrying the previous piece's partial entry), from a file in one
//!   go, or from a file that grows between two replays, the result is the same;
//!   `load_open` refuses exactly the logs that end mid-entry, naming where.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;
use volume_format::index::{IndexEntry, IndexError, IndexValue, NeedleIndex, OffsetWidth};

/// A memfd for the file-backed replays, reused by every input.
fn index_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let fd = nix::sys::memfd::memfd_create(c"fuzz-idx", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .expect("a memfd for the index file");
        File::from(fd)
    })
}

fn fill(file: &File, bytes: &[u8]) {
    file.set_len(0).expect("truncate the memfd");
    file.write_all_at(bytes, 0).expect("write the memfd");
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, log)) = data.split_first() else { return };
    let width = if control & 1 == 0 { OffsetWidth::Four } else { OffsetWidth::Five };
    let piece_size_bytes = 1 + usize::from(control / 2);
    let entry_size_bytes = width.entry_size_bytes();
    let entries: Vec<IndexEntry> = log
        .chunks_exact(entry_size_bytes)
        .map(|bytes| {
            let entry = IndexEntry::parse(bytes, width).expect("a whole entry parses");
            assert_eq!(entry.encode(width).as_deref(), Ok(bytes), "entry round trip");
            entry
        })
        .collect();
    let whole_bytes = entries.len() * entry_size_bytes;

    let mut whole = NeedleIndex::new(width);
    let outcome = whole.apply(log);
    assert_eq!(outcome.entry_count, entries.len());
    assert_eq!(outcome.consumed_bytes, whole_bytes);
    assert_eq!(outcome.trailing_partial_bytes, log.len() - whole_bytes);
    check_rule(&whole, &entries);

    let mut pieces = NeedleIndex::new(width);
    let mut pending: Vec<u8> = Vec::new();
    for piece in log.chunks(piece_size_bytes) {
        pending.extend_from_slice(piece);
        let outcome = pieces.apply(&pending);
        assert!(outcome.trailing_partial_bytes < entry_size_bytes);
        pending.drain(..outcome.consumed_bytes);
    }
    assert_eq!(pending.len(), log.len() - whole_bytes);
    assert_same(&pieces, &whole, &entries, "fed in pieces");

    let file = index_file();
    let path = Path::new("fuzz.idx");
    fill(file, log);
    match NeedleIndex::load_open(file, path, width) {
        Ok(loaded) => {
            assert_eq!(whole_bytes, log.len(), "a log ending mid-entry was loaded");
            assert_same(&loaded, &whole, &entries, "loaded from a file");
        }
        Err(IndexError::TruncatedEntry { offset_bytes, trailing_bytes, .. }) => {
            assert_eq!((offset_bytes, trailing_bytes), (whole_bytes as u64, (log.len() - whole_bytes) as u64));
        }
        Err(other) => panic!("loading a memfd failed: {other}"),
    }

    // The file grows between two replays, cut anywhere (mid-entry too).
    let cut = (piece_size_bytes * 7).min(log.len());
    fill(file, &log[..cut]);
    let mut grown = NeedleIndex::new(width);
    grown.apply_open(file, path).expect("replay the first part");
    fill(file, log);
    grown.apply_open(file, path).expect("replay the appended tail");
    assert_same(&grown, &whole, &entries, "replayed as the file grew");
});

/// SeaweedFS's replay rule, per needle id, against what the index answers.
fn check_rule(index: &NeedleIndex, entries: &[IndexEntry]) {
    let mut last: HashMap<u64, IndexEntry> = HashMap::new();
    let mut ever_set: HashMap<u64, bool> = HashMap::new();
    for entry in entries {
        last.insert(entry.needle_id, *entry);
        *ever_set.entry(entry.needle_id).or_default() |= entry.is_live();
    }
    for (id, entry) in &last {
        let expected = u32::try_from(entry.size)
            .ok()
            .filter(|_| entry.is_live())
            .map(|size| IndexValue { offset_bytes: entry.offset_bytes, size });
        assert_eq!(index.get(*id), expected, "needle {id}: the last entry must win");
        let deleted = expected.is_none() && ever_set[id];
        assert_eq!(index.is_deleted(*id), deleted, "needle {id}: deleted iff a delete followed a set");
    }
    assert_eq!(index.live_count(), last.values().filter(|entry| entry.is_live()).count());
    assert_eq!(index.entry_count(), entries.len() as u64);
    let tombstones = entries.iter().filter(|entry| !entry.is_live()).count();
    assert_eq!(index.tombstone_entry_count(), tombstones as u64);
    assert!(index.iter().all(|(id, _)| !index.is_deleted(id) && last.contains_key(&id)));
}

fn assert_same(found: &NeedleIndex, expected: &NeedleIndex, entries: &[IndexEntry], how: &str) {
    let sorted = |index: &NeedleIndex| {
        let mut live: Vec<(u64, IndexValue)> = index.iter().collect();
        live.sort_unstable_by_key(|&(id, _)| id);
        live
    };
    assert_eq!(sorted(found), sorted(expected), "{how}: live needles differ");
    for entry in entries {
        assert_eq!(found.is_deleted(entry.needle_id), expected.is_deleted(entry.needle_id), "{how}: deletions differ");
    }
    let counters = |index: &NeedleIndex| (index.entry_count(), index.tombstone_entry_count(), index.applied_bytes());
    assert_eq!(counters(found), counters(expected), "{how}: counters differ");
}
