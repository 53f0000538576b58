//! Errors in the bytes themselves: what a parser of one super block, needle
//! record or index entry can find wrong. File names and file offsets are added
//! by the callers that know them (`volume`, `index`).

/// A byte-level format error. Offsets here are relative to the parsed slice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The super block's version byte is not 1, 2 or 3.
    #[error("unsupported volume version {version} (SeaweedFS knows 1, 2 and 3)")]
    UnsupportedVersion {
        /// The byte found.
        version: u8,
    },
    /// Super block extra bytes longer than its u16 size field allows.
    #[error("super block extra is {size_bytes} bytes, more than the {max_size_bytes} SeaweedFS allows")]
    ExtraTooLong {
        /// Extra bytes given.
        size_bytes: u64,
        /// The limit.
        max_size_bytes: u64,
    },
    /// Version 1 super blocks have no extra bytes (SeaweedFS ignores the size field).
    #[error("a version 1 super block cannot carry extra bytes")]
    ExtraOnVersion1,
    /// The input ends before a fixed-size part.
    #[error("{what} needs {needed_bytes} bytes but only {available_bytes} are there")]
    TooShort {
        /// What was being read.
        what: &'static str,
        /// Bytes the part needs.
        needed_bytes: u64,
        /// Bytes the input has.
        available_bytes: u64,
    },
    /// A needle header with a negative size (only index entries use -1).
    #[error("needle header has negative size {size}")]
    NegativeSize {
        /// The size field found.
        size: i32,
    },
    /// A length field inside the needle body points past the body's end.
    #[error("needle {field} at byte {offset_in_record} of the record needs {needed_bytes} bytes but the body has {available_bytes} left")]
    FieldOutOfRange {
        /// The field whose length overran.
        field: &'static str,
        /// Where the field starts inside the record.
        offset_in_record: u64,
        /// Bytes the field claims.
        needed_bytes: u64,
        /// Bytes left in the body from there.
        available_bytes: u64,
    },
    /// The record holds another needle than the index said.
    #[error("needle id mismatch: expected {expected:#x}, record holds {found:#x}")]
    IdMismatch {
        /// Needle id asked for.
        expected: u64,
        /// Needle id in the record header.
        found: u64,
    },
    /// The cookie in the record differs from the one in the file id.
    #[error("cookie mismatch for needle: expected {expected:08x}, record holds {found:08x}")]
    CookieMismatch {
        /// Cookie asked for.
        expected: u32,
        /// Cookie in the record header.
        found: u32,
    },
    /// The record header's size differs from the index entry's size.
    #[error("size mismatch: index says {expected} bytes, record header says {found}")]
    SizeMismatch {
        /// Size from the index.
        expected: u32,
        /// Size from the record header.
        found: i32,
    },
    /// The data does not match the stored checksum in either form.
    #[error("CRC mismatch: stored {stored:08x}, data computes to {computed:08x} (legacy form {legacy:08x})")]
    CrcMismatch {
        /// The stored checksum.
        stored: u32,
        /// CRC-32C of the data read.
        computed: u32,
        /// The legacy stored form of `computed`, also accepted.
        legacy: u32,
    },
    /// A byte offset that is not a multiple of 8 cannot be stored in an index.
    #[error("offset {offset_bytes} is not a multiple of 8 bytes")]
    OffsetNotAligned {
        /// The offset given.
        offset_bytes: u64,
    },
    /// A byte offset beyond what the index's offset width can hold.
    #[error("offset {offset_bytes} exceeds the largest offset {max_offset_bytes} an index of this width can hold")]
    OffsetTooLarge {
        /// The offset given.
        offset_bytes: u64,
        /// The largest offset the width can hold.
        max_offset_bytes: u64,
    },
}
