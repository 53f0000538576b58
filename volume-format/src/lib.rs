//! Reads and writes SeaweedFS volume files byte for byte as SeaweedFS
//! (`weed/storage`) does. All integers on disk are big-endian.
//!
//! # Modules and the API the engine uses
//!
//! - [`superblock`]: [`SuperBlock::parse`]`(&[u8]) -> Result<SuperBlock, FormatError>`
//!   (version 1..=3, replica placement byte, [`ttl::Ttl`], compaction revision,
//!   extra bytes), [`SuperBlock::size_bytes`] (where the first needle starts),
//!   [`SuperBlock::encode`].
//! - [`needle`]: [`needle::NeedleHeader`] (cookie u32, id u64, size i32),
//!   [`needle::record_size_bytes`]`(Version, size: u32) -> u64` (header, body,
//!   CRC, v3 timestamp, 1..=8 bytes of padding),
//!   [`needle::NeedleRecord::parse`]`(&record, Version)` borrowing data, flags,
//!   name, mime, last_modified, ttl, pairs, stored checksum, append_at_ns;
//!   `check(id, cookie)` / `check_indexed(id, cookie, index_size)` with
//!   [`FormatError::IdMismatch`], [`FormatError::CookieMismatch`],
//!   [`FormatError::SizeMismatch`], [`FormatError::CrcMismatch`];
//!   `is_gzipped()`. For range reads, [`needle::check_header`]`(prefix,
//!   version, id, cookie, index_size) -> Result<DataSpan>` needs only the first
//!   [`needle::CHECK_HEADER_PREFIX_SIZE_BYTES`] (20) bytes of the record.
//! - [`crc`]: CRC-32C; raw and legacy (`((c >> 15 | c << 17) + 0xa282ead8)`) forms.
//! - [`index`]: [`index::OffsetWidth`] (16- or 17-byte entries),
//!   [`index::IndexEntry`], [`index::NeedleIndex`] (replay; `apply(&[u8])` for
//!   appended tails, reporting a partial trailing entry; `load_file` for a
//!   whole file, failing on one).
//! - [`file_id`]: [`file_id::FileId`] with `FromStr`/`Display` as SeaweedFS
//!   (`3,01637037d6`), plus `parse_url_path` for `.ext` and `_delta` forms.
//! - [`volume`]: [`volume::LocalVolume`] (`open`, `locate`, `refresh_index`,
//!   `read_record`, `read_checked`) and [`volume::scan`] over every record.
//! - [`volume_info`]: the `.vif` beside a volume ([`volume_info::VolumeInfo`]: index offset
//!   width, version, remote files) and [`volume_info::check_beside`] against what a reader assumes.
//! - [`needle::NeedleMeta`]: flags, TTL and append time of a record (from the whole record or
//!   from the bytes after its data, for range reads), with `is_expired` as the volume server
//!   decides it.
//! - [`writer`]: [`writer::encode_needle`]`(Version, &NeedleSpec) -> Result<Vec<u8>>`
//!   and [`writer::VolumeWriter`] (version 3 `.dat` + `.idx`).
//! - [`generate`]: seeded synthetic volumes (the `volgen` tool's logic).
//!
//! # Errors
//!
//! Byte-level problems are [`FormatError`] (offsets relative to the parsed
//! slice). File-level wrappers ([`volume::VolumeError`], [`index::IndexError`],
//! [`writer::WriteError`]) name the file and the byte offset in one sentence.
//! No parser panics on any input, and every loop is bounded by its input.
//!
//! # Format notes that are easy to get wrong
//!
//! - Padding is `8 - (unpadded % 8)`: a record already aligned gets 8 bytes.
//!   The padding bytes are stale scratch bytes in SeaweedFS's writer: for
//!   version 3, the big-endian size then zeros (see `needle` module docs).
//! - Version 2/3 needles with empty data store only the header (size 0): that
//!   is what a deletion appends to the `.dat`, with a size -1 `.idx` entry.
//! - Index replay follows SeaweedFS's memory needle map: a non-zero offset and
//!   a size >= 0 set (size 0 is a live empty file), anything else deletes.
//! - 5-byte offsets are the 4-byte big-endian low part followed by the high byte.
//! - Version 1 super blocks ignore the extra-size field.
//! - Needle id 0 formats as a file id SeaweedFS cannot parse back.

pub mod crc;
pub mod error;
pub mod file_id;
pub mod generate;
pub mod index;
pub mod needle;
pub mod superblock;
pub mod ttl;
pub mod version;
pub mod volume;
pub mod volume_info;
pub mod writer;

pub use error::FormatError;
pub use superblock::SuperBlock;
pub use version::Version;
