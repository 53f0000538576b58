//! The read role's stream transport: needles read from exporters over our own protocol,
//! received straight into the client's buffer and checked before they complete.
//!
//! [`StreamReads`] lives on the poller thread and has the shape of every asynchronous transport
//! (`start_read`, `progress`, `poll_completion`, `cancel`, and `release_buffer_area` saying when
//! nothing can write into a region any more). Nothing lands asynchronously: bytes are received
//! only inside `progress`, with non-blocking `recv`, so a read whose connection failed can be
//! completed at once. Connections are made by a thread of their own (`connect`), several per
//! exporter; requests go to the one with the fewest in flight, replies are matched by token.
//!
//! ```text
//!  start_read ─► Waiting (no connection has room) ─► Sent ─► reply header ─► check bytes
//!                                                     ▲        ─► data into the buffer ─► check ─► Done
//!                                                     └── check failed: sent again, once
//! ```
//!
//! A connection that fails (closed, reset, a reply that is not the protocol's, no byte for
//! `read_timeout` while requests wait) completes its reads with `PEER_UNAVAILABLE` (the routing
//! falls back to HTTP) and is made again; a peer with no connection left is down and retried
//! with backoff. `receive` is the reply machine; `peers` the per-exporter state; `config` the
//! settings.

mod config;
mod connect;
mod connection;
mod peers;
mod receive;
mod watch;

pub use config::{StreamConfig, StreamError, PEERS_MAX};
pub use connect::{connect, ConnectError};
pub use receive::place_check_bytes;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use shm_layout::entry::{ErrorCode, NeedleRead};

use self::connect::Connector;
use self::peers::Peer;
use self::watch::SocketWatch;
use super::wire::{ReadRequest, Request};
use crate::rdma::remote::PeerStatus;
use crate::read::check::CheckCopy;
use crate::read::fetch::NeedleFetch;
use crate::read::http::Waker;
use crate::read::routes::slot_of_token;
use crate::read::ReadResult;

/// Token bit of VOLUMES requests (read tokens never have bit 63 set: `read::routes`).
const VOLUMES_TOKEN: u64 = 1 << 63;
/// How often `progress` looks at peers (reconnects) and at connections waiting too long.
const PEER_SCAN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for room on one of its peer's connections.
    Waiting,
    /// Its request is on a connection.
    Sent,
    /// Finished; its completion waits to be popped.
    Done,
}

/// One read in flight, by its token's slot.
#[derive(Debug)]
struct Slot {
    token: u64,
    state: SlotState,
    region_id: u64,
    read: NeedleRead,
    buffer: NonNull<u8>,
    peer: usize,
    fetch: Option<NeedleFetch>,
    canceled: bool,
    retried: bool,
    result: ReadResult,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            token: 0,
            state: SlotState::Free,
            region_id: 0,
            read: NeedleRead { volume_id: 0, needle_id: 0, cookie: 0, buffer_offset: 0, buffer_length: 0, range: None },
            buffer: NonNull::dangling(),
            peer: 0,
            fetch: None,
            canceled: false,
            retried: false,
            result: Err((ErrorCode::IO_ERROR, 0)),
        }
    }
}

/// A client's buffer area: where reads of it may write, and how many are in flight.
#[derive(Debug)]
struct Area {
    base: usize,
    length_bytes: u64,
    reads_in_flight: usize,
}

/// The stream read transport (see the module docs).
#[derive(Debug)]
pub struct StreamReads {
    config: StreamConfig,
    slots: Box<[Slot]>,
    slots_in_use: usize,
    done: VecDeque<u32>,
    peers: Vec<Peer>,
    areas: HashMap<u64, Area>,
    connector: Connector,
    watch: SocketWatch,
    check_copy: CheckCopy,
    now: Instant,
    last_peer_scan: Instant,
    /// Whether the poller should keep polling (see [`StreamReads::needs_polling`]).
    polling_wanted: bool,
}

impl StreamReads {
    /// Sizes every table, starts the connect thread and connects to every peer, waiting (at
    /// most `connect_timeout`) for their volume lists. A peer that does not answer is down, not
    /// an error: it is retried with backoff from `progress`.
    pub fn new(config: StreamConfig, wake: Waker) -> Result<StreamReads, StreamError> {
        config.validate()?;
        match config.tls {
            Some(_) => tracing::info!(
                "the stream transport reads over mutual TLS: exporters need a certificate signed by [grpc] ca"
            ),
            None => tracing::info!(
                "the stream transport reads in plaintext (give [grpc.client] cert and key and [grpc] ca for mutual TLS)"
            ),
        }
        let capacity = config.max_peers.max(1) * config.connections_per_peer;
        let watch = SocketWatch::start(wake.clone()).map_err(StreamError::Thread)?;
        let connector =
            Connector::start(config.read_key.clone(), config.tls.clone(), config.connect_timeout, capacity, wake)
                .map_err(StreamError::Thread)?;
        let now = Instant::now();
        let mut reads = StreamReads {
            slots: (0..config.max_in_flight).map(|_| Slot::free()).collect(),
            slots_in_use: 0,
            done: VecDeque::with_capacity(config.max_in_flight),
            peers: config.peers.iter().map(|&address| Peer::new(address, config.reconnect_backoff_min)).collect(),
            areas: HashMap::new(),
            connector,
            watch,
            check_copy: CheckCopy::default(),
            now,
            last_peer_scan: now,
            polling_wanted: false,
            config,
        };
        for index in 0..reads.peers.len() {
            reads.top_up(index);
        }
        // Bounded by connect_timeout (and a little for the volume lists).
        let deadline = now + reads.config.connect_timeout + Duration::from_millis(500);
        while Instant::now() < deadline && reads.peers.iter().any(Peer::is_connecting) {
            reads.progress();
            std::thread::sleep(Duration::from_micros(200));
        }
        for peer in reads.peers.iter().filter(|peer| !peer.is_up()) {
            tracing::warn!(peer = %peer.address, "exporter not reachable at start; retrying in the background");
        }
        Ok(reads)
    }

    /// Adds an exporter learnt later (from the master's lookup) and starts connecting to it.
    pub fn add_peer(&mut self, address: SocketAddr) -> Result<(), StreamError> {
        if self.peers.iter().any(|peer| peer.address == address) {
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(StreamError::TooManyPeers(address, self.peers.len()));
        }
        self.peers.push(Peer::new(address, self.config.reconnect_backoff_min));
        tracing::info!(peer = %address, "connecting to an exporter found through the master");
        self.top_up(self.peers.len() - 1);
        self.update_polling_wanted();
        Ok(())
    }

    /// Whether a connection to an exporter is being made (the poller keeps polling).
    pub fn connecting(&self) -> bool {
        self.peers.iter().any(Peer::is_connecting)
    }

    /// Whether the poller should keep polling rather than sleep: an exporter is connecting, or
    /// a reply is partly received (its rest follows within microseconds; a sleep and a wake
    /// per socket buffer cost a large read a third of its speed here).
    /// Kept by [`StreamReads::progress`] and [`StreamReads::add_peer`], the only places where
    /// it turns true, so the poller's every pass reads a flag instead of walking the peers.
    pub fn needs_polling(&self) -> bool {
        self.polling_wanted
    }

    /// Recomputes [`StreamReads::needs_polling`].
    fn update_polling_wanted(&mut self) {
        self.polling_wanted = self
            .peers
            .iter()
            .any(|peer| peer.is_connecting() || peer.connections.iter().any(|connection| connection.mid_reply()));
    }

    pub fn peer_status(&self, address: SocketAddr) -> Option<PeerStatus> {
        self.peers.iter().find(|peer| peer.address == address).map(Peer::status)
    }

    /// Exporters up and not.
    pub fn peer_counts(&self) -> (usize, usize) {
        let up = self.peers.iter().filter(|peer| peer.is_up()).count();
        (up, self.peers.len() - up)
    }

    /// Each exporter's address and the generation of its volume list (0: none yet).
    pub fn peer_generations(&self) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
        self.peers.iter().map(|peer| (peer.address, peer.generation))
    }

    /// Whether an exporter that is up announced `volume_id`.
    pub fn serves_up(&self, volume_id: u32) -> bool {
        self.peers.iter().any(|peer| peer.is_up() && peer.volumes.contains(&volume_id))
    }

    /// Whether exporter `address` is up and announced `volume_id`.
    pub fn serves_at(&self, volume_id: u32, address: SocketAddr) -> bool {
        self.peers.iter().any(|peer| peer.address == address && peer.is_up() && peer.volumes.contains(&volume_id))
    }

    /// Whether some exporter announced `volume_id` (it may be down).
    pub fn serves(&self, volume_id: u32) -> bool {
        self.route(volume_id).is_some()
    }

    pub fn peer_is_up(&self, address: SocketAddr) -> bool {
        self.peers.iter().any(|peer| peer.address == address && peer.is_up())
    }

    /// Reads started whose completion has not been popped.
    pub fn in_flight(&self) -> usize {
        self.slots_in_use
    }

    /// The poller is about to sleep: with reads in flight, the socket watch rings its doorbell
    /// when an exporter's bytes arrive (`watch`), so the poller need not spin for this
    /// transport. `true`: bytes were received that no read has taken yet (the watch cannot
    /// see them): do not sleep.
    pub fn prepare_sleep(&self) -> bool {
        let staged = self.peers.iter().any(|peer| peer.connections.iter().any(|connection| connection.has_staged()));
        if !staged
            && (self.slots_in_use > 0 || self.peers.iter().any(|peer| peer.attempts > 0 || !peer.waiting.is_empty()))
        {
            self.watch.arm();
        }
        staged
    }

    /// Records a client's buffer area, so reads into it are checked against it and the area is
    /// not released while one may still write there.
    pub fn register_buffer_area(
        &mut self,
        region_id: u64,
        base: NonNull<u8>,
        length_bytes: u64,
    ) -> Result<(), StreamError> {
        if self.areas.contains_key(&region_id) {
            return Err(StreamError::AreaExists(region_id));
        }
        self.areas.insert(region_id, Area { base: base.as_ptr() as usize, length_bytes, reads_in_flight: 0 });
        Ok(())
    }

    /// Forgets an area: `false` while reads into it are in flight (call again after
    /// `progress`); `true` also when it is unknown.
    pub fn release_buffer_area(&mut self, region_id: u64) -> bool {
        match self.areas.get(&region_id) {
            Some(area) if area.reads_in_flight > 0 => false,
            _ => {
                self.areas.remove(&region_id);
                true
            }
        }
    }

    /// Starts a read into `buffer`, the start of the validated range `read` names inside area
    /// `region_id`; `token` is the read table's. `Ok`: exactly one completion with `token` will
    /// come from [`StreamReads::poll_completion`]. `Err`: nothing was started.
    pub fn start_read(
        &mut self,
        token: u64,
        region_id: u64,
        read: &NeedleRead,
        buffer: NonNull<u8>,
        at: Option<SocketAddr>,
    ) -> Result<(), (ErrorCode, u64)> {
        self.now = Instant::now();
        let area = self.areas.get(&region_id).ok_or((ErrorCode::BAD_BUFFER, 0))?;
        let start = buffer.as_ptr() as usize;
        let inside =
            start >= area.base && (start - area.base) as u64 + u64::from(read.buffer_length) <= area.length_bytes;
        if !inside {
            return Err((ErrorCode::BAD_BUFFER, 0));
        }
        let peer = match at {
            Some(address) => self.peers.iter().position(|peer| peer.address == address),
            None => self.route(read.volume_id),
        };
        let peer = peer.ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?;
        if !self.peers[peer].is_up() {
            return Err((ErrorCode::PEER_UNAVAILABLE, 0));
        }
        let index = slot_of_token(token);
        if token & VOLUMES_TOKEN != 0 || self.slots.get(index).is_none_or(|slot| slot.state != SlotState::Free) {
            return Err((ErrorCode::IO_ERROR, 0));
        }
        if let Some(area) = self.areas.get_mut(&region_id) {
            area.reads_in_flight += 1;
        }
        self.slots_in_use += 1;
        self.slots[index] = Slot {
            token,
            state: SlotState::Waiting,
            region_id,
            read: *read,
            buffer,
            peer,
            fetch: None,
            canceled: false,
            retried: false,
            result: Err((ErrorCode::IO_ERROR, 0)),
        };
        self.send(index);
        Ok(())
    }

    /// Cancels the read with `token`: one not sent yet completes with `CANCELED` at once; one
    /// sent completes with `CANCELED` when its reply has been received (the buffer stays the
    /// engine's until then). `false` when no such read is in flight.
    pub fn cancel(&mut self, token: u64) -> bool {
        let index = slot_of_token(token);
        let Some(slot) = self.slots.get_mut(index).filter(|slot| slot.token == token) else { return false };
        match slot.state {
            SlotState::Free | SlotState::Done => false,
            SlotState::Sent => {
                slot.canceled = true;
                true
            }
            SlotState::Waiting => {
                let peer = slot.peer;
                self.peers[peer].waiting.retain(|&waiting| waiting != index);
                self.finish(index, Err((ErrorCode::CANCELED, 0)));
                true
            }
        }
    }

    /// The next finished read: its token and outcome. Every byte of a success passed the needle
    /// check.
    pub fn poll_completion(&mut self) -> Option<(u64, ReadResult)> {
        let index = self.done.pop_front()? as usize;
        let slot = &mut self.slots[index];
        let completion = (slot.token, slot.result);
        slot.state = SlotState::Free;
        slot.fetch = None;
        self.slots_in_use -= 1;
        Some(completion)
    }

    /// Sends and receives what the sockets allow, takes connections the connect thread made,
    /// and (every few milliseconds) reconnects peers and fails connections that stopped
    /// answering. Call it in the poll loop while `in_flight() > 0` or `connecting()`, and now
    /// and then when idle.
    pub fn progress(&mut self) {
        self.now = Instant::now();
        while let Some((peer, outcome)) = self.connector.poll() {
            self.on_connected(peer, outcome);
        }
        for peer in 0..self.peers.len() {
            if !self.peers[peer].connections.is_empty() {
                self.progress_peer(peer);
            }
        }
        if self.now.duration_since(self.last_peer_scan) >= PEER_SCAN_INTERVAL {
            self.last_peer_scan = self.now;
            self.check_peers();
        }
        self.update_polling_wanted();
    }

    /// Asks every exporter that is up for its volume list again (one connection each, in turn).
    pub fn refresh_catalogues(&mut self) {
        self.now = Instant::now();
        for peer in 0..self.peers.len() {
            self.ask_volumes(peer);
        }
    }

    /// The peer to read `volume_id` from: the first that is up and has it, else the first that
    /// has it.
    fn route(&self, volume_id: u32) -> Option<usize> {
        let has = |peer: &Peer| peer.volumes.contains(&volume_id);
        self.peers.iter().position(|peer| peer.is_up() && has(peer)).or_else(|| self.peers.iter().position(has))
    }

    /// Puts read `index`'s request on its peer's connection with the most room, or in its
    /// peer's waiting queue when none has room.
    fn send(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let peer = &mut self.peers[slot.peer];
        let Some(connection) = peer.roomiest() else {
            if peer.connections.is_empty() {
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            } else {
                slot.state = SlotState::Waiting;
                peer.waiting.push_back(index);
            }
            return;
        };
        let request = Request::Read(ReadRequest {
            token: slot.token,
            volume_id: slot.read.volume_id,
            needle_id: slot.read.needle_id,
            cookie: slot.read.cookie,
            max_bytes: slot.read.buffer_length,
            range: slot.read.range,
        });
        slot.state = SlotState::Sent;
        let peer_index = slot.peer;
        peer.connections[connection].queue(&request, slot.token, self.now);
        if let Err(error) = peer.connections[connection].flush() {
            self.fail_connection(peer_index, connection, &format!("sending failed: {error}"));
        }
    }

    /// Completes read `index` with `result` (`CANCELED` if it was canceled).
    fn finish(&mut self, index: usize, result: ReadResult) {
        let slot = &mut self.slots[index];
        if !matches!(slot.state, SlotState::Waiting | SlotState::Sent) {
            return;
        }
        slot.result = if slot.canceled { Err((ErrorCode::CANCELED, 0)) } else { result };
        slot.state = SlotState::Done;
        if let Some(area) = self.areas.get_mut(&slot.region_id) {
            area.reads_in_flight = area.reads_in_flight.saturating_sub(1);
        }
        self.done.push_back(index as u32);
    }
}
