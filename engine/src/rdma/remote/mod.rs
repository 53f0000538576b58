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
//!               │  no index cached: WaitLookup (the exporter answers where) ──► Transfer
//!               │  index behind the catalogue: WaitIndex (pull the .idx tail over RDMA)
//!               │  miss, or record past the known .dat end: WaitCatalogue (once), then lookup
//!               └─ check failed: WaitCatalogue, then lookup and transfer again (once), else fail
//! ```
//!
//! A range read first gets the 20-byte record prefix into the slot's scratch, checks the header
//! and clamps the range (as HTTP does), then gets the range into the buffer and the record's
//! meta after the data into the scratch (flags and TTL, append time: the gzip mark, and
//! `NO_SUCH_NEEDLE` once the TTL ran out, as for whole reads).
//!
//! Peers: connected at start (bounded by [`RemoteConfig::connect_timeout`]). An unreachable or
//! failed peer is *down*: reads of its volumes fail at once with `PEER_UNAVAILABLE`, its
//! in-flight gets are completed with errors by a forced endpoint close, and it is reconnected
//! with exponential backoff; its cached indexes are kept and reused when the generation is
//! unchanged. A peer whose gets take longer than `read_timeout` is treated as failed too.
//!
//! Where things are: this file is the facade (setup, the public calls, completion dispatch);
//! `slots` holds the table of reads and posts their gets, `landed` checks what they fetched,
//! `lookup` asks the exporter where a needle lies, `index` pulls `.idx` files and tails,
//! `volumes` asks for and applies catalogues, `connection` connects, fails and reconnects
//! peers, `transfer` posts the gets of one file range, `peer` and `area` are the state kept
//! per exporter and per client buffer area, `config` the settings.
//!
//! [`serves`]: RemoteReads::serves

mod area;
mod config;
mod connection;
mod index;
mod landed;
mod lookup;
mod peer;
mod slots;
mod transfer;
mod volumes;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use shm_layout::entry::{ErrorCode, NeedleRead};
use ucx::{CloseMode, ClosingEndpoint, Context, Endpoint, MemoryRegion, RemoteKey, Worker, WorkerConfig};

pub use self::config::{
    RemoteConfig, RemoteError, DEFAULT_INDEX_PULL_AFTER_LOOKUPS, MAX_IN_FLIGHT_MAX, MAX_IN_FLIGHT_MIN, PEERS_MAX,
};
pub use self::transfer::GETS_PER_TRANSFER_MAX;
pub use crate::read::ReadDone;

use self::area::Area;
use self::connection::CLOSE_TIMEOUT;
use self::index::JOB_TOKEN_BIT;
use self::peer::{Peer, PeerState};
use self::slots::{Slot, SlotState, SCRATCH_SLOT_BYTES};
use super::catalogue::AM_CATALOGUE;
use super::staging::RawBuffer;
use super::{features, ucx_overrides};
use crate::read::check::CheckCopy;
use crate::read::routes::slot_of_token;

/// How often `progress` scans the table for reads stuck on a hung peer.
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// `ucp_worker_progress` calls per `progress`, at most.
const PROGRESS_ROUNDS_MAX: u32 = 64;

pub use crate::read::ReadResult;

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
    /// By the slot of each read's token.
    slots: Box<[Slot]>,
    /// Slots not `Free`.
    slots_in_use: usize,
    done: VecDeque<u32>,
    peers: Vec<Peer>,
    /// Endpoints of failed peers being closed (forced), with when it began.
    closing: Vec<(ClosingEndpoint, Instant)>,
    areas: HashMap<u64, Area>,
    scratch_region: MemoryRegion,
    scratch: RawBuffer,
    /// Where landed records are copied to be checked.
    check_copy: CheckCopy,
    /// Workers replaced by [`RemoteReads::renew_worker`], progressed and drained until their
    /// last get has completed.
    retiring: Vec<(Worker, Instant)>,
    /// When the worker was last renewed (at most once per [`WORKER_RENEWAL_INTERVAL`]).
    last_renewal: Option<Instant>,
    /// Set when a handshake failure calls for a fresh worker; acted on in `check_peers`.
    renewal_wanted: bool,
    worker_config: WorkerConfig,
    worker: Worker,
    context: Context,
    /// Read once per `progress` and per `start_read`; read start times use it.
    now: Instant,
    last_timeout_scan: Instant,
    /// Index lookups so far: the clock of [`peer::RemoteVolume::last_read`].
    read_clock: u64,
    /// Cached remote indexes dropped over the budget so far.
    index_evictions: u64,
    /// Needle lookups sent to exporters so far (not counting those sent again).
    lookups_sent: u64,
    /// Lookups the exporters refused (logged at powers of two).
    lookups_refused: u64,
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
        let gets_max = (config.max_in_flight + config.max_peers) * GETS_PER_TRANSFER_MAX as usize;
        let worker_config = WorkerConfig {
            max_in_flight: gets_max,
            // Catalogues, and an answer for each read's lookup.
            am_queue_capacity: (config.max_peers * 4).max(16) + config.max_in_flight,
            am_payload_max_bytes: 64 << 20,
        };
        let worker = new_worker(&context, &worker_config)?;
        let scratch = RawBuffer::new(config.max_in_flight * SCRATCH_SLOT_BYTES);
        // SAFETY: the scratch outlives its registration (field order in RemoteReads).
        let scratch_region = unsafe { MemoryRegion::register(&context, scratch.base(), scratch.len()) }?;
        let now = Instant::now();
        let mut peers = Vec::with_capacity(config.max_peers);
        for &address in &config.peers {
            peers.push(new_peer(&context, &config, address, now)?);
        }
        let max_in_flight = config.max_in_flight;
        let mut reads = RemoteReads {
            slots: (0..max_in_flight).map(|_| Slot::new(now)).collect(),
            slots_in_use: 0,
            done: VecDeque::with_capacity(max_in_flight),
            peers,
            closing: Vec::new(),
            areas: HashMap::new(),
            scratch_region,
            scratch,
            check_copy: CheckCopy::default(),
            retiring: Vec::new(),
            last_renewal: None,
            renewal_wanted: false,
            worker_config,
            worker,
            context,
            now,
            last_timeout_scan: now,
            config,
            read_clock: 0,
            index_evictions: 0,
            lookups_sent: 0,
            lookups_refused: 0,
        };
        for index in 0..reads.peers.len() {
            reads.connect_peer(index);
        }
        let start = Instant::now();
        // Bounded by connect_timeout.
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

    /// Adds an exporter learnt later (from the master's lookup) and starts connecting to it;
    /// its reads wait for [`RemoteReads::peer_status`] to leave `Connecting`. Nothing happens
    /// when the peer is known already.
    pub fn add_peer(&mut self, address: SocketAddr) -> Result<(), RemoteError> {
        if self.peers.iter().any(|peer| peer.address == address) {
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(RemoteError::TooManyPeers(address, self.peers.len()));
        }
        self.now = Instant::now();
        let peer = new_peer(&self.context, &self.config, address, self.now)?;
        self.peers.push(peer);
        tracing::info!(peer = %address, "connecting to an exporter found through the master");
        self.connect_peer(self.peers.len() - 1);
        Ok(())
    }

    /// Whether a connection to an exporter is being set up. Its UCX handshake needs progress
    /// as often as gets do: driven only by the once-a-second housekeeping it outlasts
    /// `connect_timeout` and starts over, for ever (a reader started before its exporter
    /// never connected while no read was parked on the peer).
    pub fn connecting(&self) -> bool {
        self.peers.iter().any(|peer| matches!(peer.state, PeerState::Connecting { .. }))
    }

    /// Where the connection to exporter `address` stands, if it is known.
    pub fn peer_status(&self, address: SocketAddr) -> Option<PeerStatus> {
        let peer = self.peers.iter().find(|peer| peer.address == address)?;
        Some(match peer.state {
            PeerState::Up => PeerStatus::Up,
            PeerState::Connecting { .. } => PeerStatus::Connecting,
            PeerState::Down { .. } => PeerStatus::Down,
        })
    }

    /// Exporters connected (up) and not (connecting or down).
    pub fn peer_counts(&self) -> (usize, usize) {
        let up = self.peers.iter().filter(|peer| peer.is_up()).count();
        (up, self.peers.len() - up)
    }

    /// Each exporter's address and the catalogue generation it last announced (0: none yet).
    pub fn peer_generations(&self) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
        self.peers.iter().map(|peer| (peer.address, peer.catalogue_generation))
    }

    /// Whether an exporter that is up announced `volume_id`.
    pub fn serves_up(&self, volume_id: u32) -> bool {
        self.peers.iter().any(|peer| peer.is_up() && peer.volumes.contains_key(&volume_id))
    }

    /// Whether exporter `address` is up and announced `volume_id`.
    pub fn serves_at(&self, volume_id: u32, address: SocketAddr) -> bool {
        self.peers.iter().any(|peer| peer.address == address && peer.is_up() && peer.volumes.contains_key(&volume_id))
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
        // SAFETY: the caller keeps the range mapped until the area is released (contract
        // above), and release_buffer_area drops it only with no read in flight.
        let area = unsafe { Area::register(&self.context, base, length_bytes) }?;
        self.areas.insert(region_id, area);
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

    /// Whether a read can start now (some slot is free; the read's own token names which).
    pub fn has_room(&self) -> bool {
        self.slots_in_use < self.slots.len()
    }

    /// Reads started whose completion has not been popped.
    pub fn in_flight(&self) -> usize {
        self.slots_in_use
    }

    /// Starts a read into `buffer`, the start of the validated range `read` names inside area
    /// `region_id`. `token` is the read table's (`generation << 32 | slot`, the generation
    /// below 2^31; [`crate::read::routes::slot_of_token`] names its slot here). `Ok`: exactly
    /// one completion with `token` will come from [`RemoteReads::poll_completion`]. `Err`:
    /// nothing was started (unknown area or volume, or the token's slot is busy or past the
    /// table).
    /// `at` names the exporter to read from (a volume the master located); `None` picks the
    /// first peer that is up and announced the volume.
    pub fn start_read(
        &mut self,
        token: u64,
        region_id: u64,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        at: Option<SocketAddr>,
    ) -> Result<(), (ErrorCode, u64)> {
        // The read timeout runs from here: `now` may be as old as the last `progress`, and the
        // poller calls that only while reads are pending.
        self.now = Instant::now();
        let buffer = buffer.as_ptr();
        let area = self.areas.get(&region_id).ok_or((ErrorCode::BAD_BUFFER, 0))?;
        if !area.contains(buffer, u64::from(read.buffer_length)) {
            return Err((ErrorCode::BAD_BUFFER, 0));
        }
        let peer = match at {
            Some(address) => self.peers.iter().position(|peer| peer.address == address),
            None => self.route(read.volume_id),
        };
        let peer = peer.ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        let index = slot_of_token(token);
        if token & JOB_TOKEN_BIT != 0 || self.slots.get(index).is_none_or(|slot| slot.state != SlotState::Free) {
            return Err((ErrorCode::IO_ERROR, 0));
        }
        self.slots_in_use += 1;
        if let Some(area) = self.areas.get_mut(&region_id) {
            area.reads_in_flight += 1;
        }
        self.slots[index].start(token, region_id, read, buffer, peer);
        self.advance(index);
        Ok(())
    }

    /// Cancels the read with `token`: one that waits for metadata completes with `CANCELED` at
    /// once; one whose gets are in flight completes with `CANCELED` when they have landed (the
    /// buffer stays the engine's until then). `false` when no such read is in flight.
    pub fn cancel(&mut self, token: u64) -> bool {
        let index = slot_of_token(token);
        if !self.slots.get(index).is_some_and(|slot| slot.token == token && slot.is_active()) {
            return false;
        }
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
        slot.free();
        self.slots_in_use -= 1;
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
        self.progress_retiring();
        self.reap_closing();
        self.check_peers();
        if self.now.duration_since(self.last_timeout_scan) >= TIMEOUT_SCAN_INTERVAL {
            self.last_timeout_scan = self.now;
            self.fail_hung_peers();
            self.scan_lookups();
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

    /// Needle lookups sent to exporters so far (one sent again after no answer counts once).
    pub fn lookups_sent(&self) -> u64 {
        self.lookups_sent
    }

    /// Whether peer `address` is connected with its catalogue (for tests and status).
    pub fn peer_is_up(&self, address: SocketAddr) -> bool {
        self.peers.iter().any(|peer| peer.address == address && peer.is_up())
    }

    /// The peer to read `volume_id` from: the first that is up and has it, else the first that
    /// has it.
    fn route(&self, volume_id: u32) -> Option<usize> {
        let has = |peer: &Peer| peer.volumes.contains_key(&volume_id);
        self.peers.iter().position(|peer| peer.is_up() && has(peer)).or_else(|| self.peers.iter().position(has))
    }

    /// Hands every finished get to its read or index pull, from the worker and from those
    /// retiring.
    fn drain_completions(&mut self) {
        // Bounded: each queue holds at most its worker's in-flight bound.
        while let Some(completion) = self
            .worker
            .pop_completion()
            .or_else(|| self.retiring.iter().find_map(|(worker, _)| worker.pop_completion()))
        {
            let ok = completion.status.is_ok();
            if completion.token & JOB_TOKEN_BIT != 0 {
                self.on_job_get_done((completion.token & !JOB_TOKEN_BIT) as usize, ok);
            } else {
                let index = slot_of_token(completion.token);
                if index < self.slots.len() {
                    self.on_slot_get_done(index, completion.token, ok);
                }
            }
        }
    }
}

/// Where a connection to an exporter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerStatus {
    /// Connected, catalogue received.
    Up,
    Connecting,
    /// Failed or unreachable; retried with backoff.
    Down,
}

/// A worker with the catalogue's and the lookups' handlers set.
fn new_worker(context: &Context, config: &WorkerConfig) -> Result<Worker, ucx::Error> {
    let worker = Worker::new(context, *config)?;
    worker.set_am_handler(AM_CATALOGUE)?;
    worker.set_am_handler(crate::rdma::lookup::AM_LOOKUP)?;
    Ok(worker)
}

/// A peer with its registered index staging buffer, not connected yet.
fn new_peer(context: &Context, config: &RemoteConfig, address: SocketAddr, now: Instant) -> Result<Peer, RemoteError> {
    let staging = RawBuffer::new(config.index_chunk_bytes);
    // SAFETY: the staging buffer outlives its registration (field order in Peer).
    let staging_region = unsafe { MemoryRegion::register(context, staging.base(), staging.len()) }?;
    Ok(Peer::new(address, staging, staging_region, config.reconnect_backoff_min, now))
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
        // Closes started by fail_peer: bounded by CLOSE_TIMEOUT from when each began.
        while !self.closing.is_empty() {
            self.worker.progress();
            for (worker, _) in &self.retiring {
                worker.progress();
            }
            self.now = Instant::now();
            self.reap_closing();
        }
        self.drain_completions();
    }
}
