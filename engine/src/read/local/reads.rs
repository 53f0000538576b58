//! Local reads in flight: each read's [`NeedleFetch`] phases become positioned reads handed to
//! the I/O backend ([`super::io`]); when a phase's pieces have all landed the read is checked,
//! goes on to its next phase, is retried once on a replaced volume, or completes.
//!
//! State is kept per read in a slot of the read table's size, indexed by the slot of the
//! table's token ([`slot_of_token`]): the token scheme is the table's, not a second one. An
//! operation's user data is `slot << 2 | piece`. A read stays in its slot, holding its `.dat`
//! open, until every operation it started has answered, so nothing the kernel or a pread
//! thread writes can land in a buffer that was handed back.

use std::collections::VecDeque;
use std::fs::File;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use shm_layout::entry::{ErrorCode, NeedleRead};

use super::io::{LocalIo, Operation, OPERATION_BYTES_MAX};
use super::LocalVolumes;
use crate::rdma::staging::RawBuffer;
use crate::read::fetch::{NeedleFetch, Pieces, Step, SCRATCH_BYTES};
use crate::read::routes::slot_of_token;
use crate::read::ReadResult;

/// Retries of an operation the kernel answered with `EINTR` or `EAGAIN`.
const RETRIES_MAX: u8 = 8;
const PIECE_BITS: u64 = 2;

/// What starting a local read did.
#[derive(Debug)]
pub enum Started {
    /// It is over already (an index miss, a buffer too small): this is its result.
    Done(ReadResult),
    /// Its completion comes from [`LocalVolumes::poll_completion`].
    InFlight,
}

/// One piece of a phase being read.
#[derive(Clone, Copy, Debug)]
struct PieceProgress {
    destination: *mut u8,
    file_offset: u64,
    remaining_bytes: u64,
    retries: u8,
}

/// A read in flight.
#[derive(Debug)]
struct InFlight {
    token: u64,
    region_id: u64,
    read: NeedleRead,
    buffer: NonNull<u8>,
    fetch: NeedleFetch,
    file: Arc<File>,
    pieces: [Option<PieceProgress>; 3],
    operations_pending: u32,
    failed: Option<ErrorCode>,
    canceled: bool,
    retried: bool,
}

/// The asynchronous half of the local transport.
#[derive(Debug)]
pub(super) struct LocalReads {
    io: LocalIo,
    slots: Vec<Option<InFlight>>,
    /// Each slot's scratch (`SCRATCH_BYTES`), written behind Rust's back by the backend.
    scratch: RawBuffer,
    in_flight: usize,
    done: VecDeque<(u64, ReadResult)>,
}

// SAFETY: the raw pointers point into region mappings (held until release_region says no read
// targets them) and into this value's own scratch; only the thread that owns the value uses
// them, and nothing in it is tied to the thread that made it.
unsafe impl Send for LocalReads {}

impl LocalReads {
    pub(super) fn new(io: LocalIo, capacity: usize) -> LocalReads {
        LocalReads {
            io,
            slots: (0..capacity).map(|_| None).collect(),
            scratch: RawBuffer::new(capacity * SCRATCH_BYTES),
            in_flight: 0,
            done: VecDeque::with_capacity(capacity),
        }
    }

    pub(super) fn backend(&self) -> &'static str {
        self.io.name()
    }

    fn scratch_of(&self, slot: usize) -> NonNull<u8> {
        NonNull::new(self.scratch.at(slot * SCRATCH_BYTES)).unwrap_or(NonNull::dangling())
    }

    /// Queues the pieces of a phase of the read in `slot`; a piece that would not fit where it
    /// goes fails the read (never written out of bounds).
    fn queue_phase(&mut self, slot: usize, pieces: &Pieces) -> Result<(), ErrorCode> {
        let scratch = self.scratch_of(slot);
        let Some(entry) = self.slots[slot].as_mut() else { return Err(ErrorCode::IO_ERROR) };
        entry.pieces = [None; 3];
        for (index, piece) in pieces.iter().enumerate() {
            let Some(piece) = piece else { continue };
            let destination =
                piece.destination(entry.buffer, entry.read.buffer_length, scratch).ok_or(ErrorCode::IO_ERROR)?;
            entry.pieces[index] = Some(PieceProgress {
                destination: destination.as_ptr(),
                file_offset: piece.file_offset,
                remaining_bytes: piece.length_bytes,
                retries: 0,
            });
        }
        for index in 0..entry.pieces.len() {
            if let Some(piece) = entry.pieces[index] {
                entry.operations_pending += 1;
                self.io.push(operation(slot, index, &piece, &entry.file));
            }
        }
        Ok(())
    }
}

fn operation(slot: usize, piece_index: usize, piece: &PieceProgress, file: &Arc<File>) -> Operation {
    Operation {
        user_data: (slot as u64) << PIECE_BITS | piece_index as u64,
        file: Arc::clone(file),
        destination: piece.destination,
        length_bytes: piece.remaining_bytes.min(OPERATION_BYTES_MAX) as u32,
        file_offset: piece.file_offset,
    }
}

impl LocalVolumes {
    /// Starts reading `read` into `buffer` (its validated buffer range, in the region
    /// `region_id`) as read `token` of the read table; without an I/O backend the read is done
    /// at once with `pread`.
    pub fn start(&mut self, token: u64, region_id: u64, read: &NeedleRead, buffer: NonNull<u8>) -> Started {
        if self.reads.is_none() {
            return Started::Done(self.read(read, buffer));
        }
        let (volume_file, fetch, step) = match self.begin(read) {
            Ok(begun) => begun,
            Err(error) => return Started::Done(Err(error)),
        };
        let pieces = match step {
            Step::Fetch(pieces) => pieces,
            Step::Done(result) => return Started::Done(result),
            Step::CheckFailed(code) => return Started::Done(Err((code, 0))),
        };
        let Some(reads) = self.reads.as_mut() else { return Started::Done(Err((ErrorCode::IO_ERROR, 0))) };
        let slot = slot_of_token(token);
        if reads.slots.get(slot).is_none_or(Option::is_some) {
            tracing::error!(token, "local read slot busy or out of range");
            return Started::Done(Err((ErrorCode::IO_ERROR, 0)));
        }
        reads.slots[slot] = Some(InFlight {
            token,
            region_id,
            read: *read,
            buffer,
            fetch,
            file: volume_file,
            pieces: [None; 3],
            operations_pending: 0,
            failed: None,
            canceled: false,
            retried: false,
        });
        reads.in_flight += 1;
        if let Err(code) = reads.queue_phase(slot, &pieces) {
            self.phase_failed(slot, code);
        }
        Started::InFlight
    }

    /// Locates the needle (refreshing the index as [`LocalVolumes::read`] does) and begins its
    /// fetch.
    fn begin(&mut self, read: &NeedleRead) -> Result<(Arc<File>, NeedleFetch, Step), (ErrorCode, u64)> {
        let location = self.locate_fresh(read, Instant::now())?;
        let volume = &self.volumes.get(&read.volume_id).ok_or((ErrorCode::NO_SUCH_VOLUME, 0))?.volume;
        let (fetch, step) = NeedleFetch::begin(read, volume.version(), location.offset_bytes, location.size);
        Ok((volume.shared_dat_file(), fetch, step))
    }

    /// Submits what was queued and moves on every read whose pieces have landed.
    pub fn progress(&mut self) {
        let Some(reads) = self.reads.as_mut() else { return };
        if reads.in_flight == 0 {
            return;
        }
        reads.io.submit();
        let mut answers = std::mem::take(&mut self.answers);
        answers.clear();
        reads.io.reap(&mut |user_data, result| answers.push((user_data, result)));
        for &(user_data, result) in &answers {
            self.on_answer(user_data, result);
        }
        self.answers = answers;
        // What the landed phases queued (next phases, retries) starts now, not next pass.
        if let Some(reads) = self.reads.as_mut() {
            reads.io.submit();
        }
    }

    /// One operation answered: the bytes it read, or `-errno`.
    fn on_answer(&mut self, user_data: u64, result: i64) {
        let (slot, piece_index) = ((user_data >> PIECE_BITS) as usize, (user_data & 3) as usize);
        let Some(reads) = self.reads.as_mut() else { return };
        let Some(entry) = reads.slots.get_mut(slot).and_then(Option::as_mut) else {
            tracing::error!(user_data, "local read answer for a free slot");
            return;
        };
        let Some(piece) = entry.pieces[piece_index].as_mut() else { return };
        let again = match result {
            read if read > 0 => {
                let read = (read as u64).min(piece.remaining_bytes);
                piece.remaining_bytes -= read;
                // SAFETY: `read` bytes of the piece landed; the rest of it stays in range.
                piece.destination = unsafe { piece.destination.add(read as usize) };
                piece.file_offset += read;
                piece.remaining_bytes > 0
            }
            // End of file inside a record: the volume was truncated under us.
            0 => {
                entry.failed.get_or_insert(ErrorCode::IO_ERROR);
                false
            }
            error
                if (error == -i64::from(libc::EINTR) || error == -i64::from(libc::EAGAIN))
                    && piece.retries < RETRIES_MAX =>
            {
                piece.retries += 1;
                true
            }
            error => {
                tracing::debug!(errno = -error, "local read failed");
                entry.failed.get_or_insert(ErrorCode::IO_ERROR);
                false
            }
        };
        if again && entry.failed.is_none() && !entry.canceled {
            let piece = *piece;
            let operation = operation(slot, piece_index, &piece, &entry.file);
            reads.io.push(operation);
            return;
        }
        entry.operations_pending -= 1;
        if entry.operations_pending == 0 {
            self.phase_landed(slot);
        }
    }

    /// Every piece of the read in `slot` landed: check it and go on.
    fn phase_landed(&mut self, slot: usize) {
        let Some(reads) = self.reads.as_mut() else { return };
        let scratch = reads.scratch_of(slot);
        let Some(entry) = reads.slots[slot].as_mut() else { return };
        if entry.canceled {
            return self.finish(slot, Err((ErrorCode::CANCELED, 0)));
        }
        if let Some(code) = entry.failed {
            return self.finish(slot, Err((code, 0)));
        }
        // SAFETY: every operation of the phase answered, so nothing writes the scratch or the
        // buffer range; the scratch is SCRATCH_BYTES long at this slot's offset.
        let step = unsafe { entry.fetch.landed(entry.buffer, &*scratch.as_ptr().cast(), &mut self.copy) };
        match step {
            Step::Fetch(pieces) => {
                if let Err(code) = reads.queue_phase(slot, &pieces) {
                    self.phase_failed(slot, code);
                }
            }
            Step::Done(result) => self.finish(slot, result),
            Step::CheckFailed(code) => self.check_failed(slot, code),
        }
    }

    /// A landed needle failed its check: if the volume was replaced meanwhile (compacted),
    /// read it again once from the new files; else fail with the check's code.
    fn check_failed(&mut self, slot: usize, code: ErrorCode) {
        let Some(entry) = self.reads.as_ref().and_then(|reads| reads.slots[slot].as_ref()) else { return };
        let (read, retried) = (entry.read, entry.retried);
        let replaced = self.volumes.get(&read.volume_id).is_some_and(|served| served.volume.is_replaced());
        if retried || !replaced {
            return self.finish(slot, Err((code, 0)));
        }
        self.refresh(read.volume_id);
        let (file, fetch, step) = match self.begin(&read) {
            Ok(begun) => begun,
            Err(error) => return self.finish(slot, Err(error)),
        };
        let Some(reads) = self.reads.as_mut() else { return };
        let Some(entry) = reads.slots[slot].as_mut() else { return };
        (entry.file, entry.fetch, entry.retried) = (file, fetch, true);
        match step {
            Step::Fetch(pieces) => {
                if let Err(code) = reads.queue_phase(slot, &pieces) {
                    self.phase_failed(slot, code);
                }
            }
            Step::Done(result) => self.finish(slot, result),
            Step::CheckFailed(code) => self.finish(slot, Err((code, 0))),
        }
    }

    /// Queuing a phase failed: the read ends once what it already started has answered.
    fn phase_failed(&mut self, slot: usize, code: ErrorCode) {
        let Some(entry) = self.reads.as_mut().and_then(|reads| reads.slots[slot].as_mut()) else { return };
        entry.failed.get_or_insert(code);
        if entry.operations_pending == 0 {
            self.finish(slot, Err((code, 0)));
        }
    }

    fn finish(&mut self, slot: usize, result: ReadResult) {
        let Some(reads) = self.reads.as_mut() else { return };
        let Some(entry) = reads.slots[slot].take() else { return };
        reads.in_flight -= 1;
        // Bounded: one completion per read in flight, and the queue holds the table's capacity.
        reads.done.push_back((entry.token, result));
    }

    /// The next finished read: its token and result.
    pub fn poll_completion(&mut self) -> Option<(u64, ReadResult)> {
        self.reads.as_mut()?.done.pop_front()
    }

    /// Reads started and not yet handed back by [`LocalVolumes::poll_completion`].
    pub fn in_flight(&self) -> usize {
        self.reads.as_ref().map_or(0, |reads| reads.in_flight + reads.done.len())
    }

    /// Whether answers or completions wait to be picked up.
    pub fn has_completions(&mut self) -> bool {
        self.reads.as_mut().is_some_and(|reads| !reads.done.is_empty() || reads.io.has_completions())
    }

    /// Cancels read `token`: it completes with `CANCELED` once what it started has landed.
    pub fn cancel(&mut self, token: u64) {
        let Some(reads) = self.reads.as_mut() else { return };
        if let Some(entry) = reads.slots.get_mut(slot_of_token(token)).and_then(Option::as_mut) {
            entry.canceled |= entry.token == token;
        }
    }

    /// True once no local read can write into the region's buffers any more.
    pub fn release_region(&self, region_id: u64) -> bool {
        self.reads.as_ref().is_none_or(|reads| reads.slots.iter().flatten().all(|entry| entry.region_id != region_id))
    }
}
