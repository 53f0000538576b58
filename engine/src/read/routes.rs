//! The one table of reads in flight in an asynchronous transport (or waiting to be routed to
//! one): which queue pair each completes to, the read itself (so it can move to the fallback),
//! its deadline and its stage. A fixed table sized at start-up; the token handed to the
//! transports is `generation << 32 | slot`, so a stale token finds nothing. It is the engine's
//! only token scheme: the local and RDMA transports keep their per-read state by the token's
//! slot. Generations use 31 bits, so bit 63 stays free for the RDMA transport's own jobs
//! (index pulls).

use std::net::SocketAddr;
use std::ptr::NonNull;
use std::time::Instant;

use shm_layout::entry::{ErrorCode, NeedleRead};

use crate::execute::Route;

/// Where a read in flight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// In the local transport (a volume of this host).
    Local,
    /// Waiting for the master to say where the volume is.
    Locating,
    /// Waiting for the exporter at this address to connect and announce its catalogue.
    WaitingPeer(SocketAddr),
    /// In the RDMA transport.
    Rdma,
    /// In the HTTP fallback.
    Http,
}

impl Stage {
    /// Parked: in no transport, waiting for the routing to go on.
    pub fn is_parked(self) -> bool {
        matches!(self, Stage::Locating | Stage::WaitingPeer(_))
    }
}

/// A read in flight.
#[derive(Clone, Copy, Debug)]
pub struct PendingRead {
    pub route: Route,
    pub user_data: u64,
    /// The validated read (its buffer range is inside the buffer area).
    pub read: NeedleRead,
    /// The start of that buffer range in the engine's mapping.
    pub buffer: NonNull<u8>,
    /// When the read was taken off the ring (for the latency metrics).
    pub started: Instant,
    /// The read fails with `DEADLINE_EXCEEDED` when this passes in a parked stage, and no
    /// transport works on it past this.
    pub deadline: Instant,
    pub stage: Stage,
    /// RDMA was tried and failed with this code: the fallback's reason.
    pub rdma_failure: Option<ErrorCode>,
    /// The client canceled it.
    pub canceled: bool,
    /// Its deadline passed while a transport had it: it completes with `DEADLINE_EXCEEDED`
    /// once the transport let go of the buffer.
    pub expired: bool,
}

/// Generations wrap at 31 bits (tokens never have bit 63 set).
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// The table slot a token names (below the table's capacity for every token it handed out):
/// transports that keep per-read state index it by this.
pub fn slot_of_token(token: u64) -> usize {
    (token & u32::MAX as u64) as usize
}

#[derive(Debug)]
pub struct RouteTable {
    slots: Vec<Option<PendingRead>>,
    generations: Vec<u32>,
    free: Vec<u32>,
}

impl RouteTable {
    pub fn new(capacity: usize) -> RouteTable {
        RouteTable {
            slots: vec![None; capacity],
            generations: vec![0; capacity],
            free: (0..capacity as u32).rev().collect(),
        }
    }

    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Stores a read; `None` when the table is full.
    pub fn insert(&mut self, read: PendingRead) -> Option<u64> {
        let slot = self.free.pop()?;
        self.slots[slot as usize] = Some(read);
        Some(self.token(slot as usize))
    }

    fn token(&self, slot: usize) -> u64 {
        (self.generations[slot] as u64) << 32 | slot as u64
    }

    fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = slot_of_token(token);
        (self.generations.get(slot).copied() == Some((token >> 32) as u32)).then_some(slot)
    }

    /// The read a token names, if it is still pending.
    pub fn get(&self, token: u64) -> Option<&PendingRead> {
        let slot = self.slot_of(token)?;
        self.slots[slot].as_ref()
    }

    /// The read a token names, if it is still pending.
    pub fn get_mut(&mut self, token: u64) -> Option<&mut PendingRead> {
        let slot = self.slot_of(token)?;
        self.slots[slot].as_mut()
    }

    /// Takes the read a token names, if it is still pending.
    pub fn remove(&mut self, token: u64) -> Option<PendingRead> {
        let slot = self.slot_of(token)?;
        let read = self.slots[slot].take()?;
        self.generations[slot] = self.generations[slot].wrapping_add(1) & GENERATION_MASK;
        self.free.push(slot as u32);
        Some(read)
    }

    /// The token of the pending read `user_data` of `route`.
    pub fn find(&self, route: Route, user_data: u64) -> Option<u64> {
        self.slots.iter().enumerate().find_map(|(slot, read)| {
            read.filter(|read| read.route == route && read.user_data == user_data).map(|_| self.token(slot))
        })
    }

    /// Tokens of the reads in `stage` whose deadline passed by `now` and that are not marked
    /// expired yet; marks them. Written into `tokens` (cleared first; no allocation).
    pub fn expire(&mut self, stage: Stage, now: Instant, tokens: &mut Vec<u64>) {
        tokens.clear();
        for slot in 0..self.slots.len() {
            let token = self.token(slot);
            if let Some(read) = self.slots[slot].as_mut() {
                if read.stage == stage && !read.expired && read.deadline <= now {
                    read.expired = true;
                    tokens.push(token);
                }
            }
        }
    }

    /// Tokens of the parked reads, written into `tokens` (cleared first; its capacity is the
    /// table's, so this does not allocate).
    pub fn parked(&self, tokens: &mut Vec<u64>) {
        tokens.clear();
        for (slot, read) in self.slots.iter().enumerate() {
            if read.is_some_and(|read| read.stage.is_parked()) {
                tokens.push(self.token(slot));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> PendingRead {
        let mut target = 0u8;
        PendingRead {
            route: Route { region_id: 1, queue_pair: 0 },
            user_data: 9,
            read: NeedleRead { volume_id: 1, needle_id: 2, cookie: 3, buffer_offset: 0, buffer_length: 1, range: None },
            buffer: NonNull::from(&mut target),
            started: Instant::now(),
            deadline: Instant::now(),
            stage: Stage::Locating,
            rdma_failure: None,
            canceled: false,
            expired: false,
        }
    }

    #[test]
    fn stale_tokens_find_nothing() {
        let mut table = RouteTable::new(2);
        let token = table.insert(read()).unwrap();
        assert_eq!(table.find(read().route, 9), Some(token));
        let mut parked = Vec::with_capacity(2);
        table.parked(&mut parked);
        assert_eq!(parked, vec![token]);
        table.get_mut(token).unwrap().stage = Stage::Http;
        table.parked(&mut parked);
        assert!(parked.is_empty());
        assert!(table.remove(token).is_some());
        assert!(table.remove(token).is_none());
        assert!(table.get_mut(token).is_none());
        let again = table.insert(read()).unwrap();
        let other = table.insert(read()).unwrap();
        assert_ne!(again, token);
        assert!(table.insert(read()).is_none());
        assert_eq!(table.in_use(), 2);
        assert!(table.remove(other).is_some());
    }
}
