//! Reads in flight in an asynchronous transport: which queue pair each one
//! completes to. A fixed table sized at start-up; the token handed to the
//! transport is `generation << 32 | slot`, so a stale token finds nothing.

use crate::execute::Route;

/// What the completion of a pending read needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRead {
    pub route: Route,
    pub user_data: u64,
    /// Where the client's buffer starts in its buffer area.
    pub buffer_offset: u64,
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
        Some((self.generations[slot as usize] as u64) << 32 | slot as u64)
    }

    /// Takes the read a token names, if it is still pending.
    pub fn remove(&mut self, token: u64) -> Option<PendingRead> {
        let slot = (token & u32::MAX as u64) as usize;
        if self.generations.get(slot).copied() != Some((token >> 32) as u32) {
            return None;
        }
        let read = self.slots[slot].take()?;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free.push(slot as u32);
        Some(read)
    }

    /// The token of the pending read `user_data` of `route`.
    pub fn find(&self, route: Route, user_data: u64) -> Option<u64> {
        self.slots.iter().enumerate().find_map(|(slot, read)| {
            read.filter(|read| read.route == route && read.user_data == user_data)
                .map(|_| (self.generations[slot] as u64) << 32 | slot as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_find_nothing() {
        let mut table = RouteTable::new(2);
        let read = PendingRead { route: Route { region_id: 1, queue_pair: 0 }, user_data: 9, buffer_offset: 0 };
        let token = table.insert(read).unwrap();
        assert_eq!(table.find(read.route, 9), Some(token));
        assert_eq!(table.remove(token), Some(read));
        assert_eq!(table.remove(token), None);
        let again = table.insert(read).unwrap();
        let other = table.insert(read).unwrap();
        assert_ne!(again, token);
        assert!(table.insert(read).is_none());
        assert_eq!(table.in_use(), 2);
        assert!(table.remove(other).is_some());
    }
}
