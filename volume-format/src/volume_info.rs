//! The `.vif` file SeaweedFS keeps beside each volume: a `VolumeInfo` message
//! (`weed/pb/volume_server.proto`) as protojson writes it (`weed/storage/volume_info/`):
//! camel-case field names, 64-bit integers as strings, every field present.
//!
//! ```json
//! { "files": [], "version": 3, "replication": "", "bytesOffset": 4, "datFileSize": "0",
//!   "expireAtSec": "0", "readOnly": false, "ecShardConfig": null, "readOnlyCanDelete": false }
//! ```
//!
//! What a reader of the files takes from it: `bytesOffset`, the width of the `.idx` offsets
//! the volume was written with (SeaweedFS itself refuses to load a volume of the other width),
//! `version`, which must agree with the super block, and `files`, which when not empty says
//! the `.dat` lives on remote storage (tiered). Fields absent or 0 (older files) say nothing.
//! protojson also accepts the proto field names (`bytes_offset`) and numbers as strings; so
//! does this parser.

use std::io;
use std::path::{Path, PathBuf};

use crate::index::OffsetWidth;
use crate::version::Version;

/// Largest `.vif` read (real ones are about 200 bytes).
pub const VOLUME_INFO_MAX_BYTES: u64 = 1 << 20;

/// What a `.vif` says about its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeInfo {
    /// Needle version, when stated (not 0).
    pub version: Option<u32>,
    /// Bytes of the `.idx` offsets, when stated (not 0).
    pub bytes_offset: Option<u32>,
    /// Remote files the volume was tiered to; the local `.dat` is then not the data.
    pub remote_file_count: usize,
}

/// Why a volume's `.vif` keeps it from being served.
#[derive(Debug, thiserror::Error)]
pub enum VolumeInfoError {
    /// Reading the file failed.
    #[error("cannot read volume info file {path}: {source}")]
    Io {
        /// The `.vif`.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not a `VolumeInfo` in JSON.
    #[error("volume info file {path} is not SeaweedFS volume info JSON: {reason}")]
    Json {
        /// The `.vif`.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The volume was written with another `.idx` offset width than this reader uses.
    #[error("volume info file {path} says the index has {found}-byte offsets, but this engine reads {configured}-byte offsets (--offset-bytes)")]
    WidthMismatch {
        /// The `.vif`.
        path: PathBuf,
        /// `bytesOffset` in the file.
        found: u32,
        /// The configured width.
        configured: usize,
    },
    /// The `.vif` and the super block disagree on the needle version.
    #[error("volume info file {path} says needle version {found}, but the super block says {super_block}")]
    VersionMismatch {
        /// The `.vif`.
        path: PathBuf,
        /// `version` in the file.
        found: u32,
        /// The super block's version.
        super_block: u8,
    },
    /// The `.dat`'s super block cannot be read.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// The `.dat` was moved to remote storage.
    #[error(
        "volume info file {path} says the volume is tiered to {count} remote file(s); only local volumes are served"
    )]
    Remote {
        /// The `.vif`.
        path: PathBuf,
        /// How many remote files it lists.
        count: usize,
    },
}

impl VolumeInfo {
    /// Parses a `.vif`'s bytes; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<VolumeInfo, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let object = value.as_object().ok_or("it is not a JSON object")?;
        let field = |camel: &str, snake: &str| object.get(camel).or_else(|| object.get(snake));
        let number = |camel: &'static str, snake: &str| -> Result<Option<u32>, String> {
            let Some(value) = field(camel, snake).filter(|value| !value.is_null()) else { return Ok(None) };
            let parsed = match value {
                serde_json::Value::Number(number) => number.as_u64(),
                serde_json::Value::String(text) => text.parse().ok(),
                _ => None,
            };
            let parsed = parsed.and_then(|number| u32::try_from(number).ok());
            let parsed = parsed.ok_or_else(|| format!("{camel} is not a 32-bit unsigned number: {value}"))?;
            Ok(Some(parsed).filter(|&number| number != 0))
        };
        let remote_file_count = match field("files", "files") {
            None | Some(serde_json::Value::Null) => 0,
            Some(serde_json::Value::Array(files)) => files.len(),
            Some(other) => return Err(format!("files is not a list: {other}")),
        };
        Ok(VolumeInfo {
            version: number("version", "version")?,
            bytes_offset: number("bytesOffset", "bytes_offset")?,
            remote_file_count,
        })
    }

    /// Reads `path`; `None` when there is no such file or it is empty (SeaweedFS treats an
    /// empty `.vif` as none).
    pub fn load(path: &Path) -> Result<Option<VolumeInfo>, VolumeInfoError> {
        let io_error = |source| VolumeInfoError::Io { path: path.to_path_buf(), source };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(error)),
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, VOLUME_INFO_MAX_BYTES), &mut bytes).map_err(io_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        VolumeInfo::parse(&bytes).map(Some).map_err(|reason| VolumeInfoError::Json { path: path.to_path_buf(), reason })
    }

    /// Checks what this says against how the volume is about to be read: the configured
    /// offset width and the super block's version; a tiered volume is refused.
    pub fn check(&self, path: &Path, width: OffsetWidth, version: Version) -> Result<(), VolumeInfoError> {
        if self.remote_file_count > 0 {
            return Err(VolumeInfoError::Remote { path: path.to_path_buf(), count: self.remote_file_count });
        }
        if let Some(found) = self.bytes_offset.filter(|&found| found as usize != width.offset_size_bytes()) {
            return Err(VolumeInfoError::WidthMismatch {
                path: path.to_path_buf(),
                found,
                configured: width.offset_size_bytes(),
            });
        }
        if let Some(found) = self.version.filter(|&found| found != u32::from(version.as_byte())) {
            return Err(VolumeInfoError::VersionMismatch {
                path: path.to_path_buf(),
                found,
                super_block: version.as_byte(),
            });
        }
        Ok(())
    }
}

/// Loads the `.vif` beside `dat_path` (same stem) and, when there is one, checks it against
/// `width` and the `.dat`'s super block (see [`VolumeInfo::check`]); a volume without one
/// passes. Reads no index, so a refused volume is cheap to look at again.
pub fn check_beside(dat_path: &Path, width: OffsetWidth) -> Result<(), VolumeInfoError> {
    let path = dat_path.with_extension("vif");
    let Some(info) = VolumeInfo::load(&path)? else { return Ok(()) };
    let version = crate::volume::scan(dat_path)?.super_block().version;
    info.check(&path, width, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `weed volume` 4.53 wrote for a new volume (a test run's `1.vif`).
    const WRITTEN_BY_SEAWEEDFS: &str = r#"{
  "files": [],
  "version": 3,
  "replication": "",
  "bytesOffset": 4,
  "datFileSize": "0",
  "expireAtSec": "1796144091",
  "readOnly": false,
  "ecShardConfig": null,
  "readOnlyCanDelete": false
}"#;

    #[test]
    fn reads_what_seaweedfs_writes() {
        let info = VolumeInfo::parse(WRITTEN_BY_SEAWEEDFS.as_bytes()).unwrap();
        assert_eq!(info, VolumeInfo { version: Some(3), bytes_offset: Some(4), remote_file_count: 0 });
        let path = Path::new("1.vif");
        info.check(path, OffsetWidth::Four, Version::V3).unwrap();
        assert!(matches!(
            info.check(path, OffsetWidth::Five, Version::V3),
            Err(VolumeInfoError::WidthMismatch { found: 4, configured: 5, .. })
        ));
        assert!(matches!(
            info.check(path, OffsetWidth::Four, Version::V2),
            Err(VolumeInfoError::VersionMismatch { found: 3, super_block: 2, .. })
        ));
    }

    #[test]
    fn accepts_proto_names_strings_and_absent_fields() {
        let info = VolumeInfo::parse(br#"{"bytes_offset": "5", "version": "2"}"#).unwrap();
        assert_eq!(info, VolumeInfo { version: Some(2), bytes_offset: Some(5), remote_file_count: 0 });
        let old = VolumeInfo::parse(br#"{"version": 0}"#).unwrap();
        assert_eq!(old, VolumeInfo::default());
        old.check(Path::new("x.vif"), OffsetWidth::Five, Version::V1).unwrap();
    }

    #[test]
    fn refuses_tiered_volumes_and_garbage() {
        let tiered = VolumeInfo::parse(br#"{"files": [{"backendType": "s3"}], "version": 3}"#).unwrap();
        let refused = tiered.check(Path::new("x.vif"), OffsetWidth::Four, Version::V3);
        assert!(matches!(refused, Err(VolumeInfoError::Remote { count: 1, .. })));
        assert!(VolumeInfo::parse(b"[1]").is_err());
        assert!(VolumeInfo::parse(b"{").is_err());
        assert!(VolumeInfo::parse(br#"{"bytesOffset": -4}"#).is_err());
        assert!(VolumeInfo::parse(br#"{"bytesOffset": 4294967296}"#).is_err());
    }
}
