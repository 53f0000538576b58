//! Turning one request into the bytes of its reply. The exporter finds the needle in its own
//! index, reads the record's prefix and checks the header (id, size, and the cookie: no byte
//! of a needle leaves for a reader that does not know its cookie), runs the read's phases with
//! the one fetch machine (`read::fetch`), and says which bytes of the `.dat` follow. Every
//! range it sends lies inside the record the index names, inside the file's current length.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use shm_layout::entry::{ErrorCode, NeedleRead};
use zerocopy::IntoBytes;

use super::super::wire::{kind, ReadRequest, Reply, REPLY_HEADER_BYTES};
use super::super::COPY_DATA_MAX_BYTES;
use crate::read::check::{check_range_prefix, CHECK_HEADER_PREFIX_SIZE_BYTES};
use crate::read::fetch::{Into, NeedleFetch, Piece, Step, SCRATCH_BYTES};
use crate::read::local::LocalVolumes;
use volume_format::needle::record_size_bytes;

/// Bytes of a `.dat` sent after a reply's leading bytes.
#[derive(Debug)]
pub(super) struct FileRange {
    pub file: Arc<File>,
    pub offset: u64,
    pub length: u64,
}

/// One reply, as it waits to be sent.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// The header, the check bytes and (short data) the data itself.
    pub bytes: Vec<u8>,
    /// Long data, sent from the file after `bytes`.
    pub file: Option<FileRange>,
}

impl Outgoing {
    pub fn message(bytes: &[u8]) -> Outgoing {
        Outgoing { bytes: bytes.to_vec(), file: None }
    }

    /// Every byte of the reply.
    pub fn length_bytes(&self) -> u64 {
        self.bytes.len() as u64 + self.file.as_ref().map_or(0, |range| range.length)
    }
}

/// The reply to a READ. A check that fails on a volume whose files were replaced meanwhile (a
/// compaction) is tried once more on the new files.
pub(super) fn answer_read(volumes: &mut LocalVolumes, request: &ReadRequest, now: Instant) -> Outgoing {
    let answer = match resolve(volumes, request, now) {
        Err((code, _)) if is_stale(code) && volumes.refresh_if_replaced(request.volume_id) => {
            resolve(volumes, request, now)
        }
        answer => answer,
    };
    answer.unwrap_or_else(|(code, aux)| {
        Outgoing::message(Reply::read_error(request.token, code, aux).encode().as_bytes())
    })
}

/// The reply to a VOLUMES request: every volume served, and the exporter's generation of that
/// list.
pub(super) fn answer_volumes(volumes: &LocalVolumes, token: u64, generation: u64) -> Outgoing {
    let ids: Vec<u32> = volumes.volume_ids().take(super::super::wire::VOLUMES_MAX as usize).collect();
    let reply = Reply {
        kind: kind::VOLUMES,
        token,
        status: Ok(()),
        aux: generation,
        version: 0,
        index_size: 0,
        check_length: 0,
        data_length: (ids.len() * 4) as u32,
    };
    let mut bytes = Vec::with_capacity(REPLY_HEADER_BYTES + ids.len() * 4);
    bytes.extend_from_slice(reply.encode().as_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    Outgoing { bytes, file: None }
}

fn is_stale(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::COOKIE_MISMATCH | ErrorCode::CORRUPT_NEEDLE | ErrorCode::IO_ERROR)
}

/// Looks the needle up, checks its header (id, size, cookie) before anything else, and runs
/// the read's phases; the reply or the code to answer with.
fn resolve(volumes: &mut LocalVolumes, request: &ReadRequest, now: Instant) -> Result<Outgoing, (ErrorCode, u64)> {
    let (location, version, file) = volumes.locate_shared(request.volume_id, request.needle_id, now)?;
    let read = NeedleRead {
        volume_id: request.volume_id,
        needle_id: request.needle_id,
        cookie: request.cookie,
        buffer_offset: 0,
        buffer_length: request.max_bytes,
        range: request.range,
    };
    // The header first, whatever the read: not even the needle's size (BUFFER_TOO_SMALL
    // says it) goes to a peer that does not know its cookie.
    let mut scratch = [0u8; SCRATCH_BYTES];
    let prefix_length = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(record_size_bytes(version, location.size)) as usize;
    let prefix = &mut scratch[..prefix_length];
    file.read_exact_at(prefix, location.offset_bytes).map_err(|_| (ErrorCode::IO_ERROR, 0))?;
    check_range_prefix(prefix, version, request.needle_id, request.cookie, location.size).map_err(|code| (code, 0))?;
    let (mut fetch, mut step) = NeedleFetch::begin(&read, version, location.offset_bytes, location.size);
    // The check bytes, in the order the fetch machine asks for them: (scratch offset, length);
    // at most the prefix and the two pieces after the data.
    let mut check_pieces = [(0usize, 0usize); 3];
    let mut check_count = 0;
    let mut data: Option<Piece> = None;
    // Bounded: a read has at most two phases.
    for _phase in 0..3 {
        let pieces = match step {
            Step::Fetch(pieces) => pieces,
            Step::Done(Ok(_)) => break,
            Step::Done(Err(error)) => return Err(error),
            Step::CheckFailed(code) => return Err((code, 0)),
        };
        for piece in pieces.iter().flatten() {
            match piece.into {
                Into::Buffer => data = Some(*piece),
                Into::Scratch(offset) => {
                    let length = piece.length_bytes as usize;
                    let destination = scratch.get_mut(offset..offset + length).ok_or((ErrorCode::IO_ERROR, 0))?;
                    file.read_exact_at(destination, piece.file_offset).map_err(|_| (ErrorCode::IO_ERROR, 0))?;
                    let entry = check_pieces.get_mut(check_count).ok_or((ErrorCode::IO_ERROR, 0))?;
                    *entry = (offset, length);
                    check_count += 1;
                }
            }
        }
        step = match fetch.landed_in_scratch(&scratch) {
            Some(step) => step,
            // A whole read: its one piece is the record, whose header was checked above; the
            // reader checks the whole record (CRC included) when it has landed.
            None => break,
        };
    }
    let check_pieces = &check_pieces[..check_count];
    let check_length: usize = check_pieces.iter().map(|&(_, length)| length).sum();
    let data_length = data.map_or(0, |piece| piece.length_bytes);
    let reply = Reply {
        kind: kind::READ,
        token: request.token,
        status: Ok(()),
        aux: 0,
        version: version.as_byte(),
        index_size: location.size,
        check_length: check_length as u32,
        data_length: u32::try_from(data_length).map_err(|_| (ErrorCode::BUFFER_TOO_SMALL, data_length))?,
    };
    let short = data_length <= COPY_DATA_MAX_BYTES;
    let mut bytes =
        Vec::with_capacity(REPLY_HEADER_BYTES + check_length + if short { data_length as usize } else { 0 });
    bytes.extend_from_slice(reply.encode().as_bytes());
    for &(offset, length) in check_pieces {
        bytes.extend_from_slice(&scratch[offset..offset + length]);
    }
    let Some(data) = data.filter(|piece| piece.length_bytes > 0) else { return Ok(Outgoing { bytes, file: None }) };
    if short {
        let start = bytes.len();
        bytes.resize(start + data_length as usize, 0);
        file.read_exact_at(&mut bytes[start..], data.file_offset).map_err(|_| (ErrorCode::IO_ERROR, 0))?;
        return Ok(Outgoing { bytes, file: None });
    }
    // Sent later with sendfile, which stops early at the file's end: refuse now a record that
    // does not lie inside the file (it shrank), rather than break the stream mid-reply.
    let file_length = file.metadata().map_err(|_| (ErrorCode::IO_ERROR, 0))?.len();
    if data.file_offset.checked_add(data_length).is_none_or(|end| end > file_length) {
        return Err((ErrorCode::IO_ERROR, 0));
    }
    Ok(Outgoing { bytes, file: Some(FileRange { file, offset: data.file_offset, length: data_length }) })
}
