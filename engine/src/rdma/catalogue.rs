//! The catalogue protocol between the read role and the export role.
//!
//! Control traffic rides on UCX active messages with JSON payloads (small, rare, easy to
//! inspect); the data path never touches it.
//!
//! - Reader → exporter, [`AM_CATALOGUE_REQUEST`]: a [`CatalogueRequest`] naming the volumes
//!   wanted (`None`: all of them) and a request id.
//! - Exporter → reader, [`AM_CATALOGUE`]: a [`Catalogue`] echoing the request id. For every
//!   volume asked for that the exporter serves: its generation, needle version, index offset
//!   width, and for the `.dat` and the `.idx` the current length and the registered pieces
//!   (file offset, length, address, packed rkey). A volume asked for and absent from the
//!   answer is not served (any more).
//!
//! The reader treats every answer as untrusted: [`VolumeEntry::validate`] checks that the
//! pieces are sorted, contiguous from file offset 0, cover the file's length, and that the
//! numbers cannot overflow, before any get is addressed with them.

use serde::{Deserialize, Serialize};

/// Reader → exporter: catalogue request (payload: [`CatalogueRequest`] as JSON).
pub const AM_CATALOGUE_REQUEST: u16 = 0x5201;
/// Exporter → reader: catalogue (payload: [`Catalogue`] as JSON).
pub const AM_CATALOGUE: u16 = 0x5202;
/// Bumped on any incompatible change of the JSON below.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most volumes one request may name; a reader wanting more asks for all.
pub const REQUEST_VOLUMES_MAX: usize = 64;
/// Most pieces a file may be exported in (1 GiB pieces: 8 TiB, the 5-byte offset limit).
pub const PIECES_PER_FILE_MAX: usize = 8192;

/// What a reader asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueRequest {
    pub protocol_version: u32,
    /// Echoed in the answer so the reader knows which refresh completed.
    pub request_id: u64,
    /// The volumes wanted; `None` for every volume the exporter serves.
    pub volumes: Option<Vec<u32>>,
    /// A JWT signed with SeaweedFS's read key (see [`super::token`]), when the reader has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What an exporter answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    pub protocol_version: u32,
    pub request_id: u64,
    /// Random per exporter process: a new value means every address and rkey changed.
    pub exporter_id: u64,
    /// The exporter's catalogue generation: it moves whenever what it exports changes (a
    /// volume added, grown, replaced or withdrawn). 0 from an exporter that does not say.
    #[serde(default)]
    pub generation: u64,
    /// True when this lists every volume served (the request named none).
    pub complete: bool,
    pub volumes: Vec<VolumeEntry>,
}

/// One exported volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub volume_id: u32,
    /// Changes when the volume's files are replaced (compaction, copy): a hash of the files'
    /// device and inode numbers and the super block's compaction revision. A reader drops its
    /// cached index when it changes.
    pub generation: u64,
    /// Needle layout version from the super block (1..=3).
    pub version: u8,
    /// Bytes of the `.idx` entry offset field (4 or 5).
    pub offset_size_bytes: u8,
    pub dat: FileEntry,
    pub idx: FileEntry,
}

/// One exported file: its current length and where its bytes can be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's length when the catalogue was answered; no get may reach past it.
    pub length_bytes: u64,
    pub pieces: Vec<PieceEntry>,
}

/// A registered piece of a file: file bytes `file_offset..file_offset + length_bytes` are at
/// `address..address + length_bytes` in the exporter, readable with `rkey`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceEntry {
    pub file_offset: u64,
    pub length_bytes: u64,
    pub address: u64,
    /// Packed remote key, lowercase hex.
    pub rkey_hex: String,
}

/// Why a catalogue entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("catalogue is not valid JSON: {0}")]
    Json(String),
    #[error("catalogue protocol version {found}, this engine speaks {PROTOCOL_VERSION}")]
    ProtocolVersion { found: u32 },
    #[error("volume {volume_id}: {reason}")]
    Volume { volume_id: u32, reason: &'static str },
}

impl Catalogue {
    pub fn decode(bytes: &[u8]) -> Result<Catalogue, CatalogueError> {
        let catalogue: Catalogue =
            serde_json::from_slice(bytes).map_err(|error| CatalogueError::Json(error.to_string()))?;
        if catalogue.protocol_version != PROTOCOL_VERSION {
            return Err(CatalogueError::ProtocolVersion { found: catalogue.protocol_version });
        }
        Ok(catalogue)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of integers and strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl CatalogueRequest {
    pub fn decode(bytes: &[u8]) -> Result<CatalogueRequest, CatalogueError> {
        let request: CatalogueRequest =
            serde_json::from_slice(bytes).map_err(|error| CatalogueError::Json(error.to_string()))?;
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(CatalogueError::ProtocolVersion { found: request.protocol_version });
        }
        Ok(request)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl VolumeEntry {
    /// Checks what a reader relies on before addressing gets with this entry.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let bad = |reason| CatalogueError::Volume { volume_id: self.volume_id, reason };
        if !(1..=3).contains(&self.version) {
            return Err(bad("needle version is not 1, 2 or 3"));
        }
        if !(4..=5).contains(&self.offset_size_bytes) {
            return Err(bad("index offset size is not 4 or 5"));
        }
        self.dat.validate().map_err(bad)?;
        self.idx.validate().map_err(bad)
    }
}

impl FileEntry {
    fn validate(&self) -> Result<(), &'static str> {
        if self.pieces.len() > PIECES_PER_FILE_MAX {
            return Err("too many pieces");
        }
        let mut covered = 0u64;
        for piece in &self.pieces {
            if piece.file_offset != covered || piece.length_bytes == 0 {
                return Err("pieces are not contiguous from offset 0");
            }
            if piece.address.checked_add(piece.length_bytes).is_none() {
                return Err("piece address overflows");
            }
            let rkey_bytes = piece.rkey_hex.len() / 2;
            if !piece.rkey_hex.len().is_multiple_of(2) || rkey_bytes == 0 || rkey_bytes > ucx::RKEY_MAX_BYTES {
                return Err("piece rkey has a bad length");
            }
            covered = covered.checked_add(piece.length_bytes).ok_or("piece lengths overflow")?;
        }
        if covered < self.length_bytes {
            return Err("pieces do not cover the file length");
        }
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// Bytes of a hex string; `None` on an odd length or a non-hex digit.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |digit: u8| (digit as char).to_digit(16).map(|value| value as u8);
    digits.chunks_exact(2).map(|pair| Some(value(pair[0])? << 4 | value(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(file_offset: u64, length_bytes: u64) -> PieceEntry {
        PieceEntry { file_offset, length_bytes, address: 0x1000 + file_offset, rkey_hex: "00ff".into() }
    }

    fn volume(dat: Vec<PieceEntry>, dat_length_bytes: u64) -> VolumeEntry {
        VolumeEntry {
            volume_id: 7,
            generation: 1,
            version: 3,
            offset_size_bytes: 4,
            dat: FileEntry { length_bytes: dat_length_bytes, pieces: dat },
            idx: FileEntry { length_bytes: 0, pieces: vec![] },
        }
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001abff").unwrap(), bytes);
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }

    #[test]
    fn pieces_must_cover_the_file() {
        assert!(volume(vec![piece(0, 4096), piece(4096, 4096)], 8000).validate().is_ok());
        assert!(volume(vec![piece(0, 4096)], 8000).validate().is_err());
        assert!(volume(vec![piece(0, 4096), piece(8192, 4096)], 8000).validate().is_err());
        let mut overflowing = piece(0, 16);
        overflowing.address = u64::MAX - 4;
        assert!(volume(vec![overflowing], 16).validate().is_err());
    }

    #[test]
    fn catalogue_round_trip_and_version_check() {
        let catalogue = Catalogue {
            protocol_version: PROTOCOL_VERSION,
            request_id: 5,
            exporter_id: 9,
            generation: 3,
            complete: true,
            volumes: vec![volume(vec![piece(0, 4096)], 100)],
        };
        assert_eq!(Catalogue::decode(&catalogue.encode()).unwrap(), catalogue);
        let future = Catalogue { protocol_version: PROTOCOL_VERSION + 1, ..catalogue };
        assert!(matches!(Catalogue::decode(&future.encode()), Err(CatalogueError::ProtocolVersion { .. })));
        assert!(Catalogue::decode(b"{").is_err());
    }
}
