//! Reading a needle through a `LocalVolume` leaves the `.dat`'s access time alone: the file is
//! opened with `O_NOATIME`, which spares every read the file system's "is the atime due" check.

use std::fs::{File, FileTimes};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use volume_format::index::OffsetWidth;
use volume_format::volume::LocalVolume;
use volume_format::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions};

/// Sets the access time a year back: `relatime` updates an atime older than a day on the next
/// read, so a read that touches it is seen.
fn age_access_time(path: &Path) -> i64 {
    let year_ago = SystemTime::now() - Duration::from_secs(365 * 24 * 3600);
    File::options().write(true).open(path).unwrap().set_times(FileTimes::new().set_accessed(year_ago)).unwrap();
    std::fs::metadata(path).unwrap().atime()
}

#[test]
fn reading_a_needle_does_not_update_the_dat_access_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = VolumeWriter::create_in(dir.path(), None, 1, VolumeWriterOptions::default()).unwrap();
    writer.append(&NeedleSpec { needle_id: 1, cookie: 7, data: b"one", ..Default::default() }).unwrap();
    writer.finish().unwrap();
    let (dat, idx) = (dir.path().join("1.dat"), dir.path().join("1.idx"));

    // The control: this file system updates the access time of a file read the ordinary way.
    let aged = age_access_time(&dat);
    File::open(&dat).unwrap().read_exact(&mut [0u8; 8]).unwrap();
    assert_ne!(
        std::fs::metadata(&dat).unwrap().atime(),
        aged,
        "the file system did not update the access time of a plain read (mounted noatime?), so this test cannot tell"
    );

    let aged = age_access_time(&dat);
    let volume = LocalVolume::open(&dat, &idx, OffsetWidth::Four).unwrap();
    volume.read_checked(1, 7).unwrap();
    assert_eq!(std::fs::metadata(&dat).unwrap().atime(), aged, "reading a needle updated the .dat's access time");
}
