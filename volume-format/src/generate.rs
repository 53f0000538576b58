//! Synthetic volumes for tests and benchmarks (the logic behind `volgen`):
//! needles 1..=count with seeded random data and cookies, so the same seed
//! gives the same file ids and data (append times are real clock readings).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::file_id::FileId;
use crate::index::OffsetWidth;
use crate::writer::{NeedleSpec, VolumeWriter, VolumeWriterOptions, WriteError, WriteSummary};

/// Largest needle data size accepted (1 GiB; the format allows just under 2 GiB).
pub const MAX_DATA_SIZE_BYTES: u32 = 1 << 30;
/// Largest number of needles in one generated volume.
pub const MAX_NEEDLE_COUNT: u64 = 100_000_000;
/// Longest list given to [`SizePlan::Cycle`].
pub const MAX_CYCLE_SIZE_COUNT: usize = 1024;

/// Errors generating a volume.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A size list or range that cannot be used.
    #[error("bad sizes {text:?}: {reason}")]
    BadSizes {
        /// The text given.
        text: String,
        /// Why.
        reason: String,
    },
    /// Too many needles asked for.
    #[error("needle count {count} is over the limit of {MAX_NEEDLE_COUNT}")]
    TooMany {
        /// Count asked for.
        count: u64,
    },
    /// Writing the volume failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Passing a file id on failed.
    #[error("cannot write file ids: {0}")]
    FileIds(std::io::Error),
}

/// How needle data sizes are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizePlan {
    /// Every needle has this size.
    Fixed(u32),
    /// Sizes taken in turn from the list.
    Cycle(Vec<u32>),
    /// Uniformly random in `min..=max`, from the seed.
    Range {
        /// Smallest size.
        min: u32,
        /// Largest size (inclusive).
        max: u32,
    },
}

impl SizePlan {
    /// Parse `4096,65536,1048576` into [`SizePlan::Cycle`].
    pub fn parse_list(text: &str) -> Result<SizePlan, GenerateError> {
        let sizes = text
            .split(',')
            .take(MAX_CYCLE_SIZE_COUNT + 1)
            .map(|part| parse_size(text, part.trim()))
            .collect::<Result<Vec<u32>, GenerateError>>()?;
        if sizes.len() > MAX_CYCLE_SIZE_COUNT {
            return Err(bad_sizes(text, format!("more than {MAX_CYCLE_SIZE_COUNT} sizes")));
        }
        Ok(SizePlan::Cycle(sizes))
    }

    /// Parse `MIN..MAX` (both inclusive) into [`SizePlan::Range`].
    pub fn parse_range(text: &str) -> Result<SizePlan, GenerateError> {
        let (min, max) = text.split_once("..").ok_or_else(|| bad_sizes(text, "expected MIN..MAX".to_string()))?;
        let (min, max) = (parse_size(text, min.trim())?, parse_size(text, max.trim())?);
        if min > max {
            return Err(bad_sizes(text, "MIN is larger than MAX".to_string()));
        }
        Ok(SizePlan::Range { min, max })
    }

    /// A checked [`SizePlan::Fixed`].
    pub fn fixed(size_bytes: u32) -> Result<SizePlan, GenerateError> {
        parse_size(&size_bytes.to_string(), &size_bytes.to_string()).map(SizePlan::Fixed)
    }

    fn size_for(&self, needle_index: u64, rng: &mut SplitMix64) -> u32 {
        match self {
            SizePlan::Fixed(size) => *size,
            SizePlan::Cycle(sizes) => {
                sizes.get((needle_index % sizes.len().max(1) as u64) as usize).copied().unwrap_or(1)
            }
            SizePlan::Range { min, max } => min + (rng.next() % (u64::from(max - min) + 1)) as u32,
        }
    }
}

fn bad_sizes(text: &str, reason: String) -> GenerateError {
    GenerateError::BadSizes { text: text.to_string(), reason }
}

fn parse_size(text: &str, part: &str) -> Result<u32, GenerateError> {
    let size = u32::from_str(part).map_err(|_| bad_sizes(text, format!("{part:?} is not a whole number of bytes")))?;
    if size == 0 || size > MAX_DATA_SIZE_BYTES {
        return Err(bad_sizes(text, format!("{size} is not between 1 and {MAX_DATA_SIZE_BYTES} bytes")));
    }
    Ok(size)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// Directory for the two files.
    pub dir: PathBuf,
    /// Volume id (file name and file ids).
    pub volume_id: u32,
    /// Needles to write, ids 1..=count.
    pub count: u64,
    /// Data sizes.
    pub sizes: SizePlan,
    /// Seed for data, cookies and random sizes.
    pub seed: u64,
    /// Collection name prefix, if any.
    pub collection: Option<String>,
    /// `.idx` entry width.
    pub offset_width: OffsetWidth,
    /// Replace existing files.
    pub overwrite: bool,
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSummary {
    /// The files written.
    pub write: WriteSummary,
    /// Sum of the needles' data sizes.
    pub data_bytes: u64,
}

/// Write the volume, calling `on_file_id` with each needle's file id in order.
pub fn generate_volume(
    spec: &GenerateSpec,
    on_file_id: &mut dyn FnMut(FileId) -> std::io::Result<()>,
) -> Result<GenerateSummary, GenerateError> {
    if spec.count > MAX_NEEDLE_COUNT {
        return Err(GenerateError::TooMany { count: spec.count });
    }
    let options =
        VolumeWriterOptions { offset_width: spec.offset_width, overwrite: spec.overwrite, ..Default::default() };
    let mut writer = VolumeWriter::create_in(&spec.dir, spec.collection.as_deref(), spec.volume_id, options)?;
    let mut rng = SplitMix64(spec.seed);
    let mut data = Vec::new();
    let mut data_bytes = 0u64;
    let last_modified = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    for needle_index in 0..spec.count {
        let size_bytes = spec.sizes.size_for(needle_index, &mut rng);
        data.resize(size_bytes as usize, 0);
        rng.fill(&mut data);
        let cookie = rng.next() as u32;
        let needle = NeedleSpec {
            needle_id: needle_index + 1,
            cookie,
            data: &data,
            last_modified: Some(last_modified),
            ..Default::default()
        };
        let file_id = writer.append(&needle)?;
        on_file_id(file_id).map_err(GenerateError::FileIds)?;
        data_bytes += u64::from(size_bytes);
    }
    Ok(GenerateSummary { write: writer.finish()?, data_bytes })
}

/// SplitMix64: tiny, and its output for a seed never changes across
/// platforms or crate versions, which keeps generated data reproducible.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::LocalVolume;

    #[test]
    fn parses_size_plans() {
        assert_eq!(SizePlan::parse_list("4096, 65536").unwrap(), SizePlan::Cycle(vec![4096, 65536]));
        assert_eq!(SizePlan::parse_range("10..20").unwrap(), SizePlan::Range { min: 10, max: 20 });
        assert!(SizePlan::parse_range("20..10").is_err());
        assert!(SizePlan::parse_list("1,x").is_err());
        assert!(SizePlan::parse_list("0").is_err());
        assert!(SizePlan::fixed(MAX_DATA_SIZE_BYTES + 1).is_err());
    }

    #[test]
    fn splitmix_known_value() {
        // First output for seed 0 (reference implementation by Vigna).
        assert_eq!(SplitMix64(0).next(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn same_seed_same_volume() {
        let dir = std::env::temp_dir().join(format!("volume-format-generate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = GenerateSpec {
            dir: dir.clone(),
            volume_id: 5,
            count: 20,
            sizes: SizePlan::parse_range("1..300").unwrap(),
            seed: 42,
            collection: None,
            offset_width: OffsetWidth::Four,
            overwrite: true,
        };
        let mut first_ids = Vec::new();
        let first = generate_volume(&spec, &mut |fid| {
            first_ids.push(fid);
            Ok(())
        })
        .unwrap();
        let mut second_ids = Vec::new();
        generate_volume(&spec, &mut |fid| {
            second_ids.push(fid);
            Ok(())
        })
        .unwrap();
        assert_eq!(first_ids, second_ids);
        let volume = LocalVolume::open(&first.write.dat_path, &first.write.idx_path, OffsetWidth::Four).unwrap();
        assert_eq!(volume.index().live_count(), 20);
        for fid in &first_ids {
            volume.read_checked(fid.needle_id, fid.cookie).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
