//! The volume whose bytes are known: generated once per run with `volgen`'s generator
//! (seeded), its file ids written to a file, and every needle's data read back with
//! `volume_format`'s own reader, independent of the engine, to check what the engine serves.

use super::ChaosError;
use std::path::{Path, PathBuf};
use volume_format::file_id::FileId;
use volume_format::generate::{generate_volume, GenerateSpec, SizePlan};
use volume_format::index::OffsetWidth;
use volume_format::needle::NeedleRecord;
use volume_format::volume::LocalVolume;

/// The one volume a campaign reads.
pub const VOLUME_ID: u32 = 1;
/// Needles in it.
pub const NEEDLE_COUNT: u64 = 256;
/// Data sizes: from one byte to 128 KiB, so small reads and multi-page gets both happen.
const SIZE_RANGE: &str = "1..131072";
/// The file ids, one per line, beside the volume.
const FILE_IDS: &str = "fids.txt";

/// Writes `dir/1.dat`, `dir/1.idx` and `dir/fids.txt`.
pub fn generate(dir: &Path, seed: u64) -> Result<(), ChaosError> {
    let spec = GenerateSpec {
        dir: dir.to_path_buf(),
        volume_id: VOLUME_ID,
        count: NEEDLE_COUNT,
        sizes: SizePlan::parse_range(SIZE_RANGE).map_err(|error| ChaosError::Setup(error.to_string()))?,
        seed,
        collection: None,
        offset_width: OffsetWidth::Four,
        overwrite: true,
    };
    let mut file_ids = String::new();
    generate_volume(&spec, &mut |file_id| {
        file_ids.push_str(&format!("{file_id}\n"));
        Ok(())
    })
    .map_err(|error| ChaosError::Setup(format!("cannot generate the volume: {error}")))?;
    std::fs::write(dir.join(FILE_IDS), file_ids)
        .map_err(|error| ChaosError::Setup(format!("cannot write the file ids: {error}")))
}

/// One needle: what to ask for and what must come back.
#[derive(Debug)]
pub struct KnownNeedle {
    pub file_id: FileId,
    pub data: Vec<u8>,
}

/// Every needle of the generated volume with its data.
#[derive(Debug)]
pub struct KnownVolume {
    pub needles: Vec<KnownNeedle>,
}

impl KnownVolume {
    /// Reads back what [`generate`] wrote in `dir`.
    pub fn load(dir: &Path) -> Result<KnownVolume, ChaosError> {
        let path = |extension: &str| -> PathBuf { dir.join(format!("{VOLUME_ID}.{extension}")) };
        let volume = LocalVolume::open(&path("dat"), &path("idx"), OffsetWidth::Four)
            .map_err(|error| ChaosError::Setup(format!("cannot open the known volume: {error}")))?;
        let text = std::fs::read_to_string(dir.join(FILE_IDS))
            .map_err(|error| ChaosError::Setup(format!("cannot read the file ids: {error}")))?;
        let mut needles = Vec::new();
        for line in text.lines() {
            let file_id: FileId =
                line.parse().map_err(|error| ChaosError::Setup(format!("file id {line:?}: {error}")))?;
            let record = volume
                .read_checked(file_id.needle_id, file_id.cookie)
                .map_err(|error| ChaosError::Setup(format!("needle {file_id}: {error}")))?;
            let parsed = NeedleRecord::parse(&record, volume.version())
                .map_err(|error| ChaosError::Setup(format!("needle {file_id}: {error}")))?;
            needles.push(KnownNeedle { file_id, data: parsed.data.to_vec() });
        }
        if needles.is_empty() {
            return Err(ChaosError::Setup(format!("{} lists no needle", dir.join(FILE_IDS).display())));
        }
        Ok(KnownVolume { needles })
    }

    /// A buffer length that holds the largest whole record (data plus header, body fields,
    /// checksum and padding), in whole pages.
    pub fn buffer_length_bytes(&self) -> u32 {
        let largest = self.needles.iter().map(|needle| needle.data.len()).max().unwrap_or(0);
        ((largest + 4096).div_ceil(4096) * 4096) as u32
    }
}
