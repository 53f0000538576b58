//! Finding needles of given data sizes in the volumes of a directory, by
//! replaying each `.idx` with `volume_format` and reading the first bytes of
//! each candidate record (header and data size).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use volume_format::file_id::FileId;
use volume_format::index::OffsetWidth;
use volume_format::needle::{check_header, NeedleHeader, NeedleRecord, CHECK_HEADER_PREFIX_SIZE_BYTES};
use volume_format::volume::LocalVolume;
use volume_format::Version;

/// Most directory entries looked at.
const MAX_DIR_ENTRIES: usize = 100_000;
/// Most index entries examined per volume.
const MAX_NEEDLES_EXAMINED: usize = 1_000_000;

/// One needle: where its record and its data are.
#[derive(Clone, Debug)]
pub struct NeedleRef {
    pub file_id: FileId,
    pub dat: Arc<File>,
    pub dat_path: PathBuf,
    pub version: Version,
    pub record_offset_bytes: u64,
    pub record_size_bytes: u64,
    /// Where the data starts inside the record.
    pub data_offset_in_record: u64,
    pub data_size_bytes: u64,
}

impl NeedleRef {
    /// Reads the whole record, checks it (id, cookie, size, CRC) and
    /// returns its data: what a correct read must deliver.
    pub fn expected_data(&self) -> Result<Vec<u8>, String> {
        let mut record = vec![0u8; self.record_size_bytes as usize];
        self.dat
            .read_exact_at(&mut record, self.record_offset_bytes)
            .map_err(|error| format!("cannot read {}: {error}", self.dat_path.display()))?;
        let parsed =
            NeedleRecord::parse(&record, self.version).map_err(|error| format!("{}: {error}", self.file_id))?;
        parsed
            .check(self.file_id.needle_id, self.file_id.cookie)
            .map_err(|error| format!("{}: {error}", self.file_id))?;
        Ok(parsed.data.to_vec())
    }
}

/// Up to `per_size` needles of each data size in `sizes`, from every volume
/// (`[collection_]N.idx` + `.dat`) in `dir`.
pub fn find_needles(dir: &Path, sizes: &[u64], per_size: usize) -> Result<BTreeMap<u64, Vec<NeedleRef>>, String> {
    let mut found: BTreeMap<u64, Vec<NeedleRef>> = sizes.iter().map(|&size| (size, Vec::new())).collect();
    let entries = std::fs::read_dir(dir).map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    let mut idx_paths: Vec<PathBuf> = entries
        .flatten()
        .take(MAX_DIR_ENTRIES)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "idx"))
        .collect();
    idx_paths.sort();
    for idx_path in idx_paths {
        let full = |found: &BTreeMap<u64, Vec<NeedleRef>>| found.values().all(|v| v.len() >= per_size);
        if full(&found) {
            break;
        }
        scan_volume(&idx_path, per_size, &mut found)?;
    }
    Ok(found)
}

fn scan_volume(idx_path: &Path, per_size: usize, found: &mut BTreeMap<u64, Vec<NeedleRef>>) -> Result<(), String> {
    let dat_path = idx_path.with_extension("dat");
    let Some(volume_id) = volume_format::volume::volume_id_from_dat_path(&dat_path) else {
        return Ok(());
    };
    let volume = LocalVolume::open(&dat_path, idx_path, OffsetWidth::Four).map_err(|error| error.to_string())?;
    let version = volume.version();
    // The engine's own open (no access-time updates), so the floor's preads cost what its do.
    let dat = volume.shared_dat_file();
    let mut ids: Vec<u64> = volume.index().iter().map(|(id, _)| id).take(MAX_NEEDLES_EXAMINED).collect();
    ids.sort_unstable();
    for needle_id in ids {
        let Some(location) = volume.locate(needle_id) else {
            continue;
        };
        let mut prefix = [0u8; CHECK_HEADER_PREFIX_SIZE_BYTES];
        if dat.read_exact_at(&mut prefix, location.offset_bytes).is_err() {
            continue;
        }
        let Ok(header) = NeedleHeader::parse(&prefix) else {
            continue;
        };
        let Ok(span) = check_header(&prefix, version, needle_id, header.cookie, location.size) else {
            continue;
        };
        let Some(list) = found.get_mut(&span.data_len) else {
            continue;
        };
        if list.len() >= per_size {
            continue;
        }
        list.push(NeedleRef {
            file_id: FileId { volume_id, needle_id, cookie: header.cookie },
            dat: dat.clone(),
            dat_path: dat_path.clone(),
            version,
            record_offset_bytes: location.offset_bytes,
            record_size_bytes: location.record_size_bytes,
            data_offset_in_record: span.data_offset_in_record,
            data_size_bytes: span.data_len,
        });
    }
    Ok(())
}
