//! One exporter as the read role sees it: its connection state, the volumes its catalogue
//! announced (with unpacked rkeys and the cached index), and the index pull in progress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx::{Endpoint, MemoryRegion, RemoteKey};
use volume_format::index::{NeedleIndex, OffsetWidth};
use volume_format::version::Version;

use super::index::IndexJob;
use crate::rdma::catalogue::{from_hex, FileEntry, VolumeEntry, REQUEST_VOLUMES_MAX};
use crate::rdma::staging::RawBuffer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerState {
    /// Not connected; the next attempt is at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// Endpoint created and catalogue asked for since `since`; up when it arrives.
    Connecting {
        since: Instant,
    },
    Up,
}

/// A catalogue request sent and not answered yet.
#[derive(Debug)]
pub(super) struct PendingRequest {
    pub(super) request_id: u64,
    pub(super) sent_at: Instant,
    /// The volumes it named (`None`: all).
    pub(super) volumes: Option<Vec<u32>>,
}

/// A registered piece of an exporter's file, readable through `rkey`.
#[derive(Debug)]
pub(super) struct RemotePiece {
    pub(super) file_offset: u64,
    pub(super) length_bytes: u64,
    pub(super) address: u64,
    pub(super) rkey: RemoteKey,
}

/// A remote file as of one catalogue: no get may reach past `length_bytes`.
#[derive(Debug)]
pub(super) struct RemoteFile {
    pub(super) length_bytes: u64,
    pub(super) pieces: Vec<RemotePiece>,
}

impl RemoteFile {
    fn unpack(endpoint: &Endpoint, entry: &FileEntry) -> Option<RemoteFile> {
        let mut pieces = Vec::with_capacity(entry.pieces.len());
        for piece in &entry.pieces {
            let rkey = RemoteKey::unpack(endpoint, &from_hex(&piece.rkey_hex)?).ok()?;
            pieces.push(RemotePiece {
                file_offset: piece.file_offset,
                length_bytes: piece.length_bytes,
                address: piece.address,
                rkey,
            });
        }
        Some(RemoteFile { length_bytes: entry.length_bytes, pieces })
    }

    /// The piece holding file offset `offset` (pieces are sorted and contiguous: validated).
    pub(super) fn piece_at(&self, offset: u64) -> Option<&RemotePiece> {
        let index = self.pieces.partition_point(|piece| piece.file_offset + piece.length_bytes <= offset);
        self.pieces.get(index).filter(|piece| piece.file_offset <= offset)
    }
}

/// Both files of a volume, as of one catalogue. Reads and index pulls hold an `Rc` while
/// their gets are in flight, so the rkeys they use outlive them.
#[derive(Debug)]
pub(super) struct VolumeFiles {
    pub(super) dat: RemoteFile,
    pub(super) idx: RemoteFile,
}

#[derive(Debug)]
pub(super) struct RemoteVolume {
    pub(super) generation: u64,
    pub(super) version: Version,
    /// `None` while the peer is down (the rkeys died with the endpoint).
    pub(super) files: Option<Rc<VolumeFiles>>,
    pub(super) index: NeedleIndex,
    /// The `.idx` length the latest catalogue announced.
    pub(super) index_target_bytes: u64,
    /// The whole index was pulled (and is kept up with the catalogue): reads look needles up
    /// in it. Until then (and again once it is dropped over the budget) they ask the exporter.
    pub(super) index_loaded: bool,
    /// Reads the exporter's lookups answered since the index was last dropped: a volume
    /// read often gets its index pulled ([`super::RemoteConfig::index_pull_after_lookups`]).
    pub(super) lookups: u32,
    /// A pull runs or is wanted: a read waits for the index to catch up with
    /// `index_target_bytes`, or a volume read often is being cached.
    pub(super) index_wanted: bool,
    /// When a read last looked a needle up in it (the reads' clock): the index read least
    /// recently is the first dropped over the budget.
    pub(super) last_read: u64,
}

impl RemoteVolume {
    /// Whether whole entries of the announced `.idx` are not applied yet.
    pub(super) fn index_behind(&self) -> bool {
        self.index.applied_bytes() + self.index.width().entry_size_bytes() as u64 <= self.index_target_bytes
    }
}

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) address: SocketAddr,
    pub(super) state: PeerState,
    pub(super) backoff: Duration,
    // Field order is drop order: everything holding rkeys goes before the endpoint, and the
    // staging registration before its buffer.
    pub(super) job: Option<IndexJob>,
    pub(super) volumes: HashMap<u32, RemoteVolume>,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) staging_region: MemoryRegion,
    pub(super) staging: RawBuffer,
    pub(super) next_request_id: u64,
    pub(super) request: Option<PendingRequest>,
    /// Another request is wanted once the one in flight is answered.
    pub(super) request_again: bool,
    /// Volumes the next request names; `wanted_all` asks for every volume.
    pub(super) wanted: Vec<u32>,
    pub(super) wanted_all: bool,
    /// The catalogue generation of the latest catalogue applied (0: none yet).
    pub(super) catalogue_generation: u64,
    /// Connections in a row whose catalogue request went unanswered (0 once connected).
    pub(super) unanswered_handshakes: u32,
}

impl Peer {
    /// A peer not connected yet (first attempt at `now`), with its registered staging buffer.
    pub(super) fn new(
        address: SocketAddr,
        staging: RawBuffer,
        staging_region: MemoryRegion,
        backoff: Duration,
        now: Instant,
    ) -> Peer {
        Peer {
            address,
            state: PeerState::Down { retry_at: now },
            backoff,
            job: None,
            volumes: HashMap::new(),
            endpoint: None,
            staging_region,
            staging,
            next_request_id: 1,
            request: None,
            request_again: false,
            wanted: Vec::with_capacity(REQUEST_VOLUMES_MAX),
            wanted_all: false,
            catalogue_generation: 0,
            unanswered_handshakes: 0,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state == PeerState::Up
    }

    /// Applies one catalogue entry (validated by the caller). `false` when its rkeys do not
    /// unpack (the volume is then dropped).
    pub(super) fn apply_volume(&mut self, entry: &VolumeEntry) -> bool {
        let (Some(endpoint), Ok(version), Some(width)) = (
            self.endpoint.as_ref(),
            Version::from_byte(entry.version),
            OffsetWidth::from_offset_size_bytes(entry.offset_size_bytes),
        ) else {
            return false;
        };
        let (Some(dat), Some(idx)) =
            (RemoteFile::unpack(endpoint, &entry.dat), RemoteFile::unpack(endpoint, &entry.idx))
        else {
            self.volumes.remove(&entry.volume_id);
            return false;
        };
        let files = Some(Rc::new(VolumeFiles { dat, idx }));
        let volume = self.volumes.entry(entry.volume_id).or_insert_with(|| RemoteVolume {
            generation: entry.generation,
            version,
            files: None,
            index: NeedleIndex::new(width),
            index_target_bytes: 0,
            index_loaded: false,
            lookups: 0,
            index_wanted: false,
            last_read: 0,
        });
        let replaced = volume.generation != entry.generation
            || volume.version != version
            || volume.index.width() != width
            || entry.idx.length_bytes < volume.index.applied_bytes();
        if replaced {
            tracing::info!(volume = entry.volume_id, peer = %self.address, "remote volume replaced; dropping its cached index");
            volume.index = NeedleIndex::new(width);
            volume.index_loaded = false;
            volume.lookups = 0;
            volume.generation = entry.generation;
            volume.version = version;
        }
        volume.files = files;
        volume.index_target_bytes = entry.idx.length_bytes;
        true
    }

    /// Asks for `volume_id` in the next catalogue request.
    pub(super) fn want(&mut self, volume_id: u32, limit: usize) {
        if self.wanted_all || self.wanted.contains(&volume_id) {
            return;
        }
        if self.wanted.len() >= limit {
            self.wanted_all = true;
        } else {
            self.wanted.push(volume_id);
        }
    }
}
