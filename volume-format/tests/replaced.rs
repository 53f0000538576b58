//! A volume replaced under an open `LocalVolume` the way SeaweedFS commits a vacuum: the open
//! pair keeps reading the old files, the replacement is noticed, and reopening waits until
//! both new files are in place.

use std::path::Path;

use volume_format::index::OffsetWidth;
use volume_format::volume::{compaction_commit_marker, LocalVolume, VolumeError};
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

fn write_volume(dir: &Path, needles: &[(u64, &[u8])]) {
    let mut writer = VolumeWriter::create_in(dir, None, 1, VolumeWriterOptions::default()).unwrap();
    for &(needle_id, data) in needles {
        writer.append(&NeedleSpec { needle_id, cookie: 7, data, ..Default::default() }).unwrap();
    }
    writer.finish().unwrap();
}

fn data_of(volume: &LocalVolume, needle_id: u64) -> Option<Vec<u8>> {
    let record = volume.read_checked(needle_id, 7).ok()?;
    let parsed = volume_format::needle::NeedleRecord::parse(&record, volume.version()).unwrap();
    Some(parsed.data.to_vec())
}

#[test]
fn a_committed_compaction_is_noticed_and_reopened_only_when_complete() {
    let live = tempfile::tempdir().unwrap();
    let compacted = tempfile::tempdir().unwrap();
    write_volume(live.path(), &[(1, b"deleted later"), (2, b"kept")]);
    write_volume(compacted.path(), &[(2, b"kept")]);
    let (dat, idx) = (live.path().join("1.dat"), live.path().join("1.idx"));
    let volume = LocalVolume::open(&dat, &idx, OffsetWidth::Four).unwrap();
    assert!(!volume.is_replaced());

    // The commit: marker, .dat renamed, (window), .idx renamed, marker removed.
    std::fs::write(compaction_commit_marker(&dat), b"").unwrap();
    std::fs::rename(compacted.path().join("1.dat"), &dat).unwrap();
    assert!(volume.is_replaced());
    assert!(matches!(volume.reopen(), Err(VolumeError::BeingReplaced { .. })));
    assert_eq!(data_of(&volume, 1).as_deref(), Some(&b"deleted later"[..]), "the open pair still reads the old files");
    std::fs::rename(compacted.path().join("1.idx"), &idx).unwrap();
    assert!(matches!(volume.reopen(), Err(VolumeError::BeingReplaced { .. })), "the marker is still there");
    std::fs::remove_file(compaction_commit_marker(&dat)).unwrap();

    let reopened = volume.reopen().unwrap();
    assert!(!reopened.is_replaced());
    assert_eq!(data_of(&reopened, 1), None);
    assert_eq!(data_of(&reopened, 2).as_deref(), Some(&b"kept"[..]));
}

#[test]
fn a_shrunk_index_counts_as_replaced() {
    let dir = tempfile::tempdir().unwrap();
    write_volume(dir.path(), &[(1, b"one"), (2, b"two")]);
    let (dat, idx) = (dir.path().join("1.dat"), dir.path().join("1.idx"));
    let volume = LocalVolume::open(&dat, &idx, OffsetWidth::Four).unwrap();
    std::fs::OpenOptions::new().write(true).open(&idx).unwrap().set_len(16).unwrap();
    assert!(volume.is_replaced());
}
