//! The state kept per exporter, and how connections to it are made, topped up, failed and
//! retried with backoff.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shm_layout::entry::ErrorCode;

use super::connect::{ConnectError, Established};
use super::connection::Connection;
use super::{SlotState, StreamReads, VOLUMES_TOKEN};
use crate::rdma::remote::PeerStatus;
use crate::stream::wire::Request;

/// One exporter.
#[derive(Debug)]
pub(super) struct Peer {
    pub address: SocketAddr,
    pub connections: Vec<Connection>,
    /// Connection attempts the connect thread has not answered yet.
    pub attempts: usize,
    /// Whether a volume list arrived since the peer last had no connection.
    pub listed: bool,
    pub volumes: HashSet<u32>,
    /// The exporter's generation of its volume list.
    pub generation: u64,
    /// Reads waiting for room on a connection, by slot.
    pub waiting: VecDeque<usize>,
    /// No attempt before this (backoff after failures).
    pub retry_at: Option<Instant>,
    pub backoff: Duration,
    /// The connection asked for the volume list next.
    pub next_to_ask: usize,
    /// Failures since the last success (the first is logged, then every power of two).
    pub failures: u64,
    /// Connections that failed after they were up, ever (logged at powers of two: an
    /// exporter can cause them at will).
    pub broken_connections: u64,
}

impl Peer {
    pub fn new(address: SocketAddr, backoff: Duration) -> Peer {
        Peer {
            address,
            connections: Vec::new(),
            attempts: 0,
            listed: false,
            volumes: HashSet::new(),
            generation: 0,
            waiting: VecDeque::new(),
            retry_at: None,
            backoff,
            next_to_ask: 0,
            failures: 0,
            broken_connections: 0,
        }
    }

    /// Connected, with a volume list.
    pub fn is_up(&self) -> bool {
        !self.connections.is_empty() && self.listed
    }

    pub fn is_connecting(&self) -> bool {
        !self.is_up() && (self.attempts > 0 || !self.connections.is_empty())
    }

    pub fn status(&self) -> PeerStatus {
        if self.is_up() {
            PeerStatus::Up
        } else if self.is_connecting() {
            PeerStatus::Connecting
        } else {
            PeerStatus::Down
        }
    }

    /// The connection with the fewest requests in flight, if one has room.
    pub fn roomiest(&self) -> Option<usize> {
        (0..self.connections.len())
            .filter(|&index| self.connections[index].has_room())
            .min_by_key(|&index| self.connections[index].in_flight.len())
    }
}

impl StreamReads {
    /// Asks the connect thread for the connections peer `index` lacks (unless it is backing off).
    pub(super) fn top_up(&mut self, index: usize) {
        let wanted = self.config.connections_per_peer;
        let peer = &mut self.peers[index];
        if peer.retry_at.is_some_and(|at| self.now < at) {
            return;
        }
        while peer.connections.len() + peer.attempts < wanted {
            if !self.connector.request(index, peer.address) {
                return;
            }
            peer.attempts += 1;
        }
    }

    /// A connection attempt ended.
    pub(super) fn on_connected(&mut self, index: usize, outcome: Result<Established, ConnectError>) {
        let now = self.now;
        let (minimum, maximum) = (self.config.reconnect_backoff_min, self.config.reconnect_backoff_max);
        let Some(peer) = self.peers.get_mut(index) else { return };
        peer.attempts = peer.attempts.saturating_sub(1);
        match outcome {
            Ok(Established { stream, tls }) => {
                if peer.failures > 0 {
                    tracing::info!(peer = %peer.address, "connected to the exporter again");
                }
                peer.failures = 0;
                peer.backoff = minimum;
                peer.retry_at = None;
                if let Err(error) = self.watch.add(std::os::fd::AsFd::as_fd(&stream)) {
                    tracing::warn!(peer = %peer.address, %error, "cannot watch a stream connection; its replies are noticed at the poller's heartbeat while it sleeps");
                }
                peer.connections.push(Connection::new(stream, tls));
                let connection = peer.connections.len() - 1;
                if !peer.listed {
                    self.ask_volumes_on(index, connection);
                }
                self.send_waiting(index);
            }
            Err(error) => {
                peer.failures += 1;
                if peer.failures.is_power_of_two() {
                    tracing::warn!(peer = %peer.address, failures = peer.failures, "cannot connect to the exporter: {error}");
                }
                peer.retry_at = Some(now + peer.backoff);
                peer.backoff = (peer.backoff * 2).min(maximum);
            }
        }
    }

    /// Reconnects peers and fails connections whose requests wait too long.
    pub(super) fn check_peers(&mut self) {
        for index in 0..self.peers.len() {
            let timeout = self.config.read_timeout;
            let hung = self.peers[index]
                .connections
                .iter()
                .position(|connection| connection.waiting_since.is_some_and(|since| self.now - since > timeout));
            if let Some(connection) = hung {
                let reason = format!("no answer within {timeout:?}");
                self.fail_connection(index, connection, &reason);
            }
            self.top_up(index);
        }
    }

    /// Asks peer `index` for its volume list on its next connection in turn.
    pub(super) fn ask_volumes(&mut self, index: usize) {
        let peer = &mut self.peers[index];
        if peer.connections.is_empty() {
            return;
        }
        peer.next_to_ask = (peer.next_to_ask + 1) % peer.connections.len();
        let connection = peer.next_to_ask;
        self.ask_volumes_on(index, connection);
    }

    pub(super) fn ask_volumes_on(&mut self, index: usize, connection: usize) {
        let now = self.now;
        let Some(target) = self.peers[index].connections.get_mut(connection) else { return };
        if target.volumes_asked || !target.has_room() {
            return;
        }
        target.volumes_asked = true;
        target.queue(&Request::Volumes { token: VOLUMES_TOKEN }, VOLUMES_TOKEN, now);
        if let Err(error) = target.flush() {
            self.fail_connection(index, connection, &format!("sending failed: {error}"));
        }
    }

    /// Sends the reads waiting for room on peer `index`'s connections, while there is room.
    pub(super) fn send_waiting(&mut self, index: usize) {
        // Bounded: each pass sends one waiting read or stops.
        while self.peers[index].roomiest().is_some() {
            let Some(slot) = self.peers[index].waiting.pop_front() else { return };
            if self.slots[slot].state == SlotState::Waiting {
                self.send(slot);
            }
        }
    }

    /// Closes a connection: its reads complete with `PEER_UNAVAILABLE` (nothing can land in
    /// their buffers any more: bytes are received only in `progress`). A peer left without a
    /// connection is down: its waiting reads fail too, and it is retried after its backoff.
    pub(super) fn fail_connection(&mut self, index: usize, connection: usize, reason: &str) {
        let peer = &mut self.peers[index];
        if connection >= peer.connections.len() {
            return;
        }
        let closed = peer.connections.swap_remove(connection);
        peer.failures += 1;
        peer.broken_connections += 1;
        if peer.broken_connections.is_power_of_two() {
            let (in_flight, broken) = (closed.in_flight.len(), peer.broken_connections);
            tracing::warn!(peer = %peer.address, in_flight, broken, "stream connection to the exporter failed: {reason}");
        }
        if peer.connections.is_empty() {
            peer.listed = false;
            peer.retry_at = Some(self.now + peer.backoff);
            peer.backoff = (peer.backoff * 2).min(self.config.reconnect_backoff_max);
        }
        let waiting: Vec<usize> =
            if peer.connections.is_empty() { peer.waiting.drain(..).collect() } else { Vec::new() };
        for token in closed.in_flight.iter().copied().filter(|&token| token & VOLUMES_TOKEN == 0) {
            let slot = crate::read::routes::slot_of_token(token);
            if self.slots.get(slot).is_some_and(|slot| slot.token == token) {
                self.finish(slot, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            }
        }
        for slot in waiting {
            self.finish(slot, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        }
    }
}
