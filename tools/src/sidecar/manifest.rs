//! Chunk manifests: a needle flagged as one holds JSON naming the needles
//! (chunks) a large file was split into. The volume server answers a GET
//! of it with the chunks' content in offset order (unless `?cm=false`);
//! the sidecar reads every chunk through the engine the same way.

use rdma_client::reader::content::{self, ReadError, SubmitRead, MAX_DECOMPRESSED_BYTES};
use volume_format::file_id::FileId;

/// One chunk as the manifest lists it (SeaweedFS's `ChunkInfo`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Chunk {
    pub fid: String,
    #[serde(default)]
    pub offset: i64,
    #[serde(default)]
    pub size: i64,
}

/// SeaweedFS's `ChunkManifest`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mime: String,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

/// The manifest in a needle's data (gunzipped first when stored gzipped),
/// chunks sorted by offset; `None` when it is not one (the volume server
/// then serves the needle as stored).
pub fn load(data: &[u8], gzipped: bool) -> Option<Manifest> {
    let json = match gzipped && content::is_gzip(data) {
        true => content::gunzip(data).ok()?,
        false => data.to_vec(),
    };
    let mut manifest: Manifest = serde_json::from_slice(&json).ok()?;
    manifest.chunks.sort_by_key(|chunk| chunk.offset);
    Some(manifest)
}

/// The file's content: each chunk's served bytes, `size` of them, in order.
pub fn assemble(reader: &mut dyn SubmitRead, manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    let total: i64 = manifest.chunks.iter().map(|chunk| chunk.size.max(0)).sum();
    if total as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(ManifestError::TooLarge { total_bytes: total as u64 });
    }
    let mut content = Vec::with_capacity(total as usize);
    for chunk in &manifest.chunks {
        let file_id: FileId = chunk.fid.parse().map_err(|_| ManifestError::BadChunkId { fid: chunk.fid.clone() })?;
        let read = content::read_content(reader, file_id, None)
            .map_err(|error| ManifestError::Chunk { fid: chunk.fid.clone(), error })?;
        let size = chunk.size.max(0) as usize;
        if read.data.len() < size {
            return Err(ManifestError::ShortChunk { fid: chunk.fid.clone(), size, found: read.data.len() });
        }
        content.extend_from_slice(&read.data[..size]);
    }
    Ok(content)
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the chunk manifest names {total_bytes} bytes, more than the {MAX_DECOMPRESSED_BYTES} served at once")]
    TooLarge { total_bytes: u64 },
    #[error("the chunk manifest names chunk {fid:?}, which is not a file id")]
    BadChunkId { fid: String },
    #[error("chunk {fid} of the manifest cannot be read: {error}")]
    Chunk { fid: String, error: ReadError },
    #[error("chunk {fid} has {found} bytes, the manifest says {size}")]
    ShortChunk { fid: String, size: usize, found: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_and_sort() {
        let json = br#"{"name":"big.bin","mime":"application/x-big","size":6,
            "chunks":[{"fid":"3,02aa000000","offset":3,"size":3},{"fid":"3,01aa000000","offset":0,"size":3}]}"#;
        let manifest = load(json, false).unwrap();
        assert_eq!(manifest.name, "big.bin");
        let order: Vec<i64> = manifest.chunks.iter().map(|chunk| chunk.offset).collect();
        assert_eq!(order, vec![0, 3]);
        assert!(load(b"not json", false).is_none());
    }
}
