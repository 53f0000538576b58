//! The remote transport a read role was started with: the stream transport (our protocol over
//! TCP, the default without an RDMA NIC) or UCX (one-sided gets, for verbs). Both have the
//! shape of every asynchronous transport; this enum is the one place the rest of the read path
//! tells them apart (the completion's source, the floor benchmark's UCX objects).

use std::net::SocketAddr;
use std::ptr::NonNull;

use shm_layout::entry::{cqe_flags, ErrorCode, NeedleRead};

use super::ReadResult;
use crate::rdma::remote::{PeerStatus, RemoteReads};
use crate::stream::reader::StreamReads;

/// One remote transport.
#[derive(Debug)]
pub enum Remote {
    Stream(StreamReads),
    Ucx(RemoteReads),
}

/// Calls the same method on whichever transport it is.
macro_rules! either {
    ($self:expr, $transport:ident => $call:expr) => {
        match $self {
            Remote::Stream($transport) => $call,
            Remote::Ucx($transport) => $call,
        }
    };
}

/// Why adding a peer failed (one sentence for the log).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AddPeerError(String);

impl Remote {
    /// The completion source of reads this transport served.
    pub fn source(&self) -> u32 {
        match self {
            Remote::Stream(_) => cqe_flags::SOURCE_STREAM,
            Remote::Ucx(_) => cqe_flags::SOURCE_RDMA,
        }
    }

    /// The name in the start-up report and the logs.
    pub fn name(&self) -> &'static str {
        match self {
            Remote::Stream(_) => "stream",
            Remote::Ucx(_) => "ucx",
        }
    }

    pub fn in_flight(&self) -> usize {
        either!(self, transport => transport.in_flight())
    }

    /// Bytes of remote indexes cached: none on the stream transport (the exporter looks
    /// needles up), the budgeted cache on UCX.
    pub fn index_bytes(&self) -> usize {
        match self {
            Remote::Stream(_) => 0,
            Remote::Ucx(transport) => transport.index_bytes(),
        }
    }

    /// Whether the poller must keep progressing this transport rather than sleep: UCX while
    /// gets are in flight or an exporter connects (its progress is what moves them); the
    /// stream transport only while an exporter connects or a reply is half received (its
    /// other reads in flight wake the poller through the socket watch).
    pub fn needs_polling(&self) -> bool {
        match self {
            Remote::Stream(transport) => transport.needs_polling(),
            Remote::Ucx(transport) => transport.in_flight() > 0 || transport.connecting(),
        }
    }

    /// The poller is about to sleep (see [`StreamReads::prepare_sleep`]): `true` when it must
    /// not.
    pub fn prepare_sleep(&self) -> bool {
        match self {
            Remote::Stream(transport) => transport.prepare_sleep(),
            Remote::Ucx(_) => false,
        }
    }

    pub fn progress(&mut self) {
        either!(self, transport => transport.progress())
    }

    pub fn poll_completion(&mut self) -> Option<(u64, ReadResult)> {
        either!(self, transport => transport.poll_completion())
    }

    pub fn cancel(&mut self, token: u64) -> bool {
        either!(self, transport => transport.cancel(token))
    }

    pub fn start_read(
        &mut self,
        token: u64,
        region_id: u64,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        at: Option<SocketAddr>,
    ) -> Result<(), (ErrorCode, u64)> {
        either!(self, transport => transport.start_read(token, region_id, read, buffer, at))
    }

    pub fn serves(&self, volume_id: u32) -> bool {
        either!(self, transport => transport.serves(volume_id))
    }

    pub fn serves_up(&self, volume_id: u32) -> bool {
        either!(self, transport => transport.serves_up(volume_id))
    }

    pub fn serves_at(&self, volume_id: u32, address: SocketAddr) -> bool {
        either!(self, transport => transport.serves_at(volume_id, address))
    }

    pub fn peer_status(&self, address: SocketAddr) -> Option<PeerStatus> {
        either!(self, transport => transport.peer_status(address))
    }

    pub fn add_peer(&mut self, address: SocketAddr) -> Result<(), AddPeerError> {
        either!(self, transport => transport.add_peer(address).map_err(|error| AddPeerError(error.to_string())))
    }

    pub fn peer_counts(&self) -> (usize, usize) {
        either!(self, transport => transport.peer_counts())
    }

    pub fn peer_generations(&self) -> Vec<(SocketAddr, u64)> {
        either!(self, transport => transport.peer_generations().collect())
    }

    pub fn refresh_catalogues(&mut self) {
        either!(self, transport => transport.refresh_catalogues())
    }

    /// Registers (UCX) or records (stream) a client's buffer area as a read destination.
    ///
    /// # Safety
    /// `base..base + length_bytes` must stay mapped and writable until
    /// [`Remote::release_buffer_area`] returned true for `region_id`.
    pub unsafe fn register_buffer_area(
        &mut self,
        region_id: u64,
        base: NonNull<u8>,
        length_bytes: u64,
    ) -> Result<(), String> {
        match self {
            Remote::Stream(transport) => {
                transport.register_buffer_area(region_id, base, length_bytes).map_err(|error| error.to_string())
            }
            // SAFETY: the caller's contract is the transport's.
            Remote::Ucx(transport) => unsafe { transport.register_buffer_area(region_id, base, length_bytes) }
                .map_err(|error| error.to_string()),
        }
    }

    pub fn release_buffer_area(&mut self, region_id: u64) -> bool {
        either!(self, transport => transport.release_buffer_area(region_id))
    }
}
