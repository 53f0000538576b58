//! The reply machine: a header, then a read's check bytes into the connection's private
//! scratch, then its data straight into the client's buffer, then the one landed-needle check.
//!
//! The reader runs the same fetch machine (`read::fetch`) as the exporter, from the needle's
//! version and index size the reply names: it says how long the record prefix is, where each
//! check byte goes in the scratch, and how much data the buffer takes. A reply whose lengths
//! are not exactly those is not the protocol's and closes the connection; data is never
//! received past the buffer the client's entry named.

use std::io;
use std::ptr::NonNull;

use volume_format::version::Version;

use super::connection::Receiving;
use super::{SlotState, StreamReads, VOLUMES_TOKEN};
use crate::read::fetch::{Into, NeedleFetch, Pieces, Step, SCRATCH_BYTES};
use crate::read::routes::slot_of_token;
use crate::stream::wire::{decode_volume_ids, kind, Reply, REPLY_HEADER_BYTES};

/// Receive calls per connection per `progress`, at most (each takes a part or what is there).
const RECEIVES_PER_PROGRESS_MAX: usize = 64;

/// What a received part leads to.
enum Next {
    /// Keep receiving.
    Continue,
    /// Nothing more to receive now.
    Blocked,
    /// The connection is unusable: close it, saying why.
    Fail(String),
}

impl StreamReads {
    /// Sends what peer `index`'s connections have queued and receives what they have.
    pub(super) fn progress_peer(&mut self, index: usize) {
        let mut connection = 0;
        // Bounded: each pass keeps or removes one connection.
        while connection < self.peers[index].connections.len() {
            if let Err(error) = self.peers[index].connections[connection].flush() {
                self.fail_connection(index, connection, &format!("sending failed: {error}"));
                continue;
            }
            let mut outcome = Next::Blocked;
            for _ in 0..RECEIVES_PER_PROGRESS_MAX {
                outcome = self.receive_part(index, connection);
                if !matches!(outcome, Next::Continue) {
                    break;
                }
            }
            if let Next::Fail(reason) = outcome {
                self.fail_connection(index, connection, &reason);
                continue;
            }
            connection += 1;
        }
        if !self.peers[index].waiting.is_empty() {
            self.send_waiting(index);
        }
    }

    /// Receives the next bytes of the part the connection is in, and acts on a part complete.
    fn receive_part(&mut self, index: usize, connection: usize) -> Next {
        let now = self.now;
        let target = &mut self.peers[index].connections[connection];
        let (destination, length) = match target.receiving {
            Receiving::Header => (NonNull::from(&mut target.header).cast::<u8>(), REPLY_HEADER_BYTES),
            Receiving::Check { reply, .. } => {
                (NonNull::from(&mut *target.check).cast::<u8>(), reply.check_length as usize)
            }
            Receiving::Volumes { reply } => (
                NonNull::new(target.volume_list.as_mut_ptr()).unwrap_or(NonNull::dangling()),
                reply.data_length as usize,
            ),
            Receiving::Data { slot, length } => (self.slots[slot].buffer, length as usize),
        };
        let filled = target.filled;
        // SAFETY: `destination..+length` is ours (header, check, the volume list sized to the
        // reply) or the read's buffer range, which the engine checked against the client's
        // buffer area and which no one else writes while the read is in flight; `length` is at
        // most the read's buffer length (checked in `on_header`/`on_check`).
        let received = unsafe { target.receive(destination.add(filled), length - filled) };
        match received {
            Ok(0) => return Next::Fail("the exporter closed the connection".into()),
            Ok(count) => {
                target.filled += count;
                target.waiting_since = Some(now);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Next::Blocked,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return Next::Continue,
            Err(error) => return Next::Fail(format!("receiving failed: {error}")),
        }
        if target.filled < length {
            return Next::Continue;
        }
        target.filled = 0;
        match target.receiving {
            Receiving::Header => self.on_header(index, connection),
            Receiving::Check { slot, reply, first } => self.on_check(index, connection, slot, reply, first),
            Receiving::Data { slot, .. } => self.on_data(index, connection, slot),
            Receiving::Volumes { reply } => self.on_volumes(index, connection, reply),
        }
    }

    /// A reply header arrived: check it against what is in flight, and say what follows.
    fn on_header(&mut self, index: usize, connection: usize) -> Next {
        let target = &mut self.peers[index].connections[connection];
        let reply = match Reply::decode(&target.header) {
            Ok(reply) => reply,
            Err(error) => return Next::Fail(format!("a reply that is not the protocol's: {error}")),
        };
        if !target.in_flight.contains(&reply.token) {
            return Next::Fail(format!("a reply to token {:#x}, which is not in flight on it", reply.token));
        }
        if reply.kind == kind::VOLUMES {
            if reply.token != VOLUMES_TOKEN {
                return Next::Fail("a volume list for a read's token".into());
            }
            target.volume_list.clear();
            target.volume_list.resize(reply.data_length as usize, 0);
            target.receiving = Receiving::Volumes { reply };
            return if reply.data_length == 0 { self.on_volumes(index, connection, reply) } else { Next::Continue };
        }
        let slot = slot_of_token(reply.token);
        if reply.token & VOLUMES_TOKEN != 0
            || self.slots.get(slot).is_none_or(|read| read.token != reply.token || read.state != SlotState::Sent)
        {
            return Next::Fail(format!("a read reply to token {:#x}, which is not a read in flight", reply.token));
        }
        if let Err(code) = reply.status {
            self.peers[index].connections[connection].reply_done(reply.token, self.now);
            self.finish(slot, Err((code, reply.aux)));
            return Next::Continue;
        }
        let Ok(version) = Version::from_byte(reply.version) else { return Next::Fail("a bad needle version".into()) };
        let read = &mut self.slots[slot];
        let (fetch, step) = NeedleFetch::begin(&read.read, version, 0, reply.index_size);
        read.fetch = Some(fetch);
        let Step::Fetch(pieces) = step else {
            return Next::Fail("data for a read whose buffer cannot hold it".into());
        };
        let target = &mut self.peers[index].connections[connection];
        if read.read.range.is_none() {
            // A whole read: no check bytes, the record is the data.
            let record = pieces[0].filter(|piece| piece.into == Into::Buffer && pieces[1].is_none());
            let fits = record.is_some_and(|piece| piece.length_bytes == u64::from(reply.data_length));
            if reply.check_length != 0 || !fits || reply.data_length > read.read.buffer_length {
                return Next::Fail("a whole read's reply whose lengths are not the record's".into());
            }
            target.receiving = Receiving::Data { slot, length: reply.data_length };
            return Next::Continue;
        }
        if reply.check_length == 0 {
            return Next::Fail("a range read's reply without check bytes".into());
        }
        target.receiving = Receiving::Check { slot, reply, first: pieces };
        Next::Continue
    }

    /// A range read's check bytes arrived: hand them to the fetch machine piece by piece, as it
    /// asks for them; the data that follows must be exactly the range it clamped.
    fn on_check(&mut self, index: usize, connection: usize, slot: usize, reply: Reply, first: Pieces) -> Next {
        let target = &mut self.peers[index].connections[connection];
        let read = &mut self.slots[slot];
        let Some(fetch) = read.fetch.as_mut() else { return Next::Fail("check bytes for no read".into()) };
        let check = &target.check[..reply.check_length as usize];
        let expected = place_check_bytes(fetch, first, check, &mut target.scratch);
        let fits = expected.is_some_and(|length| {
            length == u64::from(reply.data_length) && length <= u64::from(read.read.buffer_length)
        });
        if !fits {
            return Next::Fail("a range read's reply whose lengths are not the needle's".into());
        }
        if reply.data_length == 0 {
            return self.on_data(index, connection, slot);
        }
        target.receiving = Receiving::Data { slot, length: reply.data_length };
        Next::Continue
    }

    /// A read's data arrived in the client's buffer: check the needle and complete the read, or
    /// ask once more when the check failed.
    fn on_data(&mut self, index: usize, connection: usize, slot: usize) -> Next {
        let token = self.slots[slot].token;
        self.peers[index].connections[connection].reply_done(token, self.now);
        let target = &self.peers[index].connections[connection];
        let read = &mut self.slots[slot];
        let Some(fetch) = read.fetch.as_mut() else { return Next::Fail("data for no read".into()) };
        // SAFETY: every piece has landed in the read's validated buffer range and in the
        // connection's scratch, and nothing writes the buffer while the read is in flight.
        let step = unsafe { fetch.landed(read.buffer, &target.scratch, &mut self.check_copy) };
        match step {
            Step::Done(result) => self.finish(slot, result),
            Step::CheckFailed(_) if !read.retried && !read.canceled => {
                // The exporter looks the needle up again (a compaction may have moved it).
                read.retried = true;
                read.state = SlotState::Waiting;
                read.fetch = None;
                self.send(slot);
            }
            Step::CheckFailed(code) => self.finish(slot, Err((code, 0))),
            Step::Fetch(_) => return Next::Fail("a read that wants more than its reply carried".into()),
        }
        Next::Continue
    }

    /// A volume list arrived.
    fn on_volumes(&mut self, index: usize, connection: usize, reply: Reply) -> Next {
        let peer = &mut self.peers[index];
        let target = &mut peer.connections[connection];
        target.volumes_asked = false;
        target.reply_done(VOLUMES_TOKEN, self.now);
        peer.volumes.clear();
        peer.volumes.extend(decode_volume_ids(&target.volume_list));
        if !peer.listed || peer.generation != reply.aux {
            tracing::info!(peer = %peer.address, volumes = peer.volumes.len(), generation = reply.aux, "exporter's volume list");
        }
        peer.generation = reply.aux;
        peer.listed = true;
        Next::Continue
    }
}

/// Hands a range read's check bytes to its fetch machine piece by piece, as it asks for them
/// (the record prefix, then the fields after the data): the length of the data that must
/// follow, or `None` when the bytes are not exactly the needle's pieces. `first`: the pieces
/// the machine asked for first.
pub fn place_check_bytes(
    fetch: &mut NeedleFetch,
    first: Pieces,
    check: &[u8],
    scratch: &mut [u8; SCRATCH_BYTES],
) -> Option<u64> {
    let mut taken = 0usize;
    let mut step = Step::Fetch(first);
    // The prefix (one phase), then the range's pieces: at most two phases.
    for _phase in 0..2 {
        let Step::Fetch(pieces) = step else { return None };
        let mut data_length = None;
        for piece in pieces.iter().flatten() {
            match piece.into {
                Into::Buffer => data_length = Some(piece.length_bytes),
                Into::Scratch(offset) => {
                    let length = usize::try_from(piece.length_bytes).ok()?;
                    let source = check.get(taken..taken.checked_add(length)?)?;
                    scratch.get_mut(offset..offset.checked_add(length)?)?.copy_from_slice(source);
                    taken += length;
                }
            }
        }
        if let Some(length) = data_length {
            return (taken == check.len()).then_some(length);
        }
        step = fetch.landed_in_scratch(scratch)?;
    }
    None
}
