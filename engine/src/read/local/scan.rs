//! Finding the volumes of the directories, deciding whether each can be
//! served, and saying once why one cannot.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use volume_format::index::OffsetWidth;
use volume_format::volume::{volume_id_from_dat_path, LocalVolume, VolumeError};
use volume_format::volume_info;

use super::{LocalVolumes, Served};

/// Why a volume is not opened (or exported) now.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A compaction is committing: try again at the next scan, without a word.
    Later,
    /// It cannot be served as it is; the reason is one sentence.
    Now(String),
}

/// What a volume's files looked like when it was refused: (device, inode,
/// length, modification time) of its `.dat`, `.idx` and `.vif`, zeros for a
/// missing one. A refused volume is tried again only once this changes.
pub(crate) type Stamp = [(u64, u64, u64, i64); 3];

pub(crate) fn stamp_of(dat_path: &Path) -> Stamp {
    let one = |path: PathBuf| {
        std::fs::metadata(path)
            .map(|metadata| {
                (
                    metadata.dev(),
                    metadata.ino(),
                    metadata.len(),
                    metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000,
                )
            })
            .unwrap_or_default()
    };
    [one(dat_path.to_path_buf()), one(dat_path.with_extension("idx")), one(dat_path.with_extension("vif"))]
}

/// Files seen and not served, with the stamp and reason of their refusal.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    by_path: HashMap<PathBuf, Refused>,
    /// Says nothing: another scan of the same directories does (the UCX exporter's lookup
    /// index beside its export).
    quiet: bool,
}

#[derive(Debug)]
struct Refused {
    stamp: Stamp,
    reason: String,
    /// Logged already.
    said: bool,
}

impl Refusals {
    /// Refusals that are recorded and never said.
    pub(crate) fn quiet() -> Refusals {
        Refusals { by_path: HashMap::new(), quiet: true }
    }

    /// Whether `path` was refused (and said) and has not changed since: not worth opening again.
    pub(crate) fn unchanged(&self, path: &Path, stamp: &Stamp) -> bool {
        self.by_path.get(path).is_some_and(|refused| refused.said && refused.stamp == *stamp)
    }

    /// Records a refusal. It is said (logged once) when it is found a second time in a row
    /// with the same reason: a volume server creating a volume writes the `.dat` before its
    /// super block and its `.idx`, and a scan in between must not cry wolf. It is not said
    /// again until the reason changes.
    pub(crate) fn refuse(&mut self, path: &Path, stamp: Stamp, reason: String) {
        let said = match self.by_path.get(path) {
            Some(previous) if previous.reason == reason => {
                if !previous.said && !self.quiet {
                    tracing::warn!(file = %path.display(), "volume not served: {reason}");
                }
                true
            }
            _ => false,
        };
        self.by_path.insert(path.to_path_buf(), Refused { stamp, reason, said });
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    pub(crate) fn forget(&mut self, path: &Path) {
        self.by_path.remove(path);
    }

    /// Drops refusals of files gone from the directories.
    pub(crate) fn retain_seen(&mut self, seen: &HashSet<PathBuf>) {
        self.by_path.retain(|path, _| seen.contains(path));
    }
}

/// Opens the volume of `dat_path` for serving: its `.vif`, when there is one, must agree with
/// the offset width and the super block's version (checked before the index is read, so a
/// refused volume costs little to look at again), then the `.dat` and `.idx` pair.
pub(super) fn open_checked(dat_path: &Path, width: OffsetWidth) -> Result<LocalVolume, Refusal> {
    let idx_path = dat_path.with_extension("idx");
    volume_info::check_beside(dat_path, width).map_err(|error| Refusal::Now(error.to_string()))?;
    if !idx_path.is_file() {
        return Err(Refusal::Now(format!("it has no index file {}", idx_path.display())));
    }
    LocalVolume::open(dat_path, &idx_path, width).map_err(|error| match error {
        VolumeError::BeingReplaced { .. } => Refusal::Later,
        error => Refusal::Now(error.to_string()),
    })
}

/// The `.dat` files of `dir`, sorted; everything else is not ours to look at.
fn dat_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "dat") && entry.file_type()?.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

impl LocalVolumes {
    /// Opens every volume of the directories not served yet (and not refused
    /// unchanged). Served volumes are followed by `refresh`.
    pub(super) fn scan(&mut self) {
        self.last_scan = Instant::now();
        let mut seen = HashSet::new();
        for dir in &self.dirs {
            let paths = match dat_files(dir) {
                Ok(paths) => paths,
                Err(error) => {
                    self.refusals.refuse(dir, Stamp::default(), format!("cannot list the volume directory: {error}"));
                    seen.insert(dir.clone());
                    continue;
                }
            };
            for path in paths {
                seen.insert(path.clone());
                let stamp = stamp_of(&path);
                if self.refusals.unchanged(&path, &stamp) {
                    continue;
                }
                let Some(volume_id) = volume_id_from_dat_path(&path) else {
                    let reason = "its name is not [collection_]<volume id>.dat".to_string();
                    self.refusals.refuse(&path, stamp, reason);
                    continue;
                };
                if let Some(served) = self.volumes.get(&volume_id) {
                    let served_path = served.volume.dat_path();
                    if served_path != path {
                        let reason = format!("volume {volume_id} is served from {}", served_path.display());
                        self.refusals.refuse(&path, stamp, reason);
                    }
                    continue;
                }
                match open_checked(&path, self.width) {
                    Ok(volume) => {
                        if !self.refusals.is_quiet() {
                            tracing::info!(
                                volume_id,
                                file = %path.display(),
                                live_needles = volume.index().live_count(),
                                version = volume.version().as_byte(),
                                "serving local volume"
                            );
                        }
                        self.refusals.forget(&path);
                        crate::metrics::METRICS.count_index_refresh(crate::metrics::IndexRefresh::Opened);
                        self.volumes.insert(volume_id, Served { volume, refreshed_at: Instant::now() });
                    }
                    Err(Refusal::Later) => {}
                    Err(Refusal::Now(reason)) => self.refusals.refuse(&path, stamp, reason),
                }
            }
        }
        self.refusals.retain_seen(&seen);
    }
}
