//! Index pulls: a volume's `.idx` (whole, for a volume read often, then its tails) fetched
//! over RDMA into the peer's staging buffer and applied to the cached `NeedleIndex`, one chunk
//! at a time per peer; a read of a volume whose index is cached waits for it to catch up with
//! what the catalogue announced.

use std::rc::Rc;

use shm_layout::entry::ErrorCode;

use super::peer::VolumeFiles;
use super::slots::SlotState;
use super::transfer::{post_gets, Transfer};
use super::RemoteReads;
use volume_format::index::NeedleIndex;

/// Token bit marking an index pull's gets (the low bits are the peer's index); read tokens
/// never have it (the read table's generations use 31 bits).
pub(super) const JOB_TOKEN_BIT: u64 = 1 << 63;

/// Pulling one chunk of a volume's `.idx` into the peer's staging buffer.
#[derive(Debug)]
pub(super) struct IndexJob {
    volume_id: u32,
    generation: u64,
    /// `index.applied_bytes()` when the chunk was asked for: where the chunk starts.
    start_bytes: u64,
    /// Pins the rkeys the gets use.
    files: Rc<VolumeFiles>,
    transfer: Transfer,
    pub(super) gets_pending: u32,
    failed: bool,
}

impl RemoteReads {
    /// Starts the next index chunk pull of this peer, if none runs and a read waits for one.
    pub(super) fn pump_index(&mut self, peer_index: usize) {
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
            transfer: Transfer::new(start_bytes, length_bytes, peer.staging.base()),
            gets_pending: 0,
            failed: false,
        });
        self.post_job(peer_index);
    }

    fn post_job(&mut self, peer_index: usize) {
        let get_max_bytes = self.config.get_max_bytes;
        let peer = &mut self.peers[peer_index];
        let (Some(job), Some(endpoint)) = (peer.job.as_mut(), peer.endpoint.as_ref()) else { return };
        let token = JOB_TOKEN_BIT | peer_index as u64;
        let staging = &peer.staging_region;
        if post_gets(
            endpoint,
            &job.files.idx,
            &mut job.transfer,
            &mut job.gets_pending,
            (token, get_max_bytes),
            |_, _| Some(staging),
        )
        .is_err()
        {
            job.failed = true;
        }
        if job.gets_pending == 0 && (job.failed || job.transfer.posted_all()) {
            self.job_done(peer_index);
        }
    }

    pub(super) fn on_job_get_done(&mut self, peer_index: usize, ok: bool) {
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
            // One part of a longer replay: the index settles once it has caught up.
            volume.index.apply_part(bytes);
        }
        if !volume.index_behind() {
            volume.index.settle();
            volume.index_loaded = true;
            volume.index_wanted = false;
            self.keep_indexes_within_budget((peer_index, volume_id));
            self.wake_index_waiters(peer_index, volume_id, None);
        }
        self.pump_index(peer_index);
    }

    /// Whether an index pull is running (its gets may be in flight).
    pub fn pulling_an_index(&self) -> bool {
        self.peers.iter().any(|peer| peer.job.is_some())
    }

    /// Bytes the cached remote indexes hold.
    pub fn index_bytes(&self) -> usize {
        self.peers.iter().flat_map(|peer| peer.volumes.values()).map(|volume| volume.index.memory_bytes()).sum()
    }

    /// Drops the cached indexes read least recently until all of them fit the budget, never
    /// `keep`'s (just pulled for a waiting read), one being pulled, or one a read waits for.
    /// A dropped index's volume is read through the exporter's lookups again (and pulled
    /// again once read often).
    fn keep_indexes_within_budget(&mut self, keep: (usize, u32)) {
        let budget = self.config.index_budget_bytes;
        let mut total = self.index_bytes();
        // Bounded: each pass drops one index, or stops.
        while total > budget {
            let pulling = |peer_index: usize, volume_id: u32| {
                self.peers[peer_index].job.as_ref().is_some_and(|job| job.volume_id == volume_id)
            };
            let victim = self
                .peers
                .iter()
                .enumerate()
                .flat_map(|(peer_index, peer)| peer.volumes.iter().map(move |(&id, volume)| (peer_index, id, volume)))
                .filter(|&(peer_index, id, volume)| {
                    (peer_index, id) != keep
                        && volume.index.applied_bytes() > 0
                        && !volume.index_wanted
                        && !pulling(peer_index, id)
                })
                .min_by_key(|(_, _, volume)| volume.last_read)
                .map(|(peer_index, id, _)| (peer_index, id));
            let Some((peer_index, volume_id)) = victim else { break };
            let Some(volume) = self.peers[peer_index].volumes.get_mut(&volume_id) else { break };
            total -= volume.index.memory_bytes();
            volume.index = NeedleIndex::new(volume.index.width());
            volume.index_loaded = false;
            volume.lookups = 0;
            self.index_evictions += 1;
            crate::metrics::METRICS.count_remote_index_eviction();
            if self.index_evictions.is_power_of_two() {
                tracing::info!(
                    volume = volume_id,
                    peer = %self.peers[peer_index].address,
                    budget_bytes = budget,
                    evictions = self.index_evictions,
                    "dropped a cached remote index over the budget (--remote-index-budget-mib); its next read pulls it again"
                );
            }
        }
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
}
