//! Peer connections: connect, notice failure (endpoint errors, late catalogue answers, gets
//! stalled past the read timeout), take the peer down and reconnect with exponential backoff.

use std::time::Duration;

use shm_layout::entry::ErrorCode;
use ucx::{CloseMode, Endpoint, ErrorMode};

use super::peer::PeerState;
use super::slots::SlotState;
use super::RemoteReads;

/// Why a peer fails whose connection was made but whose catalogue request got no answer.
const UNANSWERED: &str = "a catalogue request went unanswered";

/// Handshakes in a row that went unanswered by a same-host exporter before the worker is
/// renewed ([`RemoteReads::renew_worker`]).
const RENEW_AFTER_UNANSWERED: u32 = 2;
/// Renewals are at least this far apart: a fresh worker fails every peer's reads in flight. (A
/// same-host exporter is a test or development set-up: in production a reader reads its own
/// host's volumes from their files.)
const WORKER_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);

/// How long a forced endpoint close may progress.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl RemoteReads {
    /// Finishes the closes [`RemoteReads::fail_peer`] started; one still running after
    /// [`CLOSE_TIMEOUT`] is given up (UCX finishes it on its own).
    pub(super) fn reap_closing(&mut self) {
        let now = self.now;
        self.closing.retain_mut(|(closing, since)| match closing.poll() {
            Some(Err(error)) => {
                tracing::debug!(%error, "forced close of a failed endpoint");
                false
            }
            Some(Ok(())) => false,
            None if now.duration_since(*since) > CLOSE_TIMEOUT => {
                tracing::warn!("forced close of a failed endpoint still running after {CLOSE_TIMEOUT:?}; left to UCX");
                false
            }
            None => true,
        });
    }

    /// Reconnects peers whose backoff ran out and fails those whose endpoint failed or whose
    /// catalogue request went unanswered for `connect_timeout`.
    pub(super) fn check_peers(&mut self) {
        let connect_timeout = self.config.connect_timeout;
        for index in 0..self.peers.len() {
            let peer = &self.peers[index];
            let failed = peer.endpoint.as_ref().is_some_and(Endpoint::is_failed);
            let request_late =
                peer.request.as_ref().is_some_and(|request| self.now.duration_since(request.sent_at) > connect_timeout);
            match peer.state {
                PeerState::Down { retry_at } if self.now >= retry_at => self.connect_peer(index),
                PeerState::Down { .. } => {}
                PeerState::Connecting { .. } | PeerState::Up if failed || request_late => {
                    let why = if failed { "its UCX endpoint failed" } else { UNANSWERED };
                    self.fail_peer(index, why)
                }
                _ => {}
            }
        }
        if std::mem::take(&mut self.renewal_wanted)
            && self.last_renewal.is_none_or(|last| self.now.duration_since(last) >= WORKER_RENEWAL_INTERVAL)
        {
            self.renew_worker();
        }
    }

    /// Replaces the UCX worker with a fresh one and reconnects every peer through it.
    ///
    /// Why: UCX's shared-memory transports (posix, sysv) receive through one queue per worker
    /// that every sender on the host writes into. A sender killed in the middle of writing an
    /// element leaves that element unfinished, and the worker waits at it for ever: nothing
    /// reaches it over shared memory again, so every new handshake with a restarted exporter
    /// on this host goes unanswered while tcp peers work (seen in the fault campaign; a reader
    /// restart cleared it). A new worker has a new queue. Its old one is kept, progressed and
    /// drained until its last get has completed (forced closes complete them).
    pub(super) fn renew_worker(&mut self) {
        let worker = match super::new_worker(&self.context, &self.worker_config) {
            Ok(worker) => worker,
            Err(error) => return tracing::warn!(%error, "cannot create a new UCX worker; keeping the old one"),
        };
        tracing::warn!(
            peers = self.peers.len(),
            "handshakes with a same-host exporter keep going unanswered after it restarted; renewing the UCX worker (a killed sender can leave its shared-memory receive queue stuck); RDMA reads in flight fail and are retried"
        );
        for index in 0..self.peers.len() {
            if self.peers[index].endpoint.is_some() {
                self.fail_peer(index, "the UCX worker is renewed");
            }
        }
        let old = std::mem::replace(&mut self.worker, worker);
        self.retiring.push((old, self.now));
        let now = self.now;
        for peer in &mut self.peers {
            peer.state = PeerState::Down { retry_at: now };
            peer.backoff = self.config.reconnect_backoff_min;
            peer.unanswered_handshakes = 0;
        }
        self.last_renewal = Some(now);
    }

    /// Progresses the retired workers, hands their completions on, and drops each once its
    /// gets have all completed and its closes have had [`CLOSE_TIMEOUT`].
    pub(super) fn progress_retiring(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        for (worker, _) in &self.retiring {
            for _ in 0..super::PROGRESS_ROUNDS_MAX {
                if worker.progress() == 0 {
                    break;
                }
            }
        }
        self.drain_completions();
        let now = self.now;
        self.retiring.retain(|(worker, since)| worker.in_flight() > 0 || now.duration_since(*since) < CLOSE_TIMEOUT);
    }

    /// Fails a peer one of whose reads has had gets in flight for longer than `read_timeout`
    /// (one peer per scan: the scan runs every few milliseconds).
    pub(super) fn fail_hung_peers(&mut self) {
        let read_timeout = self.config.read_timeout;
        let hung = self
            .slots
            .iter()
            .find(|slot| slot.state == SlotState::Transfer && self.now.duration_since(slot.posted_at) > read_timeout)
            .map(|slot| slot.peer);
        if let Some(peer_index) = hung {
            self.fail_peer(peer_index, "its gets stalled past the read timeout");
        }
    }

    pub(super) fn connect_peer(&mut self, peer_index: usize) {
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
    fn fail_peer(&mut self, peer_index: usize, why: &str) {
        let now = self.now;
        let backoff_max = self.config.reconnect_backoff_max;
        let peer = &mut self.peers[peer_index];
        match peer.state {
            PeerState::Up => {
                tracing::warn!(peer = %peer.address, why, "exporter lost; reads of its volumes fail until it is back")
            }
            PeerState::Connecting { .. } if why == UNANSWERED => {
                // A reconnect that fails quietly for ever is the worst case to diagnose: say so,
                // at the first failure and then at every power of two.
                peer.unanswered_handshakes += 1;
                if peer.unanswered_handshakes >= RENEW_AFTER_UNANSWERED && is_same_host(peer.address) {
                    self.renewal_wanted = true;
                }
                if peer.unanswered_handshakes.is_power_of_two() {
                    tracing::warn!(
                        peer = %peer.address,
                        why,
                        attempts_in_a_row = peer.unanswered_handshakes,
                        "a new connection to the exporter did not complete; retrying (docs/robustness.md: a reader that never reconnects over shared memory)"
                    );
                }
            }
            PeerState::Connecting { .. } | PeerState::Down { .. } => {}
        }
        peer.state = PeerState::Down { retry_at: now + peer.backoff };
        peer.backoff = (peer.backoff * 2).min(backoff_max);
        peer.request = None;
        peer.request_again = false;
        if let Some(endpoint) = peer.endpoint.take() {
            // Not waited for here (the poller must not block): as the worker progresses, the
            // close completes the endpoint's in-flight gets with errors, which fail their reads.
            self.closing.push((endpoint.start_close(CloseMode::Force), now));
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
            if slot.peer == peer_index
                && matches!(
                    slot.state,
                    SlotState::WaitCatalogue { .. } | SlotState::WaitIndex | SlotState::WaitLookup { .. }
                )
            {
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            }
        }
    }
}

/// Whether `address` is one of this host's (loopback, or an address a socket can bind here).
fn is_same_host(address: std::net::SocketAddr) -> bool {
    address.ip().is_loopback() || std::net::UdpSocket::bind((address.ip(), 0)).is_ok()
}
