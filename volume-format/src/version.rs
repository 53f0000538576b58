//! The needle format version stored in byte 0 of the super block, and the
//! fixed sizes every version shares.

use crate::error::FormatError;

/// Cookie (u32) + needle id (u64) + size (i32), all big-endian.
pub const NEEDLE_HEADER_SIZE_BYTES: usize = 16;
/// The stored CRC-32C that follows the needle body.
pub const CHECKSUM_SIZE_BYTES: usize = 4;
/// Version 3 appends the append time in nanoseconds after the checksum.
pub const TIMESTAMP_SIZE_BYTES: usize = 8;
/// Records start at multiples of this, and `.idx` offsets count in it.
pub const NEEDLE_ALIGNMENT_BYTES: u64 = 8;
/// Versions 2 and 3 start the body with a u32 data size.
pub const DATA_SIZE_FIELD_SIZE_BYTES: usize = 4;

const _: () = assert!(NEEDLE_HEADER_SIZE_BYTES == 4 + 8 + 4);
const _: () = assert!(NEEDLE_ALIGNMENT_BYTES.is_power_of_two());

/// Needle layout version. SeaweedFS supports exactly 1, 2 and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// Header, then the data directly; no flags or optional fields.
    V1,
    /// Header, data size, data, flags and optional fields.
    V2,
    /// As version 2, plus an 8-byte append time after the checksum.
    V3,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1, Version::V2, Version::V3];

    /// The byte stored in the super block.
    pub const fn as_byte(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    /// Parse the super block's version byte; anything but 1..=3 is an error.
    pub fn from_byte(byte: u8) -> Result<Version, FormatError> {
        match byte {
            1 => Ok(Version::V1),
            2 => Ok(Version::V2),
            3 => Ok(Version::V3),
            other => Err(FormatError::UnsupportedVersion { version: other }),
        }
    }

    /// Bytes between the checksum and the padding: the v3 timestamp or none.
    pub const fn timestamp_size_bytes(self) -> usize {
        match self {
            Version::V3 => TIMESTAMP_SIZE_BYTES,
            Version::V1 | Version::V2 => 0,
        }
    }
}

impl TryFrom<u8> for Version {
    type Error = FormatError;

    fn try_from(byte: u8) -> Result<Self, Self::Error> {
        Version::from_byte(byte)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_byte())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip() {
        for version in Version::ALL {
            assert_eq!(Version::from_byte(version.as_byte()).unwrap(), version);
        }
    }

    #[test]
    fn rejects_unknown_versions() {
        for byte in [0u8, 4, 255] {
            assert!(matches!(
                Version::from_byte(byte),
                Err(FormatError::UnsupportedVersion { version }) if version == byte
            ));
        }
    }
}
