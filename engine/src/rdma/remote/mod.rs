//! The read role's UCX transport: needles read with `ucp_get_nbx` from exporters straight into
//! the client's buffer, checked before they complete.
//!
//! [`RemoteReads`] lives on the poller thread (UCX objects are not `Send`: create it there).
//! The poller calls [`RemoteReads::start_read`] for each read of a volume it [`serves`], then
//! [`RemoteReads::progress`] and [`RemoteReads::poll_completion`] in its loop; every started
//! read completes exactly once, within [`RemoteConfig::read_timeout`] of its gets being posted.
//!
//! A read goes through these states (one slot of a table sized at start; nothing is allocated
//! per read):
//!
//! ```text
//!  start ─► lookup in the cached index ─ hit ─► Transfer (gets into the buffer) ─► check ─► Done
//!               │  index behind the catalogue: WaitIndex (pull the .idx tail over RDMA)
//!               │  miss, or record past the known .dat end: WaitCatalogue (once), then lookup
//!               └─ check failed: WaitCatalogue, then lookup and transfer again (once), else fail
//! ```
//!
//! A range read first gets the 20-byte record prefix into the slot's scratch, checks the header
//! and clamps the range (as HTTP does), then gets the range into the buffer (and the flags
//! byte, for the gzip mark).
//!
//! Peers: connected at start (bounded by [`RemoteConfig::connect_timeout`]). An unreachable or
//! failed peer is *down*: reads of its volumes fail at once with `PEER_UNAVAILABLE`, its
//! in-flight gets are completed with errors by a forced endpoint close, and it is reconnected
//! with exponential backoff; its cached indexes are kept and reused when the generation is
//! unchanged. A peer whose gets take longer than `read_timeout` is treated as failed too.
//!
//! [`serves`]: RemoteReads::serves

mod peer;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shm_layout::entry::{ErrorCode, NeedleRead};
use ucx::{CloseMode, Context, Endpoint, ErrorMode, GetStarted, MemoryRegion, RemoteKey, Worker, WorkerConfig};
use volume_format::index::IndexValue;
use volume_format::needle::{flags, record_size_bytes};
use volume_format::version::{Version, NEEDLE_HEADER_SIZE_BYTES};

use self::peer::{IndexJob, Peer, PeerState, PendingRequest, RemoteFile, VolumeFiles};
use super::catalogue::{
    Catalogue, CatalogueRequest, AM_CATALOGUE, AM_CATALOGUE_REQUEST, PROTOCOL_VERSION, REQUEST_VOLUMES_MAX,
};
use super::staging::RawBuffer;
use super::{features, ucx_overrides, REGISTRATION_PIECE_MAX_BYTES};
use crate::read::check::{check_range_prefix, check_whole, clamp_range, CHECK_HEADER_PREFIX_SIZE_BYTES};
pub use crate::read::ReadDone;

/// Most gets one read (or index pull) keeps in flight; a record spanning more registered pieces
/// is fetched in rounds.
pub const GETS_PER_TRANSFER_MAX: u32 = 4;
/// Least `max_in_flight` accepted (the design asks for at least 64 reads per queue pair).
pub const MAX_IN_FLIGHT_MIN: usize = 64;
/// Largest `max_in_flight` accepted.
pub const MAX_IN_FLIGHT_MAX: usize = 1 << 20;
/// Most exporters one engine reads from.
pub const PEERS_MAX: usize = 256;
/// Per-slot scratch of a range read: the record prefix at 0, the flags byte at 24.
const SCRATCH_SLOT_BYTES: usize = 32;
const SCRATCH_FLAGS_OFFSET: usize = 24;
/// How often `progress` scans the table for reads stuck on a hung peer.
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// `ucp_worker_progress` calls per `progress`, at most.
const PROGRESS_ROUNDS_MAX: u32 = 64;
/// How long a forced endpoint close may progress.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Token bit marking an index pull (the low bits are the peer's index).
const JOB_TOKEN_BIT: u64 = 1 << 63;
/// Slot sequence numbers use 31 bits, so slot tokens never have the job bit.
const SEQUENCE_MASK: u32 = 0x7fff_ffff;

/// A read's outcome: what the poller turns into a completion (`read::completion`). The error
/// side carries the buffer size needed for `BUFFER_TOO_SMALL`, else 0.
pub type ReadResult = Result<ReadDone, (ErrorCode, u64)>;

/// The read role's settings, fixed at start.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Exporters to read from (their `--listen` addresses).
    pub peers: Vec<SocketAddr>,
    /// Reads in flight at most (started, completion not yet popped); at least 64.
    pub max_in_flight: usize,
    /// UCX settings (`("TLS", "tcp")`) on top of the `UCX_*` environment.
    pub ucx: Vec<(String, String)>,
    /// How long connecting (until the catalogue arrives) and a catalogue request may take.
    pub connect_timeout: Duration,
    /// How long a read's gets may stay in flight before its peer is declared hung and failed.
    pub read_timeout: Duration,
    /// First reconnect delay after a failure; doubled per failure up to the maximum.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Staging buffer per peer for index pulls; pulls go in chunks of this size.
    pub index_chunk_bytes: usize,
}

impl RemoteConfig {
    pub fn new(peers: Vec<SocketAddr>) -> RemoteConfig {
        RemoteConfig {
            peers,
            max_in_flight: 256,
            ucx: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            index_chunk_bytes: 1 << 20,
        }
    }

    fn validate(&self) -> Result<(), RemoteError> {
        let fail = |reason: String| Err(RemoteError::Config(reason));
        if !(MAX_IN_FLIGHT_MIN..=MAX_IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return fail(format!("max_in_flight must be in {MAX_IN_FLIGHT_MIN}..={MAX_IN_FLIGHT_MAX}"));
        }
        if self.peers.len() > PEERS_MAX {
            return fail(format!("at most {PEERS_MAX} peers"));
        }
        if self.index_chunk_bytes < 4096 || self.index_chunk_bytes > 64 << 20 {
            return fail("index_chunk_bytes must be in 4 KiB..=64 MiB".into());
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() || self.reconnect_backoff_min.is_zero() {
            return fail("timeouts and backoff must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote read configuration: {0}")]
    Config(String),
    #[error("UCX setup for the read role failed: {0}")]
    Ucx(#[from] ucx::Error),
    #[error("buffer area {0} is already registered")]
    AreaExists(u64),
}

/// A remote file range being fetched into local memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    remote_offset: u64,
    length_bytes: u64,
    /// Bytes for which gets were posted (or completed in place).
    posted_bytes: u64,
    destination: *mut u8,
}

impl Transfer {
    const EMPTY: Transfer =
        Transfer { remote_offset: 0, length_bytes: 0, posted_bytes: 0, destination: std::ptr::null_mut() };

    fn posted_all(&self) -> bool {
        self.posted_bytes >= self.length_bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for a catalogue answer with request id `after_request` or later.
    WaitCatalogue {
        after_request: u64,
    },
    WaitIndex,
    Transfer,
    /// Finished; the completion waits in `done`.
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Whole { record_size_bytes: u64 },
    RangePrefix,
    RangeData { length_bytes: u64, flags_wanted: bool },
}

/// One read in flight.
#[derive(Debug)]
struct Slot {
    /// Bumped when the slot is freed; part of the get tokens (31 bits).
    sequence: u32,
    state: SlotState,
    token: u64,
    region_id: u64,
    read: NeedleRead,
    buffer: *mut u8,
    peer: usize,
    version: Version,
    location: IndexValue,
    /// The catalogue was asked again for this read (index miss or stale length): once only.
    refreshed: bool,
    /// A failed check was retried: once only.
    retried: bool,
    phase: Phase,
    transfer: Transfer,
    /// The range read's flags byte: `Some(remote offset)` until its get is posted.
    flags_get: Option<u64>,
    gets_pending: u32,
    get_failed: Option<ErrorCode>,
    canceled: bool,
    /// Pins the rkeys the gets use.
    files: Option<Rc<VolumeFiles>>,
    posted_at: Instant,
    result: ReadResult,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            sequence: 0,
            state: SlotState::Free,
            token: 0,
            region_id: 0,
            read: NeedleRead { volume_id: 0, needle_id: 0, cookie: 0, buffer_offset: 0, buffer_length: 0, range: None },
            buffer: std::ptr::null_mut(),
            peer: 0,
            version: Version::V3,
            location: IndexValue { offset_bytes: 0, size: 0 },
            refreshed: false,
            retried: false,
            phase: Phase::RangePrefix,
            transfer: Transfer::EMPTY,
            flags_get: None,
            gets_pending: 0,
            get_failed: None,
            canceled: false,
            files: None,
            posted_at: now,
            result: Err((ErrorCode::IO_ERROR, 0)),
        }
    }

    fn get_token(&self, index: usize) -> u64 {
        (u64::from(self.sequence) << 32) | index as u64
    }
}

/// A client's buffer area registered for gets.
#[derive(Debug)]
struct Area {
    // Field order: the registrations drop before anything else of the area.
    regions: Vec<MemoryRegion>,
    base: usize,
    length_bytes: u64,
    /// Reads started into this area whose completion has not been produced.
    reads_in_flight: usize,
}

impl Area {
    fn contains(&self, pointer: *mut u8, length: u64) -> bool {
        let start = pointer as usize;
        start >= self.base && (start - self.base) as u64 + length <= self.length_bytes
    }

    /// The registration holding all of `pointer..pointer + length`, if one does.
    fn region_for(&self, pointer: *mut u8, length: u64) -> Option<&MemoryRegion> {
        let offset = (pointer as usize).checked_sub(self.base)? as u64;
        let region = self.regions.get((offset / REGISTRATION_PIECE_MAX_BYTES) as usize)?;
        let end_in_region = offset % REGISTRATION_PIECE_MAX_BYTES + length;
        (end_in_region <= region.len() as u64).then_some(region)
    }
}

/// What `ucx::floor::bare_get_loop` needs to get from an exported `.dat`, for the benchmark's
/// floor line: register a local buffer on [`RemoteReads::context`] and call the loop with
/// these, while no read is in flight.
#[derive(Debug)]
pub struct FloorTarget<'a> {
    pub worker: &'a Worker,
    pub endpoint: &'a Endpoint,
    pub remote_address: u64,
    pub remote_length: u64,
    pub rkey: &'a RemoteKey,
}

/// The UCX read transport (see the module docs).
pub struct RemoteReads {
    config: RemoteConfig,
    // Field order is drop order: the slots pin rkeys, the peers own endpoints, the areas and
    // the scratch own registrations; UCX itself goes last.
    slots: Box<[Slot]>,
    free_slots: Vec<u32>,
    done: VecDeque<u32>,
    peers: Vec<Peer>,
    areas: HashMap<u64, Area>,
    scratch_region: MemoryRegion,
    scratch: RawBuffer,
    worker: Worker,
    context: Context,
    /// Read once per `progress`; read start times use it.
    now: Instant,
    last_timeout_scan: Instant,
}

impl std::fmt::Debug for RemoteReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReads")
            .field("peers", &self.peers.iter().map(|peer| (peer.address, peer.state)).collect::<Vec<_>>())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl RemoteReads {
    /// Creates the UCX context and worker, sizes every table, connects to every peer and waits
    /// (at most `connect_timeout`) for their catalogues. A peer that does not answer is down,
    /// not an error: it is retried with backoff from `progress`.
    pub fn new(config: RemoteConfig) -> Result<RemoteReads, RemoteError> {
        config.validate()?;
        let context = Context::with_config(features(), &ucx_overrides(&config.ucx))?;
        let gets_max = (config.max_in_flight + config.peers.len()) * GETS_PER_TRANSFER_MAX as usize;
        let worker_config = WorkerConfig {
            max_in_flight: gets_max,
            am_queue_capacity: (config.peers.len() * 4).max(16),
            am_payload_max_bytes: 64 << 20,
        };
        let worker = Worker::new(&context, worker_config)?;
        worker.set_am_handler(AM_CATALOGUE)?;
        let scratch = RawBuffer::new(config.max_in_flight * SCRATCH_SLOT_BYTES);
        // SAFETY: the scratch outlives its registration (field order in RemoteReads).
        let scratch_region = unsafe { MemoryRegion::register(&context, scratch.base(), scratch.len()) }?;
        let now = Instant::now();
        let mut peers = Vec::with_capacity(config.peers.len());
        for &address in &config.peers {
            let staging = RawBuffer::new(config.index_chunk_bytes);
            // SAFETY: the staging buffer outlives its registration (field order in Peer).
            let staging_region = unsafe { MemoryRegion::register(&context, staging.base(), staging.len()) }?;
            peers.push(Peer {
                address,
                state: PeerState::Down { retry_at: now },
                backoff: config.reconnect_backoff_min,
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
            });
        }
        let max_in_flight = config.max_in_flight;
        let mut reads = RemoteReads {
            slots: (0..max_in_flight).map(|_| Slot::new(now)).collect(),
            free_slots: (0..max_in_flight as u32).rev().collect(),
            done: VecDeque::with_capacity(max_in_flight),
            peers,
            areas: HashMap::new(),
            scratch_region,
            scratch,
            worker,
            context,
            now,
            last_timeout_scan: now,
            config,
        };
        for index in 0..reads.peers.len() {
            reads.connect_peer(index);
        }
        let start = Instant::now();
        while start.elapsed() < reads.config.connect_timeout
            && reads.peers.iter().any(|peer| matches!(peer.state, PeerState::Connecting { .. }))
        {
            reads.progress();
        }
        for peer in reads.peers.iter().filter(|peer| !peer.is_up()) {
            tracing::warn!(peer = %peer.address, "exporter not reachable at start; retrying in the background");
        }
        Ok(reads)
    }

    /// The UCX context (to register a local buffer for the floor benchmark).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Registers a client's buffer area (in pieces of at most 1 GiB) as a get destination.
    ///
    /// # Safety
    /// `base..base + length_bytes` must stay mapped and writable until
    /// [`RemoteReads::release_buffer_area`] returned true for `region_id` (or `self` is dropped
    /// with no read in flight): gets land there asynchronously.
    pub unsafe fn register_buffer_area(
        &mut self,
        region_id: u64,
        base: NonNull<u8>,
        length_bytes: u64,
    ) -> Result<(), RemoteError> {
        if self.areas.contains_key(&region_id) {
            return Err(RemoteError::AreaExists(region_id));
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        while offset < length_bytes {
            let piece = (length_bytes - offset).min(REGISTRATION_PIECE_MAX_BYTES);
            // SAFETY: inside the caller's mapping, which outlives the registration (contract).
            let region =
                unsafe { MemoryRegion::register(&self.context, base.as_ptr().add(offset as usize), piece as usize) }?;
            regions.push(region);
            offset += piece;
        }
        self.areas.insert(region_id, Area { regions, base: base.as_ptr() as usize, length_bytes, reads_in_flight: 0 });
        Ok(())
    }

    /// Deregisters an area. `false` while reads into it are in flight (a get can land late):
    /// call again (after `progress`) until true, and only then unmap it. `true` also when the
    /// area is unknown.
    pub fn release_buffer_area(&mut self, region_id: u64) -> bool {
        match self.areas.get(&region_id) {
            Some(area) if area.reads_in_flight > 0 => false,
            _ => {
                self.areas.remove(&region_id);
                true
            }
        }
    }

    /// Whether some exporter announced `volume_id` (it may be down: reads then fail with
    /// `PEER_UNAVAILABLE`).
    pub fn serves(&self, volume_id: u32) -> bool {
        self.route(volume_id).is_some()
    }

    /// Whether a read can start now (the table has a free slot).
    pub fn has_room(&self) -> bool {
        !self.free_slots.is_empty()
    }

    /// Reads started whose completion has not been popped.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Starts a read into `buffer`, the start of the validated range `read` names inside area
    /// `region_id`. `Ok`: exactly one completion with `token` will come from
    /// [`RemoteReads::poll_completion`]. `Err`: nothing was started (unknown area or volume,
    /// table full: check [`RemoteReads::has_room`] first).
    pub fn start_read(
        &mut self,
        token: u64,
        region_id: u64,
        read: &NeedleRead,
        buffer: NonNull<u8>,
    ) -> Result<(), (ErrorCode, u64)> {
        let buffer = buffer.as_ptr();
        let area = self.areas.get(&region_id).ok_or((ErrorCode::BAD_BUFFER, 0))?;
        if !area.contains(buffer, u64::from(read.buffer_length)) {
            return Err((ErrorCode::BAD_BUFFER, 0));
        }
        let peer = self.route(read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        let index = self.free_slots.pop().ok_or((ErrorCode::IO_ERROR, 0))? as usize;
        if let Some(area) = self.areas.get_mut(&region_id) {
            area.reads_in_flight += 1;
        }
        let slot = &mut self.slots[index];
        slot.token = token;
        slot.region_id = region_id;
        slot.read = *read;
        slot.buffer = buffer;
        slot.peer = peer;
        slot.refreshed = false;
        slot.retried = false;
        slot.canceled = false;
        slot.get_failed = None;
        slot.gets_pending = 0;
        slot.flags_get = None;
        slot.state = SlotState::WaitIndex;
        self.advance(index);
        Ok(())
    }

    /// Cancels the read with `token`: one that waits for metadata completes with `CANCELED` at
    /// once; one whose gets are in flight completes with `CANCELED` when they have landed (the
    /// buffer stays the engine's until then). `false` when no such read is in flight.
    pub fn cancel(&mut self, token: u64) -> bool {
        let Some(index) = self
            .slots
            .iter()
            .position(|slot| slot.token == token && !matches!(slot.state, SlotState::Free | SlotState::Done))
        else {
            return false;
        };
        match self.slots[index].state {
            SlotState::Transfer => self.slots[index].canceled = true,
            _ => self.finish(index, Err((ErrorCode::CANCELED, 0))),
        }
        true
    }

    /// The next finished read: its token and outcome. Every byte of a success passed the
    /// needle check.
    pub fn poll_completion(&mut self) -> Option<(u64, ReadResult)> {
        let index = self.done.pop_front()? as usize;
        let slot = &mut self.slots[index];
        let completion = (slot.token, slot.result);
        slot.state = SlotState::Free;
        slot.sequence = slot.sequence.wrapping_add(1) & SEQUENCE_MASK;
        self.free_slots.push(index as u32);
        Some(completion)
    }

    /// Drives UCX and everything waiting on it: completions, catalogue answers, peer failures,
    /// reconnects and read timeouts. Call it in the poll loop while `in_flight() > 0`, and now
    /// and then when idle (reconnects).
    pub fn progress(&mut self) {
        self.now = Instant::now();
        for _ in 0..PROGRESS_ROUNDS_MAX {
            if self.worker.progress() == 0 {
                break;
            }
        }
        self.drain_completions();
        while let Some(message) = self.worker.pop_am_message() {
            self.on_message(message);
        }
        self.check_peers();
        if self.now.duration_since(self.last_timeout_scan) >= TIMEOUT_SCAN_INTERVAL {
            self.last_timeout_scan = self.now;
            self.fail_hung_peers();
        }
    }

    /// Where the benchmark's floor can get from volume `volume_id`'s `.dat`: its first
    /// registered piece (at most 1 GiB).
    pub fn floor_target(&self, volume_id: u32) -> Option<FloorTarget<'_>> {
        let peer = &self.peers[self.route(volume_id)?];
        let files = peer.volumes.get(&volume_id)?.files.as_ref()?;
        let piece = files.dat.pieces.first()?;
        Some(FloorTarget {
            worker: &self.worker,
            endpoint: peer.endpoint.as_ref()?,
            remote_address: piece.address,
            remote_length: piece.length_bytes.min(files.dat.length_bytes),
            rkey: &piece.rkey,
        })
    }

    /// Whether peer `address` is connected with its catalogue (for tests and status).
    pub fn peer_is_up(&self, address: SocketAddr) -> bool {
        self.peers.iter().any(|peer| peer.address == address && peer.is_up())
    }

    // ----- routing and the read state machine -----

    /// The peer to read `volume_id` from: the first that is up and has it, else the first that
    /// has it.
    fn route(&self, volume_id: u32) -> Option<usize> {
        let has = |peer: &Peer| peer.volumes.contains_key(&volume_id);
        self.peers.iter().position(|peer| peer.is_up() && has(peer)).or_else(|| self.peers.iter().position(has))
    }

    /// Moves a slot on from lookup: to a transfer, a wait, or its end.
    fn advance(&mut self, index: usize) {
        let slot = &self.slots[index];
        let (peer_index, volume_id, needle_id) = (slot.peer, slot.read.volume_id, slot.read.needle_id);
        let peer = &mut self.peers[peer_index];
        if !peer.is_up() {
            return self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        }
        let Some(volume) = peer.volumes.get_mut(&volume_id) else {
            return self.finish(index, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
        };
        let Some(files) = volume.files.clone() else {
            return self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        };
        if volume.index_behind() {
            volume.index_wanted = true;
            self.slots[index].state = SlotState::WaitIndex;
            return self.pump_index(peer_index);
        }
        let version = volume.version;
        match volume.index.get(needle_id) {
            Some(location) => self.begin_transfer(index, location, version, files),
            None if !self.slots[index].refreshed => {
                self.slots[index].refreshed = true;
                self.wait_catalogue(index);
            }
            None => self.finish(index, Err((ErrorCode::NO_SUCH_NEEDLE, 0))),
        }
    }

    fn begin_transfer(&mut self, index: usize, location: IndexValue, version: Version, files: Rc<VolumeFiles>) {
        let record_size = record_size_bytes(version, location.size);
        let slot = &mut self.slots[index];
        let past_end = location.offset_bytes.checked_add(record_size).is_none_or(|end| end > files.dat.length_bytes);
        if past_end {
            // The index is newer than the .dat length we know, or it is corrupt: ask once.
            if slot.refreshed {
                return self.finish(index, Err((ErrorCode::CORRUPT_NEEDLE, 0)));
            }
            slot.refreshed = true;
            return self.wait_catalogue(index);
        }
        let buffer_length = u64::from(slot.read.buffer_length);
        let (phase, transfer) = match slot.read.range {
            // A stale index (volume replaced) can claim another size: ask once before saying so.
            None if record_size > buffer_length && !slot.refreshed => {
                slot.refreshed = true;
                return self.wait_catalogue(index);
            }
            None if record_size > buffer_length => {
                return self.finish(index, Err((ErrorCode::BUFFER_TOO_SMALL, record_size)));
            }
            None => (
                Phase::Whole { record_size_bytes: record_size },
                Transfer {
                    remote_offset: location.offset_bytes,
                    length_bytes: record_size,
                    posted_bytes: 0,
                    destination: slot.buffer,
                },
            ),
            Some(_) => {
                let length_bytes = (CHECK_HEADER_PREFIX_SIZE_BYTES as u64).min(record_size);
                let destination = self.scratch.at(index * SCRATCH_SLOT_BYTES);
                (
                    Phase::RangePrefix,
                    Transfer { remote_offset: location.offset_bytes, length_bytes, posted_bytes: 0, destination },
                )
            }
        };
        slot.version = version;
        slot.location = location;
        slot.phase = phase;
        slot.transfer = transfer;
        slot.files = Some(files);
        slot.state = SlotState::Transfer;
        slot.posted_at = self.now;
        self.post_slot(index);
    }

    /// Posts the slot's remaining gets (bounded per round); finishes the phase when nothing is
    /// left in flight.
    fn post_slot(&mut self, index: usize) {
        let RemoteReads { slots, peers, areas, scratch_region, scratch, .. } = self;
        let slot = &mut slots[index];
        let token = slot.get_token(index);
        let (Some(files), Some(endpoint)) = (slot.files.as_ref(), peers[slot.peer].endpoint.as_ref()) else {
            slot.get_failed.get_or_insert(ErrorCode::PEER_UNAVAILABLE);
            return self.transfer_done(index);
        };
        if let Some(remote_offset) = slot.flags_get.take() {
            let destination = scratch.at(index * SCRATCH_SLOT_BYTES + SCRATCH_FLAGS_OFFSET);
            let mut flag_byte = Transfer { remote_offset, length_bytes: 1, posted_bytes: 0, destination };
            let local = |_: *mut u8, _: u64| Some(&*scratch_region);
            if let Err(code) = post_gets(endpoint, &files.dat, &mut flag_byte, &mut slot.gets_pending, token, local) {
                slot.get_failed.get_or_insert(code);
            }
        }
        if slot.get_failed.is_none() {
            let area = areas.get(&slot.region_id);
            let local = |pointer: *mut u8, length: u64| match area {
                Some(area) if area.contains(pointer, length) => area.region_for(pointer, length),
                _ => Some(&*scratch_region),
            };
            if let Err(code) = post_gets(endpoint, &files.dat, &mut slot.transfer, &mut slot.gets_pending, token, local)
            {
                slot.get_failed.get_or_insert(code);
            }
        }
        if slot.gets_pending == 0 && (slot.transfer.posted_all() || slot.get_failed.is_some()) {
            self.transfer_done(index);
        }
    }

    fn on_slot_get_done(&mut self, index: usize, sequence: u32, ok: bool) {
        let slot = &mut self.slots[index];
        if slot.sequence != sequence || slot.state != SlotState::Transfer || slot.gets_pending == 0 {
            tracing::error!(index, "completion for a slot with no get in flight");
            return;
        }
        slot.gets_pending -= 1;
        if !ok {
            slot.get_failed.get_or_insert(ErrorCode::PEER_UNAVAILABLE);
        }
        if slot.gets_pending > 0 {
            return;
        }
        if slot.get_failed.is_none() && !slot.transfer.posted_all() {
            return self.post_slot(index);
        }
        self.transfer_done(index);
    }

    /// Every get of the current phase has landed: check and move on.
    fn transfer_done(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.canceled {
            return self.finish(index, Err((ErrorCode::CANCELED, 0)));
        }
        if let Some(code) = slot.get_failed {
            return self.finish(index, Err((code, 0)));
        }
        let (read, version, size) = (slot.read, slot.version, slot.location.size);
        match slot.phase {
            Phase::Whole { record_size_bytes } => {
                // SAFETY: the record's gets have all completed into this range of the client's
                // registered, validated buffer; nothing of ours writes it while the slice lives
                // (the client may, which can only make its own read fail the check).
                let record = unsafe { std::slice::from_raw_parts(slot.buffer, record_size_bytes as usize) };
                match check_whole(record, version, read.needle_id, read.cookie, size) {
                    Ok(checked) => self.finish(
                        index,
                        Ok(ReadDone {
                            data_offset_in_buffer: checked.data_offset_in_record,
                            data_length: checked.data_length,
                            gzipped: checked.gzipped,
                        }),
                    ),
                    Err(code) => self.check_failed(index, code),
                }
            }
            Phase::RangePrefix => {
                // SAFETY: the prefix gets into this slot's scratch have all completed.
                let prefix =
                    unsafe { self.scratch.slice(index * SCRATCH_SLOT_BYTES, slot.transfer.length_bytes as usize) };
                let span = match check_range_prefix(prefix, version, read.needle_id, read.cookie, size) {
                    Ok(span) => span,
                    Err(code) => return self.check_failed(index, code),
                };
                let range = read.range.unwrap_or(shm_layout::entry::ByteRange { offset: 0, length: 0 });
                let (offset_in_record, length_bytes) = match clamp_range(&span, range.offset, range.length) {
                    Ok(clamped) => clamped,
                    Err(code) => return self.finish(index, Err((code, 0))),
                };
                if length_bytes > u64::from(read.buffer_length) {
                    return self.finish(index, Err((ErrorCode::BUFFER_TOO_SMALL, length_bytes)));
                }
                // Versions 2 and 3 store a flags byte after the data when the body has room.
                let flags_at = span.data_offset_in_record + span.data_len;
                let flags_wanted = version != Version::V1
                    && span.data_len > 0
                    && flags_at < NEEDLE_HEADER_SIZE_BYTES as u64 + u64::from(size);
                let record_offset = slot.location.offset_bytes;
                slot.flags_get = flags_wanted.then_some(record_offset + flags_at);
                slot.phase = Phase::RangeData { length_bytes, flags_wanted };
                slot.transfer = Transfer {
                    remote_offset: record_offset + offset_in_record,
                    length_bytes,
                    posted_bytes: 0,
                    destination: slot.buffer,
                };
                self.post_slot(index);
            }
            Phase::RangeData { length_bytes, flags_wanted } => {
                // SAFETY: the flags byte's get has completed.
                let flag_byte = unsafe { self.scratch.slice(index * SCRATCH_SLOT_BYTES + SCRATCH_FLAGS_OFFSET, 1) }[0];
                let gzipped = flags_wanted && flag_byte & flags::IS_COMPRESSED != 0;
                self.finish(index, Ok(ReadDone { data_offset_in_buffer: 0, data_length: length_bytes, gzipped }));
            }
        }
    }

    /// A landed needle failed its check: the index or the catalogue may be stale (volume
    /// compacted or replaced). Refresh and retry once; then fail with the check's code.
    fn check_failed(&mut self, index: usize, code: ErrorCode) {
        let slot = &mut self.slots[index];
        if slot.retried {
            return self.finish(index, Err((code, 0)));
        }
        slot.retried = true;
        slot.refreshed = true;
        slot.files = None;
        self.wait_catalogue(index);
    }

    fn finish(&mut self, index: usize, result: ReadResult) {
        let slot = &mut self.slots[index];
        debug_assert_eq!(slot.gets_pending, 0, "a read finished with gets in flight");
        slot.state = SlotState::Done;
        slot.result = result;
        slot.files = None;
        if let Some(area) = self.areas.get_mut(&slot.region_id) {
            area.reads_in_flight = area.reads_in_flight.saturating_sub(1);
        }
        // Bounded: each slot is queued once per use and the queue holds max_in_flight.
        self.done.push_back(index as u32);
    }

    // ----- catalogue requests -----

    fn wait_catalogue(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let peer = &mut self.peers[slot.peer];
        slot.state = SlotState::WaitCatalogue { after_request: peer.next_request_id };
        peer.want(slot.read.volume_id, REQUEST_VOLUMES_MAX);
        let peer_index = slot.peer;
        self.send_request(peer_index);
    }

    /// Sends a catalogue request for the wanted volumes, or remembers to once the one in
    /// flight is answered (one request at a time per peer).
    fn send_request(&mut self, peer_index: usize) {
        let peer = &mut self.peers[peer_index];
        if peer.request.is_some() {
            peer.request_again = true;
            return;
        }
        let Some(endpoint) = peer.endpoint.as_ref() else { return };
        let volumes = if peer.wanted_all { None } else { Some(std::mem::take(&mut peer.wanted)) };
        peer.wanted.clear();
        peer.wanted_all = false;
        let request =
            CatalogueRequest { protocol_version: PROTOCOL_VERSION, request_id: peer.next_request_id, volumes };
        if let Err(error) = endpoint.am_send(AM_CATALOGUE_REQUEST, &[], &request.encode()) {
            tracing::debug!(peer = %peer.address, %error, "cannot send a catalogue request");
        }
        // A failed send is caught by the endpoint's failure or the request's timeout.
        peer.request =
            Some(PendingRequest { request_id: request.request_id, sent_at: self.now, volumes: request.volumes });
        peer.next_request_id += 1;
    }

    fn on_message(&mut self, message: ucx::AmMessage) {
        let Some(peer_index) = self
            .peers
            .iter()
            .position(|peer| peer.endpoint.as_ref().is_some_and(|endpoint| Some(endpoint.id()) == message.endpoint))
        else {
            return;
        };
        let catalogue = match Catalogue::decode(&message.payload) {
            Ok(catalogue) => catalogue,
            Err(error) => {
                tracing::warn!(peer = %self.peers[peer_index].address, %error, "ignoring a bad catalogue");
                return;
            }
        };
        self.apply_catalogue(peer_index, &catalogue);
    }

    fn apply_catalogue(&mut self, peer_index: usize, catalogue: &Catalogue) {
        let backoff_min = self.config.reconnect_backoff_min;
        let peer = &mut self.peers[peer_index];
        let asked = match &peer.request {
            Some(request) if request.request_id == catalogue.request_id => {
                let asked = request.volumes.clone();
                peer.request = None;
                asked
            }
            _ => Some(Vec::new()),
        };
        if matches!(peer.state, PeerState::Connecting { .. }) {
            tracing::info!(peer = %peer.address, volumes = catalogue.volumes.len(), "exporter connected");
            peer.state = PeerState::Up;
            peer.backoff = backoff_min;
        }
        for entry in &catalogue.volumes {
            if let Err(error) = entry.validate() {
                tracing::warn!(peer = %peer.address, %error, "ignoring a catalogue entry");
                peer.volumes.remove(&entry.volume_id);
                continue;
            }
            if !peer.apply_volume(entry) {
                tracing::warn!(peer = %peer.address, volume = entry.volume_id, "cannot unpack a volume's rkeys");
            }
        }
        let listed = |id: &u32| catalogue.volumes.iter().any(|entry| entry.volume_id == *id);
        match asked {
            None if catalogue.complete => peer.volumes.retain(|id, _| listed(id)),
            Some(ids) => ids.iter().filter(|id| !listed(id)).for_each(|id| {
                peer.volumes.remove(id);
            }),
            None => {}
        }
        let again = std::mem::take(&mut peer.request_again);
        // Release the reads that waited for an answer at least this recent.
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.peer == peer_index
                && matches!(slot.state, SlotState::WaitCatalogue { after_request } if after_request <= catalogue.request_id)
            {
                self.advance(index);
            }
        }
        if again {
            self.send_request(peer_index);
        }
        self.pump_index(peer_index);
    }

    // ----- index pulls -----

    /// Starts the next index chunk pull of this peer, if none runs and a read waits for one.
    fn pump_index(&mut self, peer_index: usize) {
        let peer = &mut self.peers[peer_index];
        if !peer.is_up() || peer.job.is_some() {
            return;
        }
        let Some((&volume_id, volume)) = peer
            .volumes
            .iter()
            .find(|(_, volume)| volume.index_wanted && volume.index_behind() && volume.files.is_some())
        else {
            return;
        };
        let Some(files) = volume.files.clone() else { return };
        let start_bytes = volume.index.applied_bytes();
        let length_bytes = (volume.index_target_bytes - start_bytes).min(peer.staging.len() as u64);
        peer.job = Some(IndexJob {
            volume_id,
            generation: volume.generation,
            start_bytes,
            files,
            transfer: Transfer {
                remote_offset: start_bytes,
                length_bytes,
                posted_bytes: 0,
                destination: peer.staging.base(),
            },
            gets_pending: 0,
            failed: false,
        });
        self.post_job(peer_index);
    }

    fn post_job(&mut self, peer_index: usize) {
        let peer = &mut self.peers[peer_index];
        let (Some(job), Some(endpoint)) = (peer.job.as_mut(), peer.endpoint.as_ref()) else { return };
        let token = JOB_TOKEN_BIT | peer_index as u64;
        let staging = &peer.staging_region;
        if post_gets(endpoint, &job.files.idx, &mut job.transfer, &mut job.gets_pending, token, |_, _| Some(staging))
            .is_err()
        {
            job.failed = true;
        }
        if job.gets_pending == 0 && (job.failed || job.transfer.posted_all()) {
            self.job_done(peer_index);
        }
    }

    fn on_job_get_done(&mut self, peer_index: usize, ok: bool) {
        let Some(job) = self.peers.get_mut(peer_index).and_then(|peer| peer.job.as_mut()) else { return };
        job.gets_pending = job.gets_pending.saturating_sub(1);
        job.failed |= !ok;
        if job.gets_pending > 0 {
            return;
        }
        if !job.failed && !job.transfer.posted_all() {
            return self.post_job(peer_index);
        }
        self.job_done(peer_index);
    }

    fn job_done(&mut self, peer_index: usize) {
        let peer = &mut self.peers[peer_index];
        let Some(job) = peer.job.take() else { return };
        let volume_id = job.volume_id;
        let Some(volume) = peer.volumes.get_mut(&volume_id) else { return self.pump_index(peer_index) };
        if job.failed {
            // The peer is failing (its failure handling follows); reads waiting on this index
            // must not wait for it.
            volume.index_wanted = false;
            return self.wake_index_waiters(peer_index, volume_id, Some(ErrorCode::PEER_UNAVAILABLE));
        }
        if volume.generation == job.generation && volume.index.applied_bytes() == job.start_bytes {
            // SAFETY: every get of the chunk into the staging buffer has completed.
            let bytes = unsafe { peer.staging.slice(0, job.transfer.length_bytes as usize) };
            volume.index.apply(bytes);
        }
        if !volume.index_behind() {
            volume.index_wanted = false;
            self.wake_index_waiters(peer_index, volume_id, None);
        }
        self.pump_index(peer_index);
    }

    fn wake_index_waiters(&mut self, peer_index: usize, volume_id: u32, failure: Option<ErrorCode>) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.state == SlotState::WaitIndex && slot.peer == peer_index && slot.read.volume_id == volume_id {
                match failure {
                    Some(code) => self.finish(index, Err((code, 0))),
                    None => self.advance(index),
                }
            }
        }
    }

    // ----- completions, peers, timeouts -----

    fn drain_completions(&mut self) {
        // Bounded: the queue holds at most the worker's in-flight bound.
        while let Some(completion) = self.worker.pop_completion() {
            let ok = completion.status.is_ok();
            if completion.token & JOB_TOKEN_BIT != 0 {
                self.on_job_get_done((completion.token & !JOB_TOKEN_BIT) as usize, ok);
            } else {
                let index = (completion.token & 0xffff_ffff) as usize;
                if index < self.slots.len() {
                    self.on_slot_get_done(index, (completion.token >> 32) as u32, ok);
                }
            }
        }
    }

    fn check_peers(&mut self) {
        let connect_timeout = self.config.connect_timeout;
        for index in 0..self.peers.len() {
            let peer = &self.peers[index];
            let failed = peer.endpoint.as_ref().is_some_and(Endpoint::is_failed);
            let request_late =
                peer.request.as_ref().is_some_and(|request| self.now.duration_since(request.sent_at) > connect_timeout);
            match peer.state {
                PeerState::Down { retry_at } if self.now >= retry_at => self.connect_peer(index),
                PeerState::Down { .. } => {}
                PeerState::Connecting { .. } | PeerState::Up if failed || request_late => self.fail_peer(index),
                _ => {}
            }
        }
    }

    fn fail_hung_peers(&mut self) {
        let read_timeout = self.config.read_timeout;
        let hung = self
            .slots
            .iter()
            .find(|slot| slot.state == SlotState::Transfer && self.now.duration_since(slot.posted_at) > read_timeout)
            .map(|slot| slot.peer);
        if let Some(peer_index) = hung {
            tracing::warn!(peer = %self.peers[peer_index].address, "gets stalled past the read timeout; failing the peer");
            self.fail_peer(peer_index);
        }
    }

    fn connect_peer(&mut self, peer_index: usize) {
        let now = self.now;
        let peer = &mut self.peers[peer_index];
        match Endpoint::connect(&self.worker, peer.address, ErrorMode::Peer) {
            Ok(endpoint) => {
                peer.endpoint = Some(endpoint);
                peer.state = PeerState::Connecting { since: now };
                peer.request = None;
                peer.request_again = false;
                peer.wanted_all = true;
                self.send_request(peer_index);
            }
            Err(error) => {
                tracing::debug!(peer = %peer.address, %error, "cannot connect");
                peer.state = PeerState::Down { retry_at: now + peer.backoff };
                peer.backoff = (peer.backoff * 2).min(self.config.reconnect_backoff_max);
            }
        }
    }

    /// Takes a peer down: its in-flight gets complete with errors (forced close), every read
    /// waiting on it fails with `PEER_UNAVAILABLE`, and a reconnect is scheduled.
    fn fail_peer(&mut self, peer_index: usize) {
        let now = self.now;
        let backoff_max = self.config.reconnect_backoff_max;
        let peer = &mut self.peers[peer_index];
        if matches!(peer.state, PeerState::Up) {
            tracing::warn!(peer = %peer.address, "exporter lost; reads of its volumes fail until it is back");
        }
        peer.state = PeerState::Down { retry_at: now + peer.backoff };
        peer.backoff = (peer.backoff * 2).min(backoff_max);
        peer.request = None;
        peer.request_again = false;
        if let Some(endpoint) = peer.endpoint.take() {
            // Completes the endpoint's in-flight gets (CANCELED) into the completion queue.
            if let Err(error) = endpoint.close_with(CloseMode::Force, CLOSE_TIMEOUT) {
                tracing::debug!(%error, "forced close of a failed endpoint");
            }
        }
        self.drain_completions();
        let peer = &mut self.peers[peer_index];
        for volume in peer.volumes.values_mut() {
            volume.files = None;
            volume.index_wanted = false;
        }
        if peer.job.as_ref().is_some_and(|job| job.gets_pending == 0) {
            peer.job = None;
        }
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.peer == peer_index && matches!(slot.state, SlotState::WaitCatalogue { .. } | SlotState::WaitIndex) {
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            }
        }
    }
}

impl Drop for RemoteReads {
    fn drop(&mut self) {
        // Gets must be finished before the areas are deregistered: close every endpoint
        // (forced: in-flight gets complete with CANCELED) and drain their completions.
        for peer in &mut self.peers {
            if let Some(endpoint) = peer.endpoint.take() {
                let _ = endpoint.close_with(CloseMode::Force, CLOSE_TIMEOUT);
            }
        }
        self.drain_completions();
    }
}

/// Posts gets for the rest of `transfer` from `file`, each inside one registered piece, while
/// fewer than [`GETS_PER_TRANSFER_MAX`] are pending. Gets that UCX finished in place count as
/// done. `local` names the registration holding a destination range, if known.
fn post_gets<'a>(
    endpoint: &Endpoint,
    file: &RemoteFile,
    transfer: &mut Transfer,
    gets_pending: &mut u32,
    token: u64,
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
        let length = (end - offset).min(piece.file_offset + piece.length_bytes - offset);
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
            Err(ucx::Error::EndpointFailed(_)) => return Err(ErrorCode::PEER_UNAVAILABLE),
            Err(error) => {
                tracing::debug!(%error, "get refused");
                return Err(ErrorCode::IO_ERROR);
            }
        }
        transfer.posted_bytes += length;
    }
    Ok(())
}
