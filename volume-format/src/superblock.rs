//! The volume super block: the first 8 bytes of every `.dat`, plus the
//! protobuf "extra" bytes that follow when its last field is non-zero.
//!
//! | byte | field |
//! |---|---|
//! | 0 | version (1..=3) |
//! | 1 | replica placement, decimal digits `dc rack node` packed as `dc*100 + rack*10 + node` |
//! | 2..4 | TTL count, TTL unit |
//! | 4..6 | compaction revision, u16 big-endian |
//! | 6..8 | extra size, u16 big-endian |

use crate::error::FormatError;
use crate::ttl::Ttl;
use crate::version::Version;

/// The fixed part of the super block.
pub const SUPER_BLOCK_SIZE_BYTES: usize = 8;
/// SeaweedFS refuses extra data larger than this (it keeps two values spare).
pub const MAX_EXTRA_SIZE_BYTES: usize = 256 * 256 - 2;

/// A parsed super block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    /// Needle layout of every record in the volume.
    pub version: Version,
    /// Replica placement byte, e.g. 2 for "002"; see [`SuperBlock::replica_placement_string`].
    pub replica_placement: u8,
    /// Volume-wide TTL.
    pub ttl: Ttl,
    /// How many times the volume has been compacted.
    pub compaction_revision: u16,
    /// The protobuf `SuperBlockExtra` bytes, kept opaque.
    pub extra: Vec<u8>,
}

impl SuperBlock {
    /// A fresh super block as `weed` writes for a new volume: no TTL, no extra.
    pub fn new(version: Version, replica_placement: u8) -> SuperBlock {
        SuperBlock { version, replica_placement, ttl: Ttl::EMPTY, compaction_revision: 0, extra: Vec::new() }
    }

    /// Parse from the start of a `.dat`. `bytes` may be longer than the super
    /// block; it must hold the extra bytes when the extra size is non-zero.
    pub fn parse(bytes: &[u8]) -> Result<SuperBlock, FormatError> {
        let fixed = fixed_part(bytes)?;
        let version = Version::from_byte(fixed[0])?;
        let extra_size_bytes = extra_size_of(version, fixed);
        let total_size_bytes = SUPER_BLOCK_SIZE_BYTES + extra_size_bytes;
        let extra = bytes.get(SUPER_BLOCK_SIZE_BYTES..total_size_bytes).ok_or(FormatError::TooShort {
            what: "super block with its extra bytes",
            needed_bytes: total_size_bytes as u64,
            available_bytes: bytes.len() as u64,
        })?;
        Ok(SuperBlock {
            version,
            replica_placement: fixed[1],
            ttl: Ttl::from_bytes([fixed[2], fixed[3]]),
            compaction_revision: u16::from_be_bytes([fixed[4], fixed[5]]),
            extra: extra.to_vec(),
        })
    }

    /// How many bytes of the super block follow the fixed 8, read from the
    /// fixed part alone (to know how much more to read from a file).
    pub fn extra_size_bytes(fixed: &[u8]) -> Result<usize, FormatError> {
        let fixed = fixed_part(fixed)?;
        let version = Version::from_byte(fixed[0])?;
        Ok(extra_size_of(version, fixed))
    }

    /// Total on-disk size: 8 plus the extra bytes. The first needle starts here.
    pub fn size_bytes(&self) -> u64 {
        (SUPER_BLOCK_SIZE_BYTES + self.extra.len()) as u64
    }

    /// The on-disk bytes. Fails when the extra bytes exceed what the u16 size
    /// field may hold ([`MAX_EXTRA_SIZE_BYTES`]).
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        if self.version == Version::V1 && !self.extra.is_empty() {
            return Err(FormatError::ExtraOnVersion1);
        }
        let extra_size = u16::try_from(self.extra.len())
            .ok()
            .filter(|&size| usize::from(size) <= MAX_EXTRA_SIZE_BYTES)
            .ok_or(FormatError::ExtraTooLong {
                size_bytes: self.extra.len() as u64,
                max_size_bytes: MAX_EXTRA_SIZE_BYTES as u64,
            })?;
        let mut bytes = Vec::with_capacity(SUPER_BLOCK_SIZE_BYTES + self.extra.len());
        bytes.push(self.version.as_byte());
        bytes.push(self.replica_placement);
        bytes.extend_from_slice(&self.ttl.to_bytes());
        bytes.extend_from_slice(&self.compaction_revision.to_be_bytes());
        bytes.extend_from_slice(&extra_size.to_be_bytes());
        bytes.extend_from_slice(&self.extra);
        Ok(bytes)
    }

    /// Replica placement as SeaweedFS prints it, e.g. `"002"`.
    pub fn replica_placement_string(&self) -> String {
        let byte = self.replica_placement;
        format!("{}{}{}", byte / 100, byte / 10 % 10, byte % 10)
    }
}

/// SeaweedFS's `BlockSize()` counts the extra bytes for versions 2 and 3 only.
fn extra_size_of(version: Version, fixed: &[u8; SUPER_BLOCK_SIZE_BYTES]) -> usize {
    match version {
        Version::V1 => 0,
        Version::V2 | Version::V3 => usize::from(u16::from_be_bytes([fixed[6], fixed[7]])),
    }
}

fn fixed_part(bytes: &[u8]) -> Result<&[u8; SUPER_BLOCK_SIZE_BYTES], FormatError> {
    bytes.get(..SUPER_BLOCK_SIZE_BYTES).and_then(|fixed| fixed.try_into().ok()).ok_or(FormatError::TooShort {
        what: "super block",
        needed_bytes: SUPER_BLOCK_SIZE_BYTES as u64,
        available_bytes: bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_header() {
        let block = SuperBlock::parse(&[3, 2, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(block.version, Version::V3);
        assert_eq!(block.replica_placement_string(), "002");
        assert_eq!(block.size_bytes(), 8);
        assert!(block.extra.is_empty());
    }

    #[test]
    fn extra_bytes_round_trip() {
        let mut block = SuperBlock::new(Version::V2, 10);
        block.ttl = Ttl::from_bytes([3, crate::ttl::unit::HOUR]);
        block.compaction_revision = 0x0102;
        block.extra = vec![0x0a, 0x02, 0x08, 0x01];
        let bytes = block.encode().unwrap();
        assert_eq!(&bytes[..8], &[2, 10, 3, 2, 1, 2, 0, 4]);
        assert_eq!(SuperBlock::parse(&bytes).unwrap(), block);
        assert_eq!(block.size_bytes(), 12);
    }

    #[test]
    fn short_inputs_are_errors() {
        assert!(matches!(SuperBlock::parse(&[3, 0]), Err(FormatError::TooShort { .. })));
        let missing_extra = [3, 0, 0, 0, 0, 0, 0, 5, 1, 2];
        assert!(matches!(SuperBlock::parse(&missing_extra), Err(FormatError::TooShort { needed_bytes: 13, .. })));
    }

    #[test]
    fn version_1_ignores_extra_size() {
        let block = SuperBlock::parse(&[1, 0, 0, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(block.size_bytes(), 8);
        let mut with_extra = SuperBlock::new(Version::V1, 0);
        with_extra.extra = vec![1];
        assert_eq!(with_extra.encode(), Err(FormatError::ExtraOnVersion1));
    }

    #[test]
    fn bad_version_is_an_error() {
        assert!(matches!(
            SuperBlock::parse(&[4, 0, 0, 0, 0, 0, 0, 0]),
            Err(FormatError::UnsupportedVersion { version: 4 })
        ));
    }
}
