//! The second half of a read's state machine: every get of a phase has landed. The read's
//! [`NeedleFetch`](crate::read::fetch::NeedleFetch) checks it (`crate::read::check`, the one
//! check every transport shares) and says what comes next; a failed check refreshes the
//! catalogue and retries once.

use std::ptr::NonNull;

use shm_layout::entry::ErrorCode;

use super::slots::SCRATCH_SLOT_BYTES;
use super::RemoteReads;
use crate::read::fetch::SCRATCH_BYTES;

impl RemoteReads {
    /// Every get of the current phase has landed: check and move on.
    pub(super) fn transfer_done(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.canceled {
            return self.finish(index, Err((ErrorCode::CANCELED, 0)));
        }
        if let Some(code) = slot.get_failed {
            return self.finish(index, Err((code, 0)));
        }
        let (Some(fetch), Some(buffer)) = (slot.fetch.as_mut(), NonNull::new(slot.buffer)) else {
            return self.finish(index, Err((ErrorCode::IO_ERROR, 0)));
        };
        // SAFETY: every get of this slot's phase into its scratch has completed.
        let scratch = unsafe { self.scratch.slice(index * SCRATCH_SLOT_BYTES, SCRATCH_BYTES) };
        let Ok(scratch) = <&[u8; SCRATCH_BYTES]>::try_from(scratch) else {
            return self.finish(index, Err((ErrorCode::IO_ERROR, 0)));
        };
        // SAFETY: `buffer` is the read's validated buffer range and its gets have all landed.
        let step = unsafe { fetch.landed(buffer, scratch, &mut self.check_copy) };
        self.take_step(index, step);
    }

    /// A landed needle failed its check: the index or the catalogue may be stale (volume
    /// compacted or replaced). Refresh and retry once; then fail with the check's code.
    pub(super) fn check_failed(&mut self, index: usize, code: ErrorCode) {
        let slot = &mut self.slots[index];
        if slot.retried {
            return self.finish(index, Err((code, 0)));
        }
        slot.retried = true;
        slot.refreshed = true;
        slot.files = None;
        self.wait_catalogue(index);
    }
}
