//! Peer connections: connect, notice failure (endpoint errors, late catalogue answers, gets
//! stalled past the read timeout), take the peer down and reconnect with exponential backoff.

use std::time::Duration;

use shm_layout::entry::ErrorCode;
use ucx::{CloseMode, Endpoint, ErrorMode};

use super::peer::PeerState;
use super::slots::SlotState;
use super::RemoteReads;

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
                    let why = if failed { "its UCX endpoint failed" } else { "a catalogue request went unanswered" };
                    self.fail_peer(index, why)
                }
                _ => {}
            }
        }
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
        if matches!(peer.state, PeerState::Up) {
            tracing::warn!(peer = %peer.address, why, "exporter lost; reads of its volumes fail until it is back");
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
            if slot.peer == peer_index && matches!(slot.state, SlotState::WaitCatalogue { .. } | SlotState::WaitIndex) {
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            }
        }
    }
}
