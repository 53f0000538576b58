//! Golden tests against volume files written by SeaweedFS itself (see
//! `tests/fixtures/README.md`). Expected numbers come from reading the files
//! independently (hex dumps of the `.idx`, file sizes, byte diffs), not from
//! what this crate's parser says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use volume_format::crc::ChecksumForm;
use volume_format::index::{IndexError, NeedleIndex, OffsetWidth};
use volume_format::needle::NeedleRecord;
use volume_format::version::Version;
use volume_format::volume::{scan, LocalVolume, ScannedRecord, VolumeError};
use volume_format::writer::{encode_needle, NeedleSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn open(stem: &str) -> LocalVolume {
    LocalVolume::open(&fixture(&format!("{stem}.dat")), &fixture(&format!("{stem}.idx")), OffsetWidth::Four).unwrap()
}

fn scan_all(stem: &str) -> Vec<ScannedRecord> {
    scan(&fixture(&format!("{stem}.dat"))).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

/// Raw `.idx` replay written here, independent of the crate's index module.
fn raw_replay(idx: &[u8]) -> (BTreeMap<u64, (u64, i32)>, usize) {
    raw_replay_width(idx, 16)
}

/// 16-byte entries, or 17 with the 5th offset byte (the high one) last.
fn raw_replay_width(idx: &[u8], entry_size: usize) -> (BTreeMap<u64, (u64, i32)>, usize) {
    let mut live = BTreeMap::new();
    let mut tombstones = 0;
    for entry in idx.chunks_exact(entry_size) {
        let id = u64::from_be_bytes(entry[0..8].try_into().unwrap());
        let high = if entry_size == 17 { u64::from(entry[12]) << 32 } else { 0 };
        let offset = (high | u64::from(u32::from_be_bytes(entry[8..12].try_into().unwrap()))) * 8;
        let size = i32::from_be_bytes(entry[entry_size - 4..].try_into().unwrap());
        if offset != 0 && size >= 0 {
            live.insert(id, (offset, size));
        } else {
            live.remove(&id);
            tombstones += 1;
        }
    }
    (live, tombstones)
}

/// Check every live needle of a volume, with the cookie taken from the
/// record the scan found at the indexed offset. Returns the failing ids.
fn check_live_needles(volume: &LocalVolume, records: &[ScannedRecord]) -> BTreeMap<u64, String> {
    let by_offset: HashMap<u64, &ScannedRecord> = records.iter().map(|record| (record.offset_bytes, record)).collect();
    let mut failures = BTreeMap::new();
    for (needle_id, value) in volume.index().iter() {
        let record = by_offset.get(&value.offset_bytes).expect("index points at a record boundary");
        if let Err(error) = volume.read_checked(needle_id, record.header.cookie) {
            failures.insert(needle_id, error.to_string());
        }
    }
    failures
}

/// The fixtures are the real SeaweedFS files they were copied from: `SHA256SUMS` was written
/// when the copy was checked byte for byte against the originals (2026-12-02), and every
/// fixture must still match it (and be listed in it).
#[test]
fn fixtures_are_the_files_they_were_copied_from() {
    use sha2::{Digest, Sha256};
    let sums = std::fs::read_to_string(fixtures().join("SHA256SUMS")).expect("tests/fixtures/SHA256SUMS");
    let listed: BTreeMap<&str, &str> = sums
        .lines()
        .map(|line| {
            let (sum, name) = line.split_once("  ").unwrap_or_else(|| panic!("not a sha256sum line: {line:?}"));
            (name, sum)
        })
        .collect();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "README.md" || name == "SHA256SUMS" {
            continue;
        }
        let sum: String =
            Sha256::digest(std::fs::read(fixture(&name)).unwrap()).iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(listed.get(name.as_str()), Some(&sum.as_str()), "{name} differs from SHA256SUMS or is not listed");
        seen.insert(name);
    }
    assert_eq!(seen.len(), listed.len(), "SHA256SUMS lists files that are gone: {listed:?}");
}

#[test]
fn healthy_volume() {
    let volume = open("healthy_volume");
    assert_eq!(volume.version(), Version::V3);
    assert_eq!(volume.super_block().replica_placement_string(), "002");
    // 432-byte .idx = 27 entries: 17 writes (ids 3 4 8 9 b 12 14 15 19 1d 1f 21
    // 23 27 2d 2e 30), then 10 tombstones (14 1f 19 b 21 2d 12 1d 23 2e).
    assert_eq!(volume.index().entry_count(), 27);
    assert_eq!(volume.index().tombstone_entry_count(), 10);
    let live: BTreeSet<u64> = volume.index().iter().map(|(id, _)| id).collect();
    assert_eq!(live, BTreeSet::from([0x3, 0x4, 0x8, 0x9, 0x15, 0x27, 0x30]));
    let (raw_live, raw_tombstones) = raw_replay(&std::fs::read(fixture("healthy_volume.idx")).unwrap());
    assert_eq!((raw_live.len(), raw_tombstones), (7, 10));
    let records = scan_all("healthy_volume");
    // Every write and every delete appended one record: 17 + 10.
    assert_eq!(records.len(), 27);
    assert_eq!(records.iter().filter(|record| record.header.size == 0).count(), 10);
    assert!(check_live_needles(&volume, &records).is_empty());
    for record in &records {
        record.parse().unwrap().check_crc().unwrap();
    }
}

#[test]
fn legacy_crc_volume() {
    let volume = open("legacy_crc_volume");
    // 4768-byte .idx = 298 entries.
    assert_eq!(volume.index().entry_count(), 298);
    let (raw_live, raw_tombstones) = raw_replay(&std::fs::read(fixture("legacy_crc_volume.idx")).unwrap());
    assert_eq!(volume.index().live_count(), raw_live.len());
    assert_eq!(volume.index().tombstone_entry_count(), raw_tombstones as u64);
    let records = scan_all("legacy_crc_volume");
    assert!(check_live_needles(&volume, &records).is_empty());
    // 298 entries, no tombstones, one record each, every CRC in the legacy form.
    assert_eq!((raw_live.len(), raw_tombstones, records.len()), (298, 0, 298));
    let parsed: Vec<NeedleRecord<'_>> = records.iter().map(|record| record.parse().unwrap()).collect();
    assert!(parsed.iter().all(|record| record.checksum_form() == Some(ChecksumForm::Legacy)));
    let gzipped = parsed.iter().filter(|record| record.is_gzipped()).count();
    assert!(gzipped > 0);
}

#[test]
fn bitrot_volume_fails_exactly_the_damaged_needles() {
    let healthy_bytes = std::fs::read(fixture("healthy_volume.dat")).unwrap();
    let bitrot_bytes = std::fs::read(fixture("bitrot_volume.dat")).unwrap();
    let differing: Vec<u64> = healthy_bytes
        .iter()
        .zip(&bitrot_bytes)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(offset, _)| offset as u64)
        .collect();
    assert_eq!(differing.len(), 13);
    assert_eq!(bitrot_bytes.len(), healthy_bytes.len() + 1);
    let healthy = open("healthy_volume");
    let bitrot = open("bitrot_volume");
    // Expected failures: live needles whose data or stored checksum covers a
    // differing byte, located with the healthy volume's (undamaged) records.
    let mut expected = BTreeSet::new();
    for (needle_id, value) in healthy.index().iter() {
        let record_bytes = healthy.read_record(&healthy.locate(needle_id).unwrap()).unwrap();
        let parsed = NeedleRecord::parse(&record_bytes, Version::V3).unwrap();
        let data_start = value.offset_bytes + parsed.data_offset_in_record as u64;
        let crc_start = value.offset_bytes + 16 + u64::from(value.size);
        let covered = |offset: &u64| {
            (data_start..data_start + parsed.data.len() as u64).contains(offset)
                || (crc_start..crc_start + 4).contains(offset)
        };
        if differing.iter().any(covered) {
            expected.insert(needle_id);
        }
    }
    let records = scan(&fixture("bitrot_volume.dat")).unwrap().filter_map(Result::ok).collect::<Vec<_>>();
    let failures = check_live_needles(&bitrot, &records);
    // The diff lands in needle 0x3 (bytes 4875..21478) and 0x30 (930715..930721).
    assert_eq!(expected, BTreeSet::from([0x3, 0x30]));
    assert_eq!(failures.keys().copied().collect::<BTreeSet<_>>(), expected);
    for message in failures.values() {
        assert!(message.contains("CRC mismatch") && message.contains("bitrot_volume.dat"), "{message}");
    }
}

#[test]
fn bitrot_trailing_byte_is_reported_by_scan() {
    let results: Vec<_> = scan(&fixture("bitrot_volume.dat")).unwrap().collect();
    let last = results.last().unwrap().as_ref().unwrap_err();
    // healthy_volume.dat is 942856 bytes; bitrot_volume.dat has one more.
    assert!(matches!(last, VolumeError::Truncated { offset_bytes: 942_856, available_bytes: 1, .. }), "{last}");
    assert_eq!(results.len(), 28);
}

#[test]
fn empty_volume() {
    let volume = open("empty_volume");
    assert_eq!(volume.index().entry_count(), 0);
    assert_eq!(volume.index().live_count(), 0);
    assert_eq!(scan(&fixture("empty_volume.dat")).unwrap().count(), 0);
}

/// Despite its name, truncated_43.dat (SeaweedFS's needle/43.dat) holds one
/// complete record: 8 + record_size_bytes(V3, 0x119b62) = 1153928, its exact
/// size. So it is read whole, and cut copies of it must fail cleanly.
#[test]
fn truncated_43_is_one_complete_needle() {
    let path = fixture("truncated_43.dat");
    let records = scan(&path).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(8 + volume_format::needle::record_size_bytes(Version::V3, 0x119b62), 1_153_928);
    let record = records[0].parse().unwrap();
    assert_eq!((record.header.needle_id, record.header.size), (1, 0x119b62));
    assert_eq!(record.data.len(), 0x119b46);
    assert_eq!(record.name, Some(&b"Stickies.app.zip"[..]));
    record.check(1, 0xb161_5a86).unwrap();
}

#[test]
fn cut_dat_names_file_and_offset() {
    let bytes = std::fs::read(fixture("truncated_43.dat")).unwrap();
    let dir = std::env::temp_dir().join(format!("volume-format-golden-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut_bytes in [1usize, 13, 1_000, bytes.len() - 8 - 10] {
        let path = dir.join(format!("cut_{cut_bytes}_43.dat"));
        std::fs::write(&path, &bytes[..bytes.len() - cut_bytes]).unwrap();
        let results: Vec<_> = scan(&path).unwrap().collect();
        assert_eq!(results.len(), 1);
        let error = results[0].as_ref().unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, VolumeError::Truncated { offset_bytes: 8, .. }), "{message}");
        assert!(message.contains(&format!("cut_{cut_bytes}_43.dat")) && message.contains("byte offset 8"), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn index_files() {
    let simple = NeedleIndex::load_file(&fixture("simple_index.idx"), OffsetWidth::Four).unwrap();
    assert_eq!(simple.entry_count(), 2576 / 16);
    let deleted = NeedleIndex::load_file(&fixture("deleted_files.idx"), OffsetWidth::Four).unwrap();
    assert_eq!(deleted.entry_count(), 3680 / 16);
    let (raw_live, raw_tombstones) = raw_replay(&std::fs::read(fixture("deleted_files.idx")).unwrap());
    assert_eq!((deleted.live_count(), deleted.tombstone_entry_count()), (raw_live.len(), raw_tombstones as u64));
}

#[test]
fn truncated_index_names_file_and_offset() {
    let error = NeedleIndex::load_file(&fixture("simple_index_truncated.idx"), OffsetWidth::Four).unwrap_err();
    let message = error.to_string();
    // 2540 bytes = 158 whole entries (2528 bytes) + 12.
    assert!(matches!(error, IndexError::TruncatedEntry { offset_bytes: 2528, trailing_bytes: 12, .. }), "{message}");
    assert!(message.contains("simple_index_truncated.idx") && message.contains("2528"), "{message}");
}

#[test]
fn offset5_index_replays_as_17_byte_entries() {
    let path = fixture("offset5_187.idx");
    let index = NeedleIndex::load_file(&path, OffsetWidth::Five).unwrap();
    // 1028959 bytes = 60527 * 17 exactly; it is not a multiple of 16.
    assert_eq!(index.entry_count(), 60_527);
    assert!(NeedleIndex::load_file(&path, OffsetWidth::Four).is_err());
    // Raw check of the first two entries: needle 0x066b7d4c at unit 1 with
    // size 0x18de6e, then the next record right after it.
    let bytes = std::fs::read(&path).unwrap();
    let first = volume_format::index::IndexEntry::parse(&bytes, OffsetWidth::Five).unwrap();
    assert_eq!((first.needle_id, first.offset_bytes, first.size), (0x066b_7d4c, 8, 0x18de6e));
    let second = volume_format::index::IndexEntry::parse(&bytes[17..], OffsetWidth::Five).unwrap();
    assert_eq!(second.offset_bytes, 8 + volume_format::needle::record_size_bytes(Version::V3, 0x18de6e));
    let mut offsets: Vec<u64> = index.iter().map(|(_, value)| value.offset_bytes).collect();
    assert!(offsets.iter().all(|offset| offset % 8 == 0 && *offset >= 8));
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), index.live_count(), "two live needles share an offset");
    let (raw_live, raw_tombstones) = raw_replay_width(&bytes, 17);
    assert_eq!((index.live_count(), index.tombstone_entry_count()), (raw_live.len(), raw_tombstones as u64));
    // Past 32 GiB, which only a 5-byte offset can address.
    assert!(*offsets.last().unwrap() > 32 << 30);
    let mut last_set_offset = 0;
    let mut increasing = true;
    for entry in bytes.chunks_exact(17) {
        let entry = volume_format::index::IndexEntry::parse(entry, OffsetWidth::Five).unwrap();
        if entry.is_live() {
            increasing &= entry.offset_bytes > last_set_offset;
            last_set_offset = entry.offset_bytes;
        }
    }
    assert!(increasing, "set entries' offsets grow in file order, as appends do");
}

/// Re-encode every record of the real volumes from its parsed fields and
/// compare byte for byte, padding included: the writer matches SeaweedFS.
#[test]
fn writer_reproduces_seaweedfs_records() {
    for stem in ["healthy_volume", "legacy_crc_volume"] {
        let mut mismatches = 0;
        let records = scan_all(stem);
        for record in &records {
            let parsed = record.parse().unwrap();
            let spec = NeedleSpec::from_record(&parsed, parsed.checksum_form().unwrap_or(ChecksumForm::Raw));
            let mut encoded = encode_needle(Version::V3, &spec).unwrap();
            if parsed.data.is_empty() {
                // Deletion records keep whatever checksum the request carried.
                encoded[16..20].copy_from_slice(&parsed.stored_checksum.to_be_bytes());
            }
            if encoded != record.bytes {
                mismatches += 1;
                if mismatches < 4 {
                    println!(
                        "{stem} record at {} differs:\n ours {:02x?}\n file {:02x?}",
                        record.offset_bytes,
                        &encoded[encoded.len().saturating_sub(24)..],
                        &record.bytes[record.bytes.len().saturating_sub(24)..]
                    );
                }
            }
        }
        assert_eq!(mismatches, 0, "{stem}: {mismatches} of {} records differ", records.len());
    }
}

/// The engine calls `refresh_index` when the `.idx` grew: replay the healthy
/// index in pieces (one cut mid-entry) and end where a full load ends.
#[test]
fn refresh_index_applies_appended_entries() {
    use std::io::Write;
    let idx = std::fs::read(fixture("healthy_volume.idx")).unwrap();
    let dir = std::env::temp_dir().join(format!("volume-format-golden-refresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let idx_path = dir.join("1.idx");
    std::fs::write(&idx_path, &idx[..10 * 16]).unwrap();
    let mut volume = LocalVolume::open(&fixture("healthy_volume.dat"), &idx_path, OffsetWidth::Four).unwrap();
    assert_eq!(volume.index().entry_count(), 10);
    let mut file = std::fs::OpenOptions::new().append(true).open(&idx_path).unwrap();
    file.write_all(&idx[10 * 16..20 * 16 + 5]).unwrap();
    let outcome = volume.refresh_index().unwrap();
    assert_eq!((outcome.entry_count, outcome.trailing_partial_bytes), (10, 5));
    file.write_all(&idx[20 * 16 + 5..]).unwrap();
    let outcome = volume.refresh_index().unwrap();
    assert_eq!((outcome.entry_count, outcome.trailing_partial_bytes), (7, 0));
    let full = open("healthy_volume");
    assert_eq!(volume.index().entry_count(), 27);
    let mut refreshed: Vec<_> = volume.index().iter().collect();
    let mut loaded: Vec<_> = full.index().iter().collect();
    refreshed.sort_unstable_by_key(|(id, _)| *id);
    loaded.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(refreshed, loaded);
    std::fs::write(&idx_path, &idx[..16]).unwrap();
    assert!(matches!(volume.refresh_index(), Err(VolumeError::Index(IndexError::Shrank { .. }))));
    std::fs::remove_dir_all(&dir).unwrap();
}
