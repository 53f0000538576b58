//! The needle map's storage, compact: a sorted run of every needle's last state in parallel
//! arrays (16 bytes a needle with 4-byte offsets, 17 with 5-byte ones), found through a small
//! directory of interpolation buckets, and a hash of the changes applied since the run was
//! last rebuilt, merged into it once it holds a sixteenth of the run (so it adds at most
//! about 3 bytes a needle, and each needle is moved a bounded number of times while a volume
//! grows).
//!
//! SeaweedFS's needle ids come from the master's sequence, so a volume's ids are spread
//! fairly evenly between its first and last: the bucket of an id, by interpolation, holds
//! about [`ENTRIES_PER_BUCKET`] entries, and a lookup is one directory read and a short
//! binary search in one or two cache lines of ids. Ids bunched otherwise only make some
//! buckets longer: the search stays a binary search.

use std::collections::HashMap;

/// A needle's state in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// At `units` × 8 bytes in the `.dat`, `size` its header's size.
    Live { units: u64, size: u32 },
    /// Its last entry deleted it (kept so a reader can say "deleted", not "never written").
    Deleted,
}

/// What the hash holds for an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Set(State),
    /// A deletion of an id the hash did not hold: deleted if the run holds the id, else
    /// nothing (a tombstone for an id never written leaves no trace, as in SeaweedFS).
    Tombstone,
}

/// The size recorded for a deleted needle (live sizes are SeaweedFS's non-negative `i32`s).
const DELETED_SIZE: u32 = u32::MAX;
/// Entries per directory bucket, on average: a bucket's ids fit a cache line.
const ENTRIES_PER_BUCKET: usize = 8;
/// The hash is merged into the run when it holds this many changes and a sixteenth of the run
/// (and, after a replay, when it holds this many: [`CompactMap::settle`]).
/// (Under `cargo fuzz`, 4: the fuzzer's inputs of a few hundred entries then reach the merges.)
const TAIL_MIN: usize = if cfg!(fuzzing) { 4 } else { 256 };
const TAIL_FRACTION: usize = 16;
/// While a replay runs: fewer, larger merges (the hash is at most a quarter of the run).
const TAIL_FRACTION_REPLAYING: usize = 4;

/// Every needle's state, sorted by id, in parallel arrays.
#[derive(Clone, Debug, Default)]
struct Run {
    ids: Vec<u64>,
    /// The offset's low 32 bits (in 8-byte units) above the header size (or [`DELETED_SIZE`]):
    /// one read finds both.
    slots: Vec<u64>,
    /// The offset's high byte, for 5-byte offsets only.
    units_high: Vec<u8>,
    /// Bucket `b` holds positions `directory[b]..directory[b + 1]`.
    directory: Vec<u32>,
    /// The bucket of an id is `(id - first id) × scale / 2^64` (a multiplication, not a
    /// division, per lookup).
    scale: u64,
    /// Live needles in the run.
    live: usize,
    wide: bool,
}

fn slot_of(state: State) -> (u64, u8) {
    match state {
        State::Live { units, size } => (((units & 0xffff_ffff) << 32) | u64::from(size), (units >> 32) as u8),
        State::Deleted => (u64::from(DELETED_SIZE), 0),
    }
}

impl Run {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn state_at(&self, position: usize) -> State {
        let slot = self.slots[position];
        match slot as u32 {
            DELETED_SIZE => State::Deleted,
            size => {
                let high = if self.wide { u64::from(self.units_high[position]) << 32 } else { 0 };
                State::Live { units: high | (slot >> 32), size }
            }
        }
    }

    fn write(&mut self, position: usize, id: u64, state: State) {
        let (slot, high) = slot_of(state);
        self.ids[position] = id;
        self.slots[position] = slot;
        if self.wide {
            self.units_high[position] = high;
        }
    }

    /// Moves positions `from` to start at `to` (overlapping allowed).
    fn shift(&mut self, from: std::ops::Range<usize>, to: usize) {
        self.ids.copy_within(from.clone(), to);
        self.slots.copy_within(from.clone(), to);
        if self.wide {
            self.units_high.copy_within(from, to);
        }
    }

    fn resize(&mut self, length: usize) {
        let grow = length.saturating_sub(self.len());
        self.ids.reserve_exact(grow);
        self.slots.reserve_exact(grow);
        self.ids.resize(length, 0);
        self.slots.resize(length, 0);
        if self.wide {
            self.units_high.reserve_exact(grow);
            self.units_high.resize(length, 0);
        }
    }

    /// The bucket of `id`, which lies between the first and the last id: below the bucket
    /// count, since `id - first < span` and `scale <= buckets × 2^64 / span`.
    fn bucket_of(&self, id: u64) -> usize {
        ((u128::from(id - self.ids[0]) * u128::from(self.scale)) >> 64) as usize
    }

    /// Builds the directory (after the ids changed), in its own allocation.
    fn index_buckets(&mut self) {
        self.directory.clear();
        if self.ids.is_empty() {
            self.directory.shrink_to_fit();
            return;
        }
        let buckets = (self.len() / ENTRIES_PER_BUCKET).max(1);
        let span = u128::from(self.ids[self.len() - 1] - self.ids[0]) + 1;
        // Distinct ids: span >= len > buckets, so the scale fits 64 bits.
        self.scale = u64::try_from((u128::from(buckets as u64) << 64) / span).unwrap_or(u64::MAX);
        self.directory.reserve_exact(buckets + 1);
        self.directory.resize(buckets + 1, 0);
        let mut next_bucket = 1;
        for position in 0..self.len() {
            let bucket = self.bucket_of(self.ids[position]);
            while next_bucket <= bucket {
                self.directory[next_bucket] = position as u32;
                next_bucket += 1;
            }
        }
        while next_bucket <= buckets {
            self.directory[next_bucket] = self.len() as u32;
            next_bucket += 1;
        }
        self.directory.shrink_to_fit();
    }

    fn find(&self, id: u64) -> Option<usize> {
        let (&first, &last) = (self.ids.first()?, self.ids.last()?);
        if id < first || id > last {
            return None;
        }
        let bucket = self.bucket_of(id);
        let (start, end) = (self.directory[bucket] as usize, self.directory[bucket + 1] as usize);
        self.ids[start..end].binary_search(&id).ok().map(|offset| start + offset)
    }

    fn memory_bytes(&self) -> usize {
        self.ids.capacity() * 8 + self.slots.capacity() * 8 + self.units_high.capacity() + self.directory.capacity() * 4
    }
}

/// The first position from `start` on whose id is at least `id`, in sorted `ids`: steps of
/// 1, 2, 4, … past `start`, then a binary search in the last step.
fn gallop_to(ids: &[u64], start: usize, id: u64) -> usize {
    let mut low = start;
    let mut step = 1;
    // Bounded: `step` doubles until it passes the end.
    while low + step <= ids.len() && ids[low + step - 1] < id {
        low += step;
        step *= 2;
    }
    let high = (low + step).min(ids.len());
    low + ids[low..high].partition_point(|&old| old < id)
}

/// Needle id → [`State`]: the sorted run and the hash of changes since.
#[derive(Clone, Debug, Default)]
pub(super) struct CompactMap {
    run: Run,
    tail: HashMap<u64, Change>,
    /// A replay of many entries is under way (a load): the hash may grow to a quarter of the run
    /// before a merge, so a load merges a few times, not once a sixteenth.
    replaying: bool,
}

impl CompactMap {
    /// An empty map for offsets of 5 bytes (`wide`) or 4.
    pub fn new(wide: bool) -> CompactMap {
        CompactMap { run: Run { wide, ..Run::default() }, tail: HashMap::new(), replaying: false }
    }

    pub fn state(&self, id: u64) -> Option<State> {
        let change = if self.tail.is_empty() { None } else { self.tail.get(&id) };
        match change {
            Some(Change::Set(state)) => Some(*state),
            Some(Change::Tombstone) => self.run.find(id).map(|_| State::Deleted),
            None => self.run.find(id).map(|position| self.run.state_at(position)),
        }
    }

    pub fn set_live(&mut self, id: u64, units: u64, size: u32) {
        self.tail.insert(id, Change::Set(State::Live { units, size }));
        self.merge_when_due();
    }

    /// A deletion: a live or deleted needle is deleted; an id never written stays unknown.
    pub fn delete(&mut self, id: u64) {
        let change = match self.tail.get(&id) {
            Some(Change::Set(_)) => Change::Set(State::Deleted),
            Some(Change::Tombstone) => return,
            None => Change::Tombstone,
        };
        self.tail.insert(id, change);
        self.merge_when_due();
    }

    /// A replay begins: until [`CompactMap::settle`], merges wait for a larger hash.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// After a replay: folds what the hash holds into the run, unless it is a refresh's few
    /// entries (the hash stays small, and a merge would move the run).
    pub fn settle(&mut self) {
        self.replaying = false;
        if self.tail.len() >= TAIL_MIN {
            self.merge();
        }
    }

    /// Live needles.
    pub fn live_count(&self) -> usize {
        let mut live = self.run.live;
        for (&id, change) in &self.tail {
            let before = self.run.find(id).map(|position| self.run.state_at(position));
            let was_live = matches!(before, Some(State::Live { .. }));
            let is_live = matches!(change, Change::Set(State::Live { .. }));
            live = live + usize::from(is_live) - usize::from(was_live);
        }
        live
    }

    /// Every live needle, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        let from_run = (0..self.run.len()).filter_map(|position| {
            let id = self.run.ids[position];
            match self.run.state_at(position) {
                State::Live { units, size } if !self.tail.contains_key(&id) => Some((id, units, size)),
                _ => None,
            }
        });
        let from_tail = self.tail.iter().filter_map(|(&id, change)| match change {
            Change::Set(State::Live { units, size }) => Some((id, *units, *size)),
            _ => None,
        });
        from_run.chain(from_tail)
    }

    /// Bytes held (capacities), for the benches and the metrics.
    pub fn memory_bytes(&self) -> usize {
        // A hashbrown slot is the entry and one control byte.
        self.run.memory_bytes() + self.tail.capacity() * (std::mem::size_of::<(u64, Change)>() + 1)
    }

    fn merge_when_due(&mut self) {
        let fraction = if self.replaying { TAIL_FRACTION_REPLAYING } else { TAIL_FRACTION };
        if self.tail.len() >= TAIL_MIN.max(self.run.len() / fraction) {
            self.merge();
        }
    }

    /// Folds the hash into the run, in place: the run's arrays grow by the ids it adds, and
    /// the merge runs from the back, so no second run is ever allocated.
    fn merge(&mut self) {
        let mut changes: Vec<(u64, Change)> = self.tail.drain().collect();
        self.tail.shrink_to(0);
        changes.sort_unstable_by_key(|&(id, _)| id);
        // Each change's place in the run (`Ok`: it replaces that entry) and its state; a
        // tombstone for an id the run does not hold leaves nothing.
        let mut placed: Vec<(u64, Result<usize, usize>, State)> = Vec::with_capacity(changes.len());
        // The changes are sorted, so their places only move forward: found by galloping from
        // the last one (sequential reads, and a jump over a long unchanged stretch).
        let mut cursor = 0;
        for (id, change) in changes {
            cursor = gallop_to(&self.run.ids, cursor, id);
            let place = match self.run.ids.get(cursor) {
                Some(&found) if found == id => Ok(cursor),
                _ => Err(cursor),
            };
            let state = match (change, place) {
                (Change::Set(state), _) => state,
                (Change::Tombstone, Ok(_)) => State::Deleted,
                (Change::Tombstone, Err(_)) => continue,
            };
            match (place.map(|position| self.run.state_at(position)), state) {
                (Ok(State::Live { .. }), State::Deleted) => self.run.live -= 1,
                (Ok(State::Deleted) | Err(_), State::Live { .. }) => self.run.live += 1,
                _ => {}
            }
            placed.push((id, place, state));
        }
        let added = placed.iter().filter(|(_, place, _)| place.is_err()).count();
        let old_length = self.run.len();
        self.run.resize(old_length + added);
        // From the back: `read` is the end of the old entries not yet moved, `write` where the
        // moved ones start; the gap between them is the number of additions still to place.
        let (mut read, mut write) = (old_length, old_length + added);
        for &(id, place, state) in placed.iter().rev() {
            let keep_from = match place {
                Ok(position) => position + 1,
                Err(position) => position,
            };
            let moved = read - keep_from;
            self.run.shift(keep_from..read, write - moved);
            write -= moved + 1;
            read = keep_from;
            if place.is_ok() {
                read -= 1;
            }
            self.run.write(write, id, state);
        }
        debug_assert_eq!(read, write, "every addition placed");
        self.run.index_buckets();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_and_the_hash_agree_across_merges() {
        let mut map = CompactMap::new(false);
        for id in 1..=5000u64 {
            map.set_live(id * 3, id, id as u32);
        }
        map.delete(300);
        map.delete(7); // never written
        map.set_live(6, 99, 1);
        assert_eq!(map.state(300), Some(State::Deleted));
        assert_eq!(map.state(7), None);
        assert_eq!(map.state(6), Some(State::Live { units: 99, size: 1 }));
        assert_eq!(map.state(9), Some(State::Live { units: 3, size: 3 }));
        assert_eq!(map.live_count(), 4999);
        map.merge();
        assert_eq!(map.state(300), Some(State::Deleted));
        assert_eq!(map.state(7), None);
        assert_eq!(map.state(6), Some(State::Live { units: 99, size: 1 }));
        assert_eq!(map.live_count(), 4999);
        assert_eq!(map.live().count(), 4999);
        assert!(map.memory_bytes() < 5000 * 20, "{} bytes", map.memory_bytes());
    }

    #[test]
    fn wide_offsets_keep_their_high_byte() {
        let mut map = CompactMap::new(true);
        let far = (0xab_u64 << 32) | 0x1234_5678;
        map.set_live(u64::MAX, far, 0);
        map.set_live(1, 1, 2);
        map.merge();
        assert_eq!(map.state(u64::MAX), Some(State::Live { units: far, size: 0 }));
        assert_eq!(map.state(1), Some(State::Live { units: 1, size: 2 }));
        assert_eq!(map.state(2), None);
    }
}
