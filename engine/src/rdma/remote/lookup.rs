//! Needle lookups asked of the exporter (`crate::rdma::lookup`): how a read finds its needle
//! in a volume whose index this reader does not hold. A volume read often has its index
//! pulled in the background (when it fits the budget), and its reads then look up locally.

use std::time::Duration;

use shm_layout::entry::ErrorCode;
use volume_format::index::IndexValue;

use super::slots::SlotState;
use super::RemoteReads;
use crate::rdma::lookup::{LookupAnswer, LookupRequest, LookupStatus, AM_LOOKUP_REQUEST};
use crate::read::routes::slot_of_token;

/// A lookup unanswered this long is sent again, once (the exporter drops what arrives while
/// its inbox is full); the read fails when the read timeout passes.
const LOOKUP_RESEND_AFTER: Duration = Duration::from_millis(200);
/// What one needle costs in a pulled index, at most (the compact index holds about 16.5
/// bytes a needle): a pull is started only when the volume's estimate fits the budget.
const PULLED_BYTES_PER_NEEDLE: u64 = 20;

impl RemoteReads {
    /// Asks the read's peer where its needle lies; the read waits for the answer.
    pub(super) fn send_lookup(&mut self, index: usize) {
        self.send_lookup_again(index, false);
    }

    /// Sends the read's lookup (`resent`: again, after no answer).
    fn send_lookup_again(&mut self, index: usize, resent: bool) {
        let slot = &mut self.slots[index];
        slot.state = SlotState::WaitLookup { resent };
        slot.posted_at = self.now;
        let request =
            LookupRequest { token: slot.token, needle_id: slot.read.needle_id, volume_id: slot.read.volume_id };
        let Some(endpoint) = self.peers[slot.peer].endpoint.as_ref() else {
            return self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        };
        if let Err(error) = endpoint.am_send(AM_LOOKUP_REQUEST, &[], &request.encode()) {
            tracing::debug!(peer = %self.peers[slot.peer].address, %error, "cannot send a lookup");
            return self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        }
        if !resent {
            self.lookups_sent += 1;
            crate::metrics::METRICS.count_remote_needle_lookup();
        }
    }

    /// Counts a lookup of `volume_id` and starts pulling its whole index in the background
    /// once the volume has been read often enough and its index fits the budget.
    pub(super) fn note_lookup(&mut self, peer_index: usize, volume_id: u32) {
        let (pull_after, budget) = (self.config.index_pull_after_lookups, self.config.index_budget_bytes as u64);
        let Some(volume) = self.peers[peer_index].volumes.get_mut(&volume_id) else { return };
        // A lookup answered after the pull completed.
        if volume.index_loaded {
            return;
        }
        volume.lookups = volume.lookups.saturating_add(1);
        let entry_bytes = volume.index.width().entry_size_bytes() as u64;
        let estimate = volume.index_target_bytes / entry_bytes * PULLED_BYTES_PER_NEEDLE;
        if pull_after > 0 && volume.lookups >= pull_after && !volume.index_wanted && estimate <= budget {
            volume.index_wanted = true;
            self.pump_index(peer_index);
        }
    }

    /// An exporter answered a lookup: the read it names moves on. Answers for reads no longer
    /// waiting (canceled, timed out, a later read in the slot) are dropped.
    pub(super) fn on_lookup_answer(&mut self, peer_index: usize, payload: &[u8]) {
        let answer = match LookupAnswer::decode(payload) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(peer = %self.peers[peer_index].address, %error, "ignoring a bad lookup answer");
                return;
            }
        };
        let index = slot_of_token(answer.token);
        let waiting = self.slots.get(index).is_some_and(|slot| {
            slot.token == answer.token
                && matches!(slot.state, SlotState::WaitLookup { .. })
                && slot.peer == peer_index
                && slot.read.volume_id == answer.volume_id
                && slot.read.needle_id == answer.needle_id
        });
        if !waiting {
            return;
        }
        match answer.status {
            LookupStatus::Found => self.found(index, &answer),
            LookupStatus::NoSuchNeedle => self.finish(index, Err((ErrorCode::NO_SUCH_NEEDLE, 0))),
            LookupStatus::Deleted => self.finish(index, Err((ErrorCode::DELETED, 0))),
            LookupStatus::NoSuchVolume => self.refresh_then(index, ErrorCode::NO_SUCH_VOLUME),
            LookupStatus::Replaced => self.refresh_then(index, ErrorCode::PEER_UNAVAILABLE),
            LookupStatus::Refused => {
                self.lookups_refused += 1;
                if self.lookups_refused.is_power_of_two() {
                    tracing::warn!(peer = %self.peers[peer_index].address, refused = self.lookups_refused, "the exporter refused a lookup: it did not accept this connection's read token");
                }
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)))
            }
        }
    }

    fn found(&mut self, index: usize, answer: &LookupAnswer) {
        let peer_index = self.slots[index].peer;
        let Some(volume) = self.peers[peer_index].volumes.get(&answer.volume_id) else {
            return self.finish(index, Err((ErrorCode::NO_SUCH_VOLUME, 0)));
        };
        // Found in other files than the catalogue's rkeys address: ask for the catalogue.
        if volume.generation != answer.generation {
            return self.refresh_then(index, ErrorCode::PEER_UNAVAILABLE);
        }
        let (version, Some(files)) = (volume.version, volume.files.clone()) else {
            return self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
        };
        self.note_lookup(peer_index, answer.volume_id);
        let location = IndexValue { offset_bytes: answer.offset_bytes, size: answer.size };
        self.begin_transfer(index, location, version, files);
    }

    /// Asks for the catalogue once and looks up again; the second time, fails with `code`.
    fn refresh_then(&mut self, index: usize, code: ErrorCode) {
        let slot = &mut self.slots[index];
        if slot.refreshed {
            return self.finish(index, Err((code, 0)));
        }
        slot.refreshed = true;
        self.wait_catalogue(index);
    }

    /// Sends unanswered lookups again once, and fails those unanswered past the read timeout
    /// (bounded: one pass over the table, from the timeout scan).
    pub(super) fn scan_lookups(&mut self) {
        let read_timeout = self.config.read_timeout;
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            let SlotState::WaitLookup { resent } = slot.state else { continue };
            let waited = self.now.duration_since(slot.posted_at);
            if waited > read_timeout {
                self.finish(index, Err((ErrorCode::PEER_UNAVAILABLE, 0)));
            } else if !resent && waited > LOOKUP_RESEND_AFTER {
                // The read's time runs from its first lookup.
                let posted_at = slot.posted_at;
                self.send_lookup_again(index, true);
                if let Some(slot) = self.slots.get_mut(index).filter(|slot| slot.is_active()) {
                    slot.posted_at = posted_at;
                }
            }
        }
    }
}
