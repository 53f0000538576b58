//! The exported volumes: found in the directories, mapped and registered, refreshed as they
//! grow, re-exported when replaced, retired when gone; and the generation that tells readers
//! a volume's files changed.

use std::collections::BTreeMap;
use std::fs;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::Instant;

use volume_format::superblock::{SuperBlock, SUPER_BLOCK_SIZE_BYTES};
use volume_format::volume::volume_id_from_dat_path;

use super::exporter::Exporter;
use crate::rdma::mapping::{FileMap, MapError, MapSettings};

/// One exported volume.
#[derive(Debug)]
pub(super) struct VolumeExport {
    pub(super) dat: FileMap,
    pub(super) idx: FileMap,
    pub(super) version: u8,
    pub(super) generation: u64,
}

impl Exporter {
    /// Picks up new, grown, replaced and removed volumes in every directory.
    pub(super) fn scan(&mut self) {
        self.last_scan = Instant::now();
        let found = find_volumes(&self.config.dirs);
        let gone: Vec<u32> = self.volumes.keys().filter(|id| !found.contains_key(id)).copied().collect();
        for id in gone {
            self.retire_volume(id);
        }
        for (id, paths) in found {
            if self.volumes.contains_key(&id) {
                self.refresh_volume(id);
            } else {
                self.open_volume(id, &paths.0, &paths.1);
            }
        }
    }

    pub(super) fn refresh_volume(&mut self, id: u32) {
        let Some(volume) = self.volumes.get_mut(&id) else { return };
        if !volume.dat.still_at_path() || !volume.idx.still_at_path() {
            let paths = (volume.dat_path(), volume.idx_path());
            self.retire_volume(id);
            tracing::info!(volume = id, "exported volume replaced; exporting the new files");
            self.open_volume(id, &paths.0, &paths.1);
            return;
        }
        // The .idx first: every entry it holds then points inside the .dat length read after it.
        let refreshed = volume
            .idx
            .refresh(&self.context, &mut self.retired)
            .and_then(|()| volume.dat.refresh(&self.context, &mut self.retired));
        match refreshed {
            Ok(()) => {}
            Err(MapError::Outgrown { .. }) => {
                let paths = (volume.dat_path(), volume.idx_path());
                self.retire_volume(id);
                self.open_volume(id, &paths.0, &paths.1);
            }
            Err(error) => {
                tracing::warn!(volume = id, %error, "cannot refresh an exported volume; withdrawing it");
                self.retire_volume(id);
            }
        }
    }

    fn retire_volume(&mut self, id: u32) {
        if let Some(volume) = self.volumes.remove(&id) {
            volume.dat.retire(&mut self.retired);
            volume.idx.retire(&mut self.retired);
        }
    }

    fn open_volume(&mut self, id: u32, dat_path: &Path, idx_path: &Path) {
        let dat_settings = MapSettings {
            piece_size_bytes: self.config.piece_size_bytes,
            headroom_bytes: self.config.dat_headroom_bytes,
        };
        let idx_settings = MapSettings { headroom_bytes: self.config.idx_headroom_bytes, ..dat_settings };
        // The .idx first, as in refresh_volume.
        let opened = FileMap::open(idx_path, &self.context, idx_settings)
            .and_then(|idx| Ok((FileMap::open(dat_path, &self.context, dat_settings)?, idx)));
        let (dat, idx) = match opened {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(volume = id, %error, "cannot export a volume");
                return;
            }
        };
        // A .dat still being created has no complete super block yet: try again next scan.
        let Some(super_block) = read_super_block(&dat) else {
            dat.retire(&mut self.retired);
            idx.retire(&mut self.retired);
            return;
        };
        let generation = generation(&dat, &idx, super_block.compaction_revision);
        let version = super_block.version.as_byte();
        self.volumes.insert(id, VolumeExport { dat, idx, version, generation });
    }
}

impl VolumeExport {
    fn dat_path(&self) -> PathBuf {
        self.dat.path().to_path_buf()
    }

    fn idx_path(&self) -> PathBuf {
        self.idx.path().to_path_buf()
    }
}

fn read_super_block(dat: &FileMap) -> Option<SuperBlock> {
    let fixed = dat.read_prefix(SUPER_BLOCK_SIZE_BYTES)?.to_vec();
    let extra = SuperBlock::extra_size_bytes(&fixed).ok()?;
    let whole = dat.read_prefix(SUPER_BLOCK_SIZE_BYTES + extra)?.to_vec();
    SuperBlock::parse(&whole).ok()
}

/// Changes when either file is replaced or the volume is compacted: FNV-1a of the files'
/// device and inode numbers and the compaction revision.
fn generation(dat: &FileMap, idx: &FileMap, compaction_revision: u16) -> u64 {
    let mut hasher = Fnv1a::default();
    for value in [dat.identity.0, dat.identity.1, idx.identity.0, idx.identity.1, u64::from(compaction_revision)] {
        hasher.write_u64(value);
    }
    hasher.finish()
}

pub(super) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Volumes in `dirs`: id → (.dat, .idx). The first directory wins a duplicate id.
fn find_volumes(dirs: &[PathBuf]) -> BTreeMap<u32, (PathBuf, PathBuf)> {
    let mut found = BTreeMap::new();
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot list an export directory");
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = volume_id_from_dat_path(&path) else { continue };
            let idx = path.with_extension("idx");
            if idx.is_file() {
                found.entry(id).or_insert((path, idx));
            }
        }
    }
    found
}
