//! One whole needle read through the pool, with what the volume server's
//! headers are made of, parsed from the record the engine left in the buffer.
//!
//! A whole-needle read from the local or RDMA path leaves the whole record
//! at the start of the buffer, with the completion's data range inside it:
//! data at offset 16 means a version 1 record, at 20 a version 2 or 3 one.
//! The record is parsed as version 3 then (what SeaweedFS writes today):
//! version 2 differs only in the 8-byte append time after the checksum,
//! which only the TTL check reads. From the HTTP fallback the buffer holds
//! the body alone: the needle has data and its gzip flag, no metadata.

use super::http::Body;
use rdma_client::reader::content::{self, ReadError, ReadKind, SubmitRead, INITIAL_BUFFER_BYTES};
use rdma_client::ReadSource;
use volume_format::file_id::FileId;
use volume_format::needle::NeedleRecord;
use volume_format::version::Version;

/// Needles up to this size are copied out of the shared buffer at once.
const COPY_OUT_BYTES: usize = 64 * 1024;

/// What the record says beyond the data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeedleMeta {
    pub name: Option<String>,
    pub mime: Option<String>,
    /// Seconds since the epoch; 0 when not stored.
    pub last_modified: u64,
    pub pairs: Option<Vec<u8>>,
    /// The CRC as stored (raw or legacy form): the ETag.
    pub checksum: u32,
    pub chunk_manifest: bool,
    /// The needle's TTL passed (SeaweedFS then answers "not found").
    pub expired: bool,
}

/// A needle as read.
#[derive(Debug)]
pub struct Needle {
    /// The stored data (gzip bytes when `gzipped`), still in the shared buffer.
    pub data: Body,
    pub gzipped: bool,
    pub source: ReadSource,
    /// `None` when the source was the HTTP fallback.
    pub meta: Option<NeedleMeta>,
}

/// Reads `file_id` whole and parses its record.
pub fn read_whole(reader: &mut dyn SubmitRead, file_id: FileId) -> Result<Needle, ReadError> {
    let mut read_count = 0;
    let completion = content::read_retrying(reader, file_id, ReadKind::Whole, INITIAL_BUFFER_BYTES, &mut read_count)?;
    let (bytes, range) = content::landed(reader.client(), &completion)?;
    let source = completion.source();
    let meta = match source {
        ReadSource::Local | ReadSource::Rdma | ReadSource::Stream => Some(parse_meta(bytes, range.start)?),
        ReadSource::Http | ReadSource::None => None,
    };
    let gzipped = completion.gzipped();
    // A small needle is copied out so its (1 MiB) buffer is free at once; a
    // large one is sent from the shared buffer, which the answer then holds.
    let data = if range.len() <= COPY_OUT_BYTES {
        Body::Owned(bytes[range].to_vec())
    } else {
        Body::Landed { client: reader.client().clone(), completion, range }
    };
    Ok(Needle { data, gzipped, source, meta })
}

fn parse_meta(record: &[u8], data_offset: usize) -> Result<NeedleMeta, ReadError> {
    let version = if data_offset == 16 { Version::V1 } else { Version::V3 };
    let parsed = NeedleRecord::parse(record, version).map_err(|_| ReadError::BadCompletion)?;
    if parsed.data_offset_in_record != data_offset {
        return Err(ReadError::BadCompletion);
    }
    let text = |bytes: Option<&[u8]>| bytes.filter(|b| !b.is_empty()).map(|b| String::from_utf8_lossy(b).into_owned());
    let last_modified = parsed.last_modified.unwrap_or(0);
    Ok(NeedleMeta {
        name: text(parsed.name),
        mime: text(parsed.mime),
        last_modified,
        pairs: parsed.pairs.map(<[u8]>::to_vec),
        checksum: parsed.stored_checksum,
        chunk_manifest: parsed.is_chunk_manifest(),
        expired: is_expired(&parsed, last_modified),
    })
}

/// SeaweedFS's rule: a needle with a TTL and a last-modified time is gone
/// once its append time plus the TTL has passed.
fn is_expired(parsed: &NeedleRecord<'_>, last_modified: u64) -> bool {
    let Some(ttl) = parsed.ttl else { return false };
    if ttl.seconds() == 0 || last_modified == 0 {
        return false;
    }
    let append_at_ns = parsed.append_at_ns.unwrap_or(0);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    now_ns >= append_at_ns.saturating_add(ttl.seconds() * 1_000_000_000)
}
