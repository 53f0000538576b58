//! Encoding one needle record byte for byte as SeaweedFS's
//! `writeNeedleV1/V2/V3` does, padding bytes included.

use crate::crc::{self, ChecksumForm};
use crate::needle::{flags, padding_bytes, NeedleHeader, NeedleRecord, MAX_LAST_MODIFIED};
use crate::ttl::Ttl;
use crate::version::Version;

/// Longest name or mime type: their length is one byte.
pub const MAX_NAME_SIZE_BYTES: usize = u8::MAX as usize;
/// Longest pairs JSON: its length is two bytes.
pub const MAX_PAIRS_SIZE_BYTES: usize = u16::MAX as usize;

/// A needle that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Names are at most 255 bytes (SeaweedFS would silently cut it).
    #[error("needle name is {size_bytes} bytes; at most 255 fit")]
    NameTooLong {
        /// Length given.
        size_bytes: usize,
    },
    /// Mime types are at most 255 bytes (SeaweedFS would write a corrupt record).
    #[error("needle mime type is {size_bytes} bytes; at most 255 fit")]
    MimeTooLong {
        /// Length given.
        size_bytes: usize,
    },
    /// Pairs are at most 65535 bytes.
    #[error("needle pairs are {size_bytes} bytes; at most 65535 fit")]
    PairsTooLong {
        /// Length given.
        size_bytes: usize,
    },
    /// Last-modified times are stored in 5 bytes.
    #[error("needle last-modified time {seconds} does not fit the 5 stored bytes")]
    LastModifiedTooLarge {
        /// Value given.
        seconds: u64,
    },
    /// The body size must fit the header's i32.
    #[error("needle body of {size_bytes} bytes does not fit the header's 31-bit size")]
    DataTooLarge {
        /// Body size the needle would have.
        size_bytes: u64,
    },
}

/// Everything a needle record can hold. Fields a version cannot store are
/// ignored: version 1 keeps only cookie, id and data; versions 2 and 3 keep
/// nothing but the header when `data` is empty (as SeaweedFS); only version 3
/// stores `append_at_ns`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeedleSpec<'a> {
    /// Cookie for the header and file id.
    pub cookie: u32,
    /// Needle id.
    pub needle_id: u64,
    /// File content (already gzip-compressed when `is_gzipped`).
    pub data: &'a [u8],
    /// File name, at most 255 bytes.
    pub name: Option<&'a [u8]>,
    /// Mime type, at most 255 bytes.
    pub mime: Option<&'a [u8]>,
    /// Last-modified time in seconds, below 2^40.
    pub last_modified: Option<u64>,
    /// Per-needle TTL.
    pub ttl: Option<Ttl>,
    /// JSON name/value pairs, at most 65535 bytes.
    pub pairs: Option<&'a [u8]>,
    /// Sets SeaweedFS's compressed flag.
    pub is_gzipped: bool,
    /// Sets the chunk-manifest flag.
    pub is_chunk_manifest: bool,
    /// Append time in nanoseconds (version 3).
    pub append_at_ns: u64,
    /// Raw (today's SeaweedFS) or legacy (before 3.09) checksum.
    pub checksum_form: ChecksumForm,
}

impl<'a> NeedleSpec<'a> {
    /// The spec that stores what a parsed `record` holds (flag bits the writer does not
    /// know, and fields flagged but absent, are dropped), with its checksum in `checksum_form`.
    pub fn from_record(record: &NeedleRecord<'a>, checksum_form: ChecksumForm) -> NeedleSpec<'a> {
        NeedleSpec {
            cookie: record.header.cookie,
            needle_id: record.header.needle_id,
            data: record.data,
            name: record.name,
            mime: record.mime,
            last_modified: record.last_modified,
            ttl: record.ttl,
            pairs: record.pairs,
            is_gzipped: record.is_gzipped(),
            is_chunk_manifest: record.is_chunk_manifest(),
            append_at_ns: record.append_at_ns.unwrap_or(0),
            checksum_form,
        }
    }
}

impl NeedleSpec<'_> {
    /// The flag byte this spec stores in versions 2 and 3.
    pub fn flags(&self) -> u8 {
        let flag_if = |present: bool, flag: u8| if present { flag } else { 0 };
        flag_if(self.is_gzipped, flags::IS_COMPRESSED)
            | flag_if(self.name.is_some(), flags::HAS_NAME)
            | flag_if(self.mime.is_some(), flags::HAS_MIME)
            | flag_if(self.last_modified.is_some(), flags::HAS_LAST_MODIFIED)
            | flag_if(self.ttl.is_some(), flags::HAS_TTL)
            | flag_if(self.pairs.is_some(), flags::HAS_PAIRS)
            | flag_if(self.is_chunk_manifest, flags::IS_CHUNK_MANIFEST)
    }

    fn validate(&self) -> Result<(), EncodeError> {
        let name_size_bytes = self.name.map_or(0, <[u8]>::len);
        if name_size_bytes > MAX_NAME_SIZE_BYTES {
            return Err(EncodeError::NameTooLong { size_bytes: name_size_bytes });
        }
        let mime_size_bytes = self.mime.map_or(0, <[u8]>::len);
        if mime_size_bytes > MAX_NAME_SIZE_BYTES {
            return Err(EncodeError::MimeTooLong { size_bytes: mime_size_bytes });
        }
        let pairs_size_bytes = self.pairs.map_or(0, <[u8]>::len);
        if pairs_size_bytes > MAX_PAIRS_SIZE_BYTES {
            return Err(EncodeError::PairsTooLong { size_bytes: pairs_size_bytes });
        }
        match self.last_modified {
            Some(seconds) if seconds > MAX_LAST_MODIFIED => Err(EncodeError::LastModifiedTooLarge { seconds }),
            _ => Ok(()),
        }
    }

    /// The header size field for `version`.
    fn body_size_bytes(&self, version: Version) -> u64 {
        let data_size_bytes = self.data.len() as u64;
        if version == Version::V1 {
            return data_size_bytes;
        }
        if data_size_bytes == 0 {
            return 0;
        }
        let optional = |field: Option<&[u8]>, length_size_bytes: u64| {
            field.map_or(0, |bytes| length_size_bytes + bytes.len() as u64)
        };
        4 + data_size_bytes
            + 1
            + optional(self.name, 1)
            + optional(self.mime, 1)
            + self.last_modified.map_or(0, |_| crate::needle::LAST_MODIFIED_SIZE_BYTES as u64)
            + self.ttl.map_or(0, |_| crate::ttl::TTL_SIZE_BYTES as u64)
            + optional(self.pairs, 2)
    }
}

/// Encode one whole record (header through padding) for `version`.
pub fn encode_needle(version: Version, spec: &NeedleSpec<'_>) -> Result<Vec<u8>, EncodeError> {
    spec.validate()?;
    let body_size_bytes = spec.body_size_bytes(version);
    let size = i32::try_from(body_size_bytes).map_err(|_| EncodeError::DataTooLarge { size_bytes: body_size_bytes })?;
    let header = NeedleHeader { cookie: spec.cookie, needle_id: spec.needle_id, size };
    let record_size_bytes = crate::needle::record_size_bytes(version, size as u32) as usize;
    let mut record = Vec::with_capacity(record_size_bytes);
    record.extend_from_slice(&header.encode());
    let wrote_last_modified = match version {
        Version::V1 => {
            record.extend_from_slice(spec.data);
            false
        }
        Version::V2 | Version::V3 => encode_body(&mut record, spec),
    };
    let raw_crc = crc::crc32c(spec.data);
    record.extend_from_slice(&crc::stored_form(raw_crc, spec.checksum_form).to_be_bytes());
    if version == Version::V3 {
        record.extend_from_slice(&spec.append_at_ns.to_be_bytes());
    }
    let last_modified = spec.last_modified.filter(|_| wrote_last_modified);
    record.extend_from_slice(&padding_bytes(version, &header, last_modified));
    debug_assert_eq!(record.len(), record_size_bytes);
    Ok(record)
}

/// Version 2/3 body; returns whether the last-modified field was written.
fn encode_body(record: &mut Vec<u8>, spec: &NeedleSpec<'_>) -> bool {
    if spec.data.is_empty() {
        return false;
    }
    record.extend_from_slice(&(spec.data.len() as u32).to_be_bytes());
    record.extend_from_slice(spec.data);
    record.push(spec.flags());
    for short_field in [spec.name, spec.mime].into_iter().flatten() {
        record.push(short_field.len() as u8);
        record.extend_from_slice(short_field);
    }
    if let Some(seconds) = spec.last_modified {
        record.extend_from_slice(&seconds.to_be_bytes()[8 - crate::needle::LAST_MODIFIED_SIZE_BYTES..]);
    }
    if let Some(ttl) = spec.ttl {
        record.extend_from_slice(&ttl.to_bytes());
    }
    if let Some(pairs) = spec.pairs {
        record.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
        record.extend_from_slice(pairs);
    }
    spec.last_modified.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needle::NeedleRecord;

    #[test]
    fn v3_record_layout_matches_seaweedfs() {
        let spec = NeedleSpec { cookie: 1, needle_id: 2, data: b"hello", append_at_ns: 3, ..Default::default() };
        let record = encode_needle(Version::V3, &spec).unwrap();
        // size = 4 + 5 + 1 = 10; 16 + 10 + 4 + 8 = 38 -> padding 2 (the size's first bytes).
        assert_eq!(record.len(), 40);
        assert_eq!(&record[12..16], &10i32.to_be_bytes());
        assert_eq!(&record[38..], &[0, 0]);
        let parsed = NeedleRecord::parse(&record, Version::V3).unwrap();
        assert_eq!(parsed.data, b"hello");
        assert_eq!(parsed.append_at_ns, Some(3));
        parsed.check(2, 1).unwrap();
    }

    #[test]
    fn v2_padding_carries_last_modified_and_id() {
        let spec = NeedleSpec {
            cookie: 1,
            needle_id: 0x0102_0304_0506_0708,
            data: b"a",
            last_modified: Some(0x0a0b_0c0d),
            ..Default::default()
        };
        let record = encode_needle(Version::V2, &spec).unwrap();
        // size = 4 + 1 + 1 + 5 = 11; 16 + 11 + 4 = 31 -> padding 1.
        assert_eq!(record.len(), 32);
        assert_eq!(record[31], 0x0a);
        let plain = encode_needle(Version::V2, &NeedleSpec { last_modified: None, ..spec }).unwrap();
        // size 6; 16 + 6 + 4 = 26 -> padding 6: id bytes 0..6.
        assert_eq!(&plain[26..], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn empty_data_stores_only_the_header() {
        let spec = NeedleSpec { cookie: 1, needle_id: 2, name: Some(b"x"), ..Default::default() };
        let record = encode_needle(Version::V3, &spec).unwrap();
        assert_eq!(record.len(), 32);
        assert_eq!(&record[12..16], &[0, 0, 0, 0]);
    }

    #[test]
    fn rejects_what_does_not_fit() {
        let long = [b'x'; 256];
        let name = NeedleSpec { name: Some(&long), data: b"a", ..Default::default() };
        assert_eq!(encode_needle(Version::V3, &name), Err(EncodeError::NameTooLong { size_bytes: 256 }));
        let mime = NeedleSpec { mime: Some(&long), data: b"a", ..Default::default() };
        assert_eq!(encode_needle(Version::V3, &mime), Err(EncodeError::MimeTooLong { size_bytes: 256 }));
        let time = NeedleSpec { last_modified: Some(1 << 40), data: b"a", ..Default::default() };
        assert!(matches!(encode_needle(Version::V2, &time), Err(EncodeError::LastModifiedTooLarge { .. })));
    }
}
