//! The exported volumes: found in the directories, mapped and registered, refreshed as they
//! grow, re-exported when replaced, retired when gone; and the generation that tells readers
//! a volume's files changed.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::Instant;

use volume_format::superblock::{SuperBlock, SUPER_BLOCK_SIZE_BYTES};
use volume_format::volume::{compaction_commit_marker, volume_id_from_dat_path};
use volume_format::volume_info;

use super::exporter::Exporter;
use crate::rdma::mapping::{FileMap, MapError, MapSettings};
use crate::read::local::{stamp_of, Refusal};

/// One exported volume.
#[derive(Debug)]
pub(super) struct VolumeExport {
    pub(super) dat: FileMap,
    pub(super) idx: FileMap,
    pub(super) version: u8,
    pub(super) generation: u64,
}

impl Exporter {
    /// Picks up new, grown, replaced and removed volumes in every directory. A volume that
    /// cannot be exported is said once (again only when its files change).
    pub(super) fn scan(&mut self) {
        self.last_scan = Instant::now();
        let found = find_volumes(&self.config.dirs);
        let gone: Vec<u32> = self.volumes.keys().filter(|id| !found.contains_key(id)).copied().collect();
        for id in gone {
            self.retire_volume(id);
        }
        let mut seen = HashSet::new();
        for (id, (dat_path, idx_path)) in found {
            seen.insert(dat_path.clone());
            if self.volumes.contains_key(&id) {
                self.refresh_volume(id);
                continue;
            }
            let stamp = stamp_of(&dat_path);
            if self.refusals.unchanged(&dat_path, &stamp) {
                continue;
            }
            match self.open_volume(&dat_path, &idx_path) {
                Ok(volume) => {
                    self.refusals.forget(&dat_path);
                    self.volumes.insert(id, volume);
                }
                Err(Refusal::Later) => {}
                Err(Refusal::Now(reason)) => self.refusals.refuse(&dat_path, stamp, reason),
            }
        }
        self.refusals.retain_seen(&seen);
        self.lookups.refresh_all();
        self.note_catalogue_changes();
    }

    /// Follows one volume: its growth, or its replacement (a vacuum renames new files over
    /// both): the new pair is exported, with a new generation, once it is complete; until
    /// then the old pair (still mapped, so still its old bytes) stays in the catalogue.
    pub(super) fn refresh_volume(&mut self, id: u32) {
        let Some(volume) = self.volumes.get_mut(&id) else { return };
        let replaced = !volume.dat.still_at_path() || !volume.idx.still_at_path();
        // The .idx first: every entry it holds then points inside the .dat length read after it.
        let refreshed = if replaced {
            Err(None)
        } else {
            volume
                .idx
                .refresh(&self.context, &mut self.retired)
                .and_then(|()| volume.dat.refresh(&self.context, &mut self.retired))
                .map_err(Some)
        };
        let error = match refreshed {
            Ok(()) => return,
            Err(None | Some(MapError::Outgrown { .. })) => None,
            Err(Some(error)) => Some(error),
        };
        let (dat_path, idx_path) = (volume.dat_path(), volume.idx_path());
        if let Some(error) = error {
            tracing::warn!(volume = id, %error, "cannot refresh an exported volume; withdrawing it");
            return self.retire_volume(id);
        }
        match self.open_volume(&dat_path, &idx_path) {
            Ok(fresh) => {
                if replaced {
                    tracing::info!(
                        volume = id,
                        "exported volume replaced (compacted or copied); exporting the new files"
                    );
                }
                self.retire_volume(id);
                self.volumes.insert(id, fresh);
            }
            Err(Refusal::Later) => {}
            Err(Refusal::Now(reason)) => {
                self.retire_volume(id);
                self.refusals.refuse(&dat_path, stamp_of(&dat_path), reason);
            }
        }
    }

    fn retire_volume(&mut self, id: u32) {
        if let Some(volume) = self.volumes.remove(&id) {
            volume.dat.retire(&mut self.retired);
            volume.idx.retire(&mut self.retired);
        }
    }

    /// Maps and registers a volume's pair. Its `.vif`, when there is one, must agree with the
    /// offset width and the super block (checked first, so a refused volume costs little to
    /// look at again). The pair is consistent as `LocalVolume::open` argues: the `.idx` is
    /// opened first, and no compaction commit may be under way before or after.
    fn open_volume(&mut self, dat_path: &Path, idx_path: &Path) -> Result<VolumeExport, Refusal> {
        let width = self.config.offset_width;
        volume_info::check_beside(dat_path, width).map_err(|error| Refusal::Now(error.to_string()))?;
        let committing = || compaction_commit_marker(dat_path).exists();
        if committing() {
            return Err(Refusal::Later);
        }
        let dat_settings = MapSettings {
            piece_size_bytes: self.config.piece_size_bytes,
            headroom_bytes: self.config.dat_headroom_bytes,
        };
        let idx_settings = MapSettings { headroom_bytes: self.config.idx_headroom_bytes, ..dat_settings };
        let opened = FileMap::open(idx_path, &self.context, idx_settings)
            .and_then(|idx| Ok((FileMap::open(dat_path, &self.context, dat_settings)?, idx)));
        let (dat, idx) = opened.map_err(|error| Refusal::Now(error.to_string()))?;
        // A .dat still being created has no complete super block yet: try again next scan.
        let super_block = read_super_block(&dat).filter(|_| !committing() && idx.still_at_path());
        let Some(super_block) = super_block else {
            dat.retire(&mut self.retired);
            idx.retire(&mut self.retired);
            return Err(Refusal::Later);
        };
        let generation = generation(&dat, &idx, super_block.compaction_revision);
        let version = super_block.version.as_byte();
        Ok(VolumeExport { dat, idx, version, generation })
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
