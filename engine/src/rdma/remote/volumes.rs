//! What each exporter serves: catalogue requests (one in flight per peer; the volumes wanted
//! meanwhile are batched into the next) and their answers, applied to the peer's volumes
//! before the reads that waited for them move on.

use super::peer::{PeerState, PendingRequest};
use super::slots::SlotState;
use super::RemoteReads;
use crate::rdma::catalogue::{
    Catalogue, CatalogueRequest, AM_CATALOGUE_REQUEST, PROTOCOL_VERSION, REQUEST_VOLUMES_MAX,
};
use crate::rdma::lookup::AM_LOOKUP;

impl RemoteReads {
    /// Parks a read until the peer answers a catalogue request naming its volume.
    pub(super) fn wait_catalogue(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let peer = &mut self.peers[slot.peer];
        slot.state = SlotState::WaitCatalogue { after_request: peer.next_request_id };
        peer.want(slot.read.volume_id, REQUEST_VOLUMES_MAX);
        let peer_index = slot.peer;
        self.send_request(peer_index);
    }

    /// Sends a catalogue request for the wanted volumes, or remembers to once the one in
    /// flight is answered (one request at a time per peer).
    pub(super) fn send_request(&mut self, peer_index: usize) {
        let signed_at = std::time::SystemTime::now().checked_sub(self.config.token_backdate);
        let token = self.config.read_key.as_ref().map(|key| key.sign(signed_at.unwrap_or(std::time::UNIX_EPOCH)));
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
            CatalogueRequest { protocol_version: PROTOCOL_VERSION, request_id: peer.next_request_id, volumes, token };
        if let Err(error) = endpoint.am_send(AM_CATALOGUE_REQUEST, &[], &request.encode()) {
            tracing::debug!(peer = %peer.address, %error, "cannot send a catalogue request");
        }
        // A failed send is caught by the endpoint's failure or the request's timeout.
        peer.request =
            Some(PendingRequest { request_id: request.request_id, sent_at: self.now, volumes: request.volumes });
        peer.next_request_id += 1;
    }

    /// Asks every connected peer for its whole catalogue again, so appended index entries
    /// (new needles, tombstones) and replaced volumes are noticed even by reads that hit the
    /// cached index. Called about once a second, off the read path.
    pub fn refresh_catalogues(&mut self) {
        for peer_index in 0..self.peers.len() {
            let peer = &mut self.peers[peer_index];
            if peer.is_up() && peer.request.is_none() {
                peer.wanted_all = true;
                self.send_request(peer_index);
            }
        }
    }

    /// A catalogue or a lookup answer arrived: applies it for the peer whose endpoint sent it.
    pub(super) fn on_message(&mut self, message: ucx::AmMessage) {
        let Some(peer_index) = self
            .peers
            .iter()
            .position(|peer| peer.endpoint.as_ref().is_some_and(|endpoint| Some(endpoint.id()) == message.endpoint))
        else {
            return;
        };
        if message.id == AM_LOOKUP {
            return self.on_lookup_answer(peer_index, &message.payload);
        }
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
        peer.catalogue_generation = catalogue.generation;
        if matches!(peer.state, PeerState::Connecting { .. }) {
            tracing::info!(peer = %peer.address, volumes = catalogue.volumes.len(), "exporter connected");
            peer.state = PeerState::Up;
            peer.backoff = backoff_min;
            peer.unanswered_handshakes = 0;
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
}
