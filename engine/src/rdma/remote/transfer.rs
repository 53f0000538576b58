//! A remote file range fetched into local memory with gets: what reads and index pulls share.

use shm_layout::entry::ErrorCode;
use ucx::{Endpoint, GetStarted, MemoryRegion};

use super::peer::RemoteFile;

/// Most gets one read (or index pull) keeps in flight; a record spanning more registered pieces
/// is fetched in rounds.
pub const GETS_PER_TRANSFER_MAX: u32 = 4;

/// A remote file range being fetched into local memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Transfer {
    pub(super) remote_offset: u64,
    pub(super) length_bytes: u64,
    /// Bytes for which gets were posted (or completed in place).
    pub(super) posted_bytes: u64,
    pub(super) destination: *mut u8,
}

impl Transfer {
    pub(super) const EMPTY: Transfer =
        Transfer { remote_offset: 0, length_bytes: 0, posted_bytes: 0, destination: std::ptr::null_mut() };

    /// A transfer of `length_bytes` from `remote_offset` into `destination`, nothing posted.
    pub(super) fn new(remote_offset: u64, length_bytes: u64, destination: *mut u8) -> Transfer {
        Transfer { remote_offset, length_bytes, posted_bytes: 0, destination }
    }

    pub(super) fn posted_all(&self) -> bool {
        self.posted_bytes >= self.length_bytes
    }
}

/// Posts gets for the rest of `transfer` from `file`, each inside one registered piece and at
/// most `get_max_bytes` long (a large read is fetched in several gets at once: over UCX's tcp
/// transport one get is one stream), while fewer than [`GETS_PER_TRANSFER_MAX`] are pending.
/// Gets that UCX finished in place count as done. `local` names the registration holding a
/// destination range, if known.
pub(super) fn post_gets<'a>(
    endpoint: &Endpoint,
    file: &RemoteFile,
    transfer: &mut Transfer,
    gets_pending: &mut u32,
    (token, get_max_bytes): (u64, u64),
    local: impl Fn(*mut u8, u64) -> Option<&'a MemoryRegion>,
) -> Result<(), ErrorCode> {
    // Bounded: each pass posts at least one byte or returns.
    while *gets_pending < GETS_PER_TRANSFER_MAX && !transfer.posted_all() {
        let offset = transfer.remote_offset + transfer.posted_bytes;
        let end = transfer.remote_offset + transfer.length_bytes;
        if end > file.length_bytes {
            return Err(ErrorCode::CORRUPT_NEEDLE);
        }
        let piece = file.piece_at(offset).ok_or(ErrorCode::CORRUPT_NEEDLE)?;
        let length = (end - offset).min(piece.file_offset + piece.length_bytes - offset).min(get_max_bytes.max(1));
        let destination = transfer.destination.wrapping_add(transfer.posted_bytes as usize);
        let remote_address = piece.address + (offset - piece.file_offset);
        // SAFETY: the destination lies in memory that stays valid until the get completes: a
        // registered client area (the caller checked the range; the area is not released while
        // the read is in flight), a peer's staging buffer or the scratch (owned by RemoteReads,
        // which closes every endpoint before they drop). The remote range lies inside one piece
        // and below the file length the catalogue announced.
        let started = unsafe {
            endpoint.get_nbx(
                destination,
                length as usize,
                remote_address,
                &piece.rkey,
                local(destination, length),
                token,
            )
        };
        match started {
            Ok(GetStarted::InFlight) => *gets_pending += 1,
            Ok(GetStarted::Completed) => {}
            // The endpoint failed, or UCX failed the get at once: a peer that just died can
            // fail `ucp_get_nbx` (connection reset) before its error callback has run.
            Err(ucx::Error::EndpointFailed(_) | ucx::Error::Ucx { .. }) => return Err(ErrorCode::PEER_UNAVAILABLE),
            // Our own refusals (in-flight bound, foreign rkey, destination outside the region).
            Err(error) => {
                tracing::debug!(%error, "get refused");
                return Err(ErrorCode::IO_ERROR);
            }
        }
        transfer.posted_bytes += length;
    }
    Ok(())
}
