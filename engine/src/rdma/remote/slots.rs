//! The table of reads in flight and the first half of their state machine: lookup in the cached
//! index (or by the exporter, `lookup`), then gets posted into the client's buffer (or the
//! slot's scratch). What happens once a phase's gets have landed is in [`super::landed`].
//!
//! Slots are indexed by the slot of the read table's token (`crate::read::routes`): the engine
//! has one token scheme, `generation << 32 | slot`. A slot is `Free`, or holds one started read
//! until its completion is popped. Its gets carry the read's token, whose generation changes
//! with every read of the table slot, so a late completion can never be taken for a later
//! read's.

use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Instant;

use shm_layout::entry::{ErrorCode, NeedleRead};
use volume_format::index::IndexValue;
use volume_format::needle::record_size_bytes;
use volume_format::version::Version;

use super::peer::VolumeFiles;
use super::transfer::{post_gets, Transfer};
use super::{ReadResult, RemoteReads};
use crate::read::fetch::{Into, NeedleFetch, Step, SCRATCH_BYTES};

/// Per-slot scratch of a read in flight (the record prefix and the meta of a range read).
pub(super) const SCRATCH_SLOT_BYTES: usize = SCRATCH_BYTES;

/// A get of a few record bytes into the slot's scratch (a range read's meta).
#[derive(Clone, Copy, Debug)]
pub(super) struct ScratchGet {
    pub(super) remote_offset: u64,
    pub(super) length_bytes: u64,
    pub(super) scratch_offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// Waiting for a catalogue answer with request id `after_request` or later.
    WaitCatalogue {
        after_request: u64,
    },
    WaitIndex,
    /// Waiting for the exporter's answer to a needle lookup (sent again once if `!resent`).
    WaitLookup {
        resent: bool,
    },
    Transfer,
    /// Finished; the completion waits in `done`.
    Done,
}

/// One read in flight.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    pub(super) token: u64,
    pub(super) region_id: u64,
    pub(super) read: NeedleRead,
    pub(super) buffer: *mut u8,
    pub(super) peer: usize,
    pub(super) version: Version,
    pub(super) location: IndexValue,
    /// The catalogue was asked again for this read (index miss or stale length): once only.
    pub(super) refreshed: bool,
    /// A failed check was retried: once only.
    pub(super) retried: bool,
    /// The read's phases (what to get, the check once landed); set when its gets begin.
    pub(super) fetch: Option<NeedleFetch>,
    /// The phase's get into the client's buffer.
    pub(super) transfer: Transfer,
    /// The phase's gets into the scratch (a record prefix, a range read's meta): not posted yet.
    pub(super) meta_gets: [Option<ScratchGet>; 3],
    pub(super) gets_pending: u32,
    pub(super) get_failed: Option<ErrorCode>,
    pub(super) canceled: bool,
    /// Pins the rkeys the gets use.
    pub(super) files: Option<Rc<VolumeFiles>>,
    pub(super) posted_at: Instant,
    pub(super) result: ReadResult,
}

impl Slot {
    pub(super) fn new(now: Instant) -> Slot {
        Slot {
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
            fetch: None,
            transfer: Transfer::EMPTY,
            meta_gets: [None; 3],
            gets_pending: 0,
            get_failed: None,
            canceled: false,
            files: None,
            posted_at: now,
            result: Err((ErrorCode::IO_ERROR, 0)),
        }
    }

    /// Takes a free slot for a new read, waiting for its index lookup.
    pub(super) fn start(&mut self, token: u64, region_id: u64, read: &NeedleRead, buffer: *mut u8, peer: usize) {
        debug_assert_eq!(self.state, SlotState::Free, "a read started in a busy slot");
        self.token = token;
        self.region_id = region_id;
        self.read = *read;
        self.buffer = buffer;
        self.peer = peer;
        self.refreshed = false;
        self.retried = false;
        self.canceled = false;
        self.get_failed = None;
        self.gets_pending = 0;
        self.meta_gets = [None; 3];
        self.fetch = None;
        self.state = SlotState::WaitIndex;
    }

    /// Frees a `Done` slot; later completions carrying its token are ignored.
    pub(super) fn free(&mut self) {
        self.state = SlotState::Free;
    }

    /// Whether every get of the current phase was posted (or done in place).
    pub(super) fn posted_all(&self) -> bool {
        self.transfer.posted_all() && self.meta_gets.iter().all(Option::is_none)
    }

    /// Whether a read is started and not finished: it can be canceled or time out.
    pub(super) fn is_active(&self) -> bool {
        !matches!(self.state, SlotState::Free | SlotState::Done)
    }
}

impl RemoteReads {
    /// Moves a slot on from lookup: to a transfer, a wait, or its end.
    pub(super) fn advance(&mut self, index: usize) {
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
        if !volume.index_loaded {
            // The exporter looks the needle up (`lookup`): the first read of a volume costs
            // one round trip, not a whole index pull.
            return self.send_lookup(index);
        }
        if volume.index_behind() {
            volume.index_wanted = true;
            self.slots[index].state = SlotState::WaitIndex;
            return self.pump_index(peer_index);
        }
        let version = volume.version;
        self.read_clock += 1;
        volume.last_read = self.read_clock;
        match volume.index.get(needle_id) {
            Some(location) => self.begin_transfer(index, location, version, files),
            None if !self.slots[index].refreshed => {
                self.slots[index].refreshed = true;
                self.wait_catalogue(index);
            }
            None if volume.index.is_deleted(needle_id) => self.finish(index, Err((ErrorCode::DELETED, 0))),
            None => self.finish(index, Err((ErrorCode::NO_SUCH_NEEDLE, 0))),
        }
    }

    pub(super) fn begin_transfer(
        &mut self,
        index: usize,
        location: IndexValue,
        version: Version,
        files: Rc<VolumeFiles>,
    ) {
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
        // A stale index (volume replaced) can claim another size: ask once before saying so.
        if slot.read.range.is_none() && record_size > buffer_length && !slot.refreshed {
            slot.refreshed = true;
            return self.wait_catalogue(index);
        }
        let (fetch, step) = NeedleFetch::begin(&slot.read, version, location.offset_bytes, location.size);
        slot.version = version;
        slot.location = location;
        slot.fetch = Some(fetch);
        slot.files = Some(files);
        slot.state = SlotState::Transfer;
        slot.posted_at = self.now;
        self.take_step(index, step);
    }

    /// Goes on as the read's [`NeedleFetch`] says: post the next phase's gets, or finish.
    pub(super) fn take_step(&mut self, index: usize, step: Step) {
        let pieces = match step {
            Step::Done(result) => return self.finish(index, result),
            Step::CheckFailed(code) => return self.check_failed(index, code),
            Step::Fetch(pieces) => pieces,
        };
        let slot = &mut self.slots[index];
        let (buffer, scratch) = (NonNull::new(slot.buffer), NonNull::new(self.scratch.at(index * SCRATCH_SLOT_BYTES)));
        let (Some(buffer), Some(scratch)) = (buffer, scratch) else {
            return self.finish(index, Err((ErrorCode::IO_ERROR, 0)));
        };
        slot.transfer = Transfer::new(0, 0, slot.buffer);
        slot.meta_gets = [None; 3];
        for (piece, meta_get) in pieces.iter().flatten().zip(slot.meta_gets.iter_mut()) {
            let Some(destination) = piece.destination(buffer, slot.read.buffer_length, scratch) else {
                return self.finish(index, Err((ErrorCode::IO_ERROR, 0)));
            };
            match piece.into {
                Into::Buffer => {
                    slot.transfer = Transfer::new(piece.file_offset, piece.length_bytes, destination.as_ptr())
                }
                Into::Scratch(scratch_offset) => {
                    *meta_get = Some(ScratchGet {
                        remote_offset: piece.file_offset,
                        length_bytes: piece.length_bytes,
                        scratch_offset,
                    })
                }
            }
        }
        self.post_slot(index);
    }

    /// Posts the slot's remaining gets (bounded per round); finishes the phase when nothing is
    /// left in flight.
    pub(super) fn post_slot(&mut self, index: usize) {
        let RemoteReads { slots, peers, areas, scratch_region, scratch, config, .. } = self;
        let get_max_bytes = config.get_max_bytes;
        let slot = &mut slots[index];
        let token = slot.token;
        let (Some(files), Some(endpoint)) = (slot.files.as_ref(), peers[slot.peer].endpoint.as_ref()) else {
            slot.get_failed.get_or_insert(ErrorCode::PEER_UNAVAILABLE);
            return self.transfer_done(index);
        };
        for pending_get in slot.meta_gets.iter_mut() {
            let Some(get) = pending_get.take() else { continue };
            let destination = scratch.at(index * SCRATCH_SLOT_BYTES + get.scratch_offset);
            let mut small = Transfer::new(get.remote_offset, get.length_bytes, destination);
            let local = |_: *mut u8, _: u64| Some(&*scratch_region);
            if let Err(code) =
                post_gets(endpoint, &files.dat, &mut small, &mut slot.gets_pending, (token, u64::MAX), local)
            {
                slot.get_failed.get_or_insert(code);
            }
            // Out of gets for this round (a piece boundary): the rest goes in the next one.
            if !small.posted_all() && slot.get_failed.is_none() {
                *pending_get = Some(ScratchGet {
                    remote_offset: get.remote_offset + small.posted_bytes,
                    length_bytes: get.length_bytes - small.posted_bytes,
                    scratch_offset: get.scratch_offset + small.posted_bytes as usize,
                });
            }
        }
        if slot.get_failed.is_none() {
            let area = areas.get(&slot.region_id);
            let local = |pointer: *mut u8, length: u64| match area {
                Some(area) if area.contains(pointer, length) => area.region_for(pointer, length),
                _ => Some(&*scratch_region),
            };
            if let Err(code) = post_gets(
                endpoint,
                &files.dat,
                &mut slot.transfer,
                &mut slot.gets_pending,
                (token, get_max_bytes),
                local,
            ) {
                slot.get_failed.get_or_insert(code);
            }
        }
        if slot.gets_pending == 0 && (slot.posted_all() || slot.get_failed.is_some()) {
            self.transfer_done(index);
        }
    }

    pub(super) fn on_slot_get_done(&mut self, index: usize, token: u64, ok: bool) {
        let slot = &mut self.slots[index];
        if slot.token != token || slot.state != SlotState::Transfer || slot.gets_pending == 0 {
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
        // A canceled read posts no further round: it completes once what is in flight landed.
        if slot.get_failed.is_none() && !slot.canceled && !slot.posted_all() {
            return self.post_slot(index);
        }
        self.transfer_done(index);
    }

    /// Ends a read: its completion waits in `done` until popped.
    pub(super) fn finish(&mut self, index: usize, result: ReadResult) {
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
}
