//! The ring's index checks against a hostile peer (`shm_layout::ring`): the engine's SQ
//! consumer facing a client that writes any tail, and its CQ producer facing a client that
//! writes any head.
//!
//! The fuzzer plays the client: honest steps (write entries into free slots, publish,
//! consume published entries, release) mixed with hostile stores of arbitrary index values.
//! Each engine-side call is checked against the rule the module documents, computed here
//! from the indices alone: a reloaded tail must lie in `[cached_tail, local_head + entries]`,
//! a reloaded head in `[cached_head, local_tail]`; anything else is an `IndexError`, after
//! which the engine fences the client and the ring is not used again.
//!
//! What must hold:
//! - no panic or overflow, whatever the peer writes (built with overflow checks);
//! - every call's result is the documented rule's answer (the cached index is reloaded only
//!   when the cache says empty or full; an out-of-range peer index is refused, never used);
//! - while the peer is honest, nothing is refused and entries arrive unchanged, in order
//!   (FIFO), and the producer never overwrites an entry the peer has not consumed.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shm_layout::ring::{Consumer, IndexError, Producer, PushError, SharedSlots, SleepCheck};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Most steps one input runs: a bound on every walk.
const STEPS_MAX: usize = 512;
/// The wake-up bit the consumer sets in its flags word.
const NEED_WAKEUP: u32 = 1;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Ring size: `2 << (size_shift % 6)` entries, 2..=64.
    size_shift: u8,
    /// Where both indices start, so runs cross `u32::MAX`.
    start: u32,
    sq_steps: Vec<SqStep>,
    cq_steps: Vec<CqStep>,
}

/// Steps against the engine's SQ consumer; the fuzzer is the client producing entries.
#[derive(Arbitrary, Debug)]
enum SqStep {
    ClientWrite(u64),
    ClientPublish,
    ClientStoreTail(u32),
    /// Moves the tail by an amount near the ring's bounds (the interesting edges).
    ClientNudgeTail(i8),
    Pop,
    Available,
    Release,
    PrepareSleep(u8),
}

/// Steps against the engine's CQ producer; the fuzzer is the client consuming completions.
#[derive(Arbitrary, Debug)]
enum CqStep {
    Push(u64),
    Publish,
    Free(u8),
    ClientConsume(u8),
    ClientRelease,
    ClientStoreHead(u32),
    ClientNudgeHead(i8),
}

/// Head, tail and slots of one ring on the heap (as a mapping would hold them).
struct Ring {
    head: Box<AtomicU32>,
    tail: Box<AtomicU32>,
    flags: AtomicU32,
    slots: Vec<u64>,
}

impl Ring {
    fn new(entries: u32, start: u32) -> Ring {
        Ring {
            head: Box::new(AtomicU32::new(start)),
            tail: Box::new(AtomicU32::new(start)),
            flags: AtomicU32::new(0),
            slots: vec![0; entries as usize],
        }
    }

    fn entries(&self) -> u32 {
        self.slots.len() as u32
    }

    fn base(&mut self) -> NonNull<u64> {
        NonNull::new(self.slots.as_mut_ptr()).expect("a Vec's pointer is not null")
    }

    /// What the client side writes or reads in slot `index` (volatile, as the peer would).
    fn client_write(&mut self, index: u32, value: u64) {
        let mask = self.entries() - 1;
        // SAFETY: masked into the Vec; the engine side only accesses slots through volatile
        // copies of the same memory, never through references.
        unsafe { self.base().as_ptr().add((index & mask) as usize).write_volatile(value) }
    }

    fn client_read(&mut self, index: u32) -> u64 {
        let mask = self.entries() - 1;
        // SAFETY: as in client_write.
        unsafe { self.base().as_ptr().add((index & mask) as usize).read_volatile() }
    }
}

fuzz_target!(|input: Input| {
    let entries = 2u32 << (input.size_shift % 6);
    let mut sq_ring = Ring::new(entries, input.start);
    let mut sq = SqSide::new(&mut sq_ring, input.start);
    // After a refusal the engine fences the client: the ring is not touched again.
    for step in input.sq_steps.iter().take(STEPS_MAX) {
        if sq.step(step).is_err() {
            break;
        }
    }
    let mut cq_ring = Ring::new(entries, input.start);
    let mut cq = CqSide::new(&mut cq_ring, input.start);
    for step in input.cq_steps.iter().take(STEPS_MAX) {
        if cq.step(step).is_err() {
            break;
        }
    }
});

/// Checks that the ring's answer is the rule's: the same value, or the same refusal.
fn agree<T: PartialEq + std::fmt::Debug>(
    expected: Result<T, IndexError>,
    found: Result<T, IndexError>,
    honest: bool,
) -> Result<T, IndexError> {
    assert_eq!(found, expected, "the ring's answer is not the rule's");
    if let Err(error) = &expected {
        assert!(!honest, "an honest client was refused: {error}");
    }
    expected
}

/// The consumer rule for a tail load: `Ok(count)` or the error naming the values.
fn expected_tail_load(tail: u32, cached_tail: u32, local_head: u32, entries: u32) -> Result<u32, IndexError> {
    let count = tail.wrapping_sub(local_head);
    if count > entries || count < cached_tail.wrapping_sub(local_head) {
        return Err(IndexError::TailOutOfRange { tail, cached_tail, local_head });
    }
    Ok(count)
}

/// The engine's SQ consumer, the indices the rule says it holds, and the client's side.
struct SqSide<'a> {
    ring: &'a mut Ring,
    consumer: Consumer<u64, SharedSlots<u64>>,
    local_head: u32,
    cached_tail: u32,
    client_tail: u32,
    /// No hostile store so far: entries must arrive as written.
    honest: bool,
    published: VecDeque<u64>,
    written: VecDeque<u64>,
}

impl<'a> SqSide<'a> {
    fn new(ring: &'a mut Ring, start: u32) -> SqSide<'a> {
        let entries = ring.entries();
        let base = ring.base();
        // SAFETY: the Ring outlives the consumer (it is borrowed for the side's life); the
        // slots are `entries` u64s (a power of two) and any bit pattern is a u64; this is the
        // ring's only consumer.
        let consumer = unsafe {
            Consumer::new(
                NonNull::from(&*ring.head),
                NonNull::from(&*ring.tail),
                SharedSlots::new(base, entries),
                start,
            )
        };
        SqSide {
            ring,
            consumer,
            local_head: start,
            cached_tail: start,
            client_tail: start,
            honest: true,
            published: VecDeque::new(),
            written: VecDeque::new(),
        }
    }

    fn step(&mut self, step: &SqStep) -> Result<(), IndexError> {
        let entries = self.ring.entries();
        match *step {
            SqStep::ClientWrite(value) => {
                // An honest client writes only into slots the engine released.
                if self.client_tail.wrapping_sub(self.ring.head.load(Ordering::Acquire)) < entries {
                    self.ring.client_write(self.client_tail, value);
                    self.client_tail = self.client_tail.wrapping_add(1);
                    self.written.push_back(value);
                }
            }
            SqStep::ClientPublish => {
                self.ring.tail.store(self.client_tail, Ordering::Release);
                self.published.append(&mut self.written);
            }
            SqStep::ClientStoreTail(tail) => self.store_hostile_tail(tail),
            SqStep::ClientNudgeTail(delta) => {
                self.store_hostile_tail(self.local_head.wrapping_add(entries).wrapping_add_signed(i32::from(delta)))
            }
            SqStep::Pop => self.pop()?,
            SqStep::Available => {
                let count = agree(self.expected_available(), self.consumer.available(), self.honest)?;
                self.cached_tail = self.local_head.wrapping_add(count);
            }
            SqStep::Release => {
                self.consumer.release();
                assert_eq!(self.ring.head.load(Ordering::Relaxed), self.local_head);
            }
            SqStep::PrepareSleep(wanted) => self.prepare_sleep(u32::from(wanted))?,
        }
        assert_eq!(self.consumer.local_head(), self.local_head);
        Ok(())
    }

    fn store_hostile_tail(&mut self, tail: u32) {
        self.ring.tail.store(tail, Ordering::Release);
        self.honest = false;
    }

    /// `available()` by the rule: the cached count, else a tail load.
    fn expected_available(&self) -> Result<u32, IndexError> {
        if self.cached_tail != self.local_head {
            return Ok(self.cached_tail.wrapping_sub(self.local_head));
        }
        let tail = self.ring.tail.load(Ordering::Relaxed);
        expected_tail_load(tail, self.cached_tail, self.local_head, self.ring.entries())
    }

    fn pop(&mut self) -> Result<(), IndexError> {
        let expected = self.expected_available();
        let found = self.consumer.pop();
        let popped = agree(expected.map(|count| count > 0), found.map(|entry| entry.is_some()), self.honest)?;
        if let (Ok(Some(value)), true) = (found, self.honest) {
            assert_eq!(Some(value), self.published.pop_front(), "entries must arrive in order, unchanged");
        }
        self.cached_tail = self.local_head.wrapping_add(expected?);
        self.local_head = self.local_head.wrapping_add(u32::from(popped));
        Ok(())
    }

    fn prepare_sleep(&mut self, wanted: u32) -> Result<(), IndexError> {
        let tail = self.ring.tail.load(Ordering::Relaxed);
        let count = expected_tail_load(tail, self.cached_tail, self.local_head, self.ring.entries());
        let expected = count.map(|count| {
            if count >= wanted.max(1) {
                SleepCheck::WorkArrived
            } else {
                SleepCheck::Sleep { expected_tail: tail }
            }
        });
        let check =
            agree(expected, self.consumer.prepare_sleep_for(&self.ring.flags, NEED_WAKEUP, wanted), self.honest)?;
        self.cached_tail = tail;
        let flags = self.ring.flags.load(Ordering::Relaxed);
        if check == SleepCheck::WorkArrived {
            assert_eq!(flags, 0, "work arrived: the flag is cleared");
        } else {
            assert_eq!(flags, NEED_WAKEUP, "going to sleep: the flag is set");
            self.consumer.finish_sleep(&self.ring.flags);
        }
        Ok(())
    }
}

/// The producer rule for a head load: the head, or the error naming the values.
fn expected_head_load(head: u32, cached_head: u32, local_tail: u32) -> Result<u32, IndexError> {
    if head.wrapping_sub(cached_head) > local_tail.wrapping_sub(cached_head) {
        return Err(IndexError::HeadOutOfRange { head, cached_head, local_tail });
    }
    Ok(head)
}

/// The engine's CQ producer, the indices the rule says it holds, and the client's side.
struct CqSide<'a> {
    ring: &'a mut Ring,
    producer: Producer<u64, SharedSlots<u64>>,
    local_tail: u32,
    cached_head: u32,
    client_head: u32,
    /// No hostile store so far: completions must arrive as pushed.
    honest: bool,
    pushed: VecDeque<u64>,
}

impl<'a> CqSide<'a> {
    fn new(ring: &'a mut Ring, start: u32) -> CqSide<'a> {
        let entries = ring.entries();
        let base = ring.base();
        // SAFETY: as in SqSide::new; this is the ring's only producer.
        let producer = unsafe {
            Producer::new(
                NonNull::from(&*ring.tail),
                NonNull::from(&*ring.head),
                SharedSlots::new(base, entries),
                start,
            )
        };
        CqSide {
            ring,
            producer,
            local_tail: start,
            cached_head: start,
            client_head: start,
            honest: true,
            pushed: VecDeque::new(),
        }
    }

    fn step(&mut self, step: &CqStep) -> Result<(), IndexError> {
        match *step {
            CqStep::Push(value) => self.push(value)?,
            CqStep::Publish => {
                self.producer.publish();
                assert_eq!(self.ring.tail.load(Ordering::Relaxed), self.local_tail);
            }
            CqStep::Free(want) => {
                let want = u32::from(want) % (self.ring.entries() + 2);
                let expected = self.expected_free(want);
                agree(expected.map(|(free, _)| free), self.producer.free(want), self.honest)?;
                self.cached_head = expected?.1;
            }
            CqStep::ClientConsume(count) => self.client_consume(count),
            CqStep::ClientRelease => self.ring.head.store(self.client_head, Ordering::Release),
            CqStep::ClientStoreHead(head) => self.store_hostile_head(head),
            CqStep::ClientNudgeHead(delta) => {
                self.store_hostile_head(self.local_tail.wrapping_add_signed(i32::from(delta)))
            }
        }
        assert_eq!(self.producer.local_tail(), self.local_tail);
        Ok(())
    }

    fn store_hostile_head(&mut self, head: u32) {
        self.ring.head.store(head, Ordering::Release);
        self.honest = false;
    }

    /// `free(want)` by the rule: (free slots, the cached head after it).
    fn expected_free(&self, want: u32) -> Result<(u32, u32), IndexError> {
        let entries = self.ring.entries();
        let free = entries - self.local_tail.wrapping_sub(self.cached_head);
        if free >= want {
            return Ok((free, self.cached_head));
        }
        let head = self.ring.head.load(Ordering::Relaxed);
        let head = expected_head_load(head, self.cached_head, self.local_tail)?;
        Ok((entries - self.local_tail.wrapping_sub(head), head))
    }

    fn push(&mut self, value: u64) -> Result<(), IndexError> {
        let expected = self.expected_free(1);
        let found = self.producer.push(value);
        let expected_push = expected.map_err(PushError::Index).and_then(|(free, _)| match free {
            0 => Err(PushError::Full),
            _ => Ok(()),
        });
        assert_eq!(found, expected_push, "the ring's answer is not the rule's");
        let (free, head) =
            expected.inspect_err(|error| assert!(!self.honest, "an honest client was refused: {error}"))?;
        self.cached_head = head;
        if free > 0 {
            // The slot written was one the client had consumed (and released).
            assert!(
                !self.honest || self.local_tail.wrapping_sub(self.client_head) < self.ring.entries(),
                "overwrote an unread completion"
            );
            self.local_tail = self.local_tail.wrapping_add(1);
            self.pushed.push_back(value);
        }
        Ok(())
    }

    /// The client reads up to `count` published completions (not released yet).
    fn client_consume(&mut self, count: u8) {
        let tail = self.ring.tail.load(Ordering::Acquire);
        for _ in 0..count {
            if self.client_head == tail {
                break;
            }
            let value = self.ring.client_read(self.client_head);
            if self.honest {
                assert_eq!(Some(value), self.pushed.pop_front(), "completions must arrive in order, unchanged");
            }
            self.client_head = self.client_head.wrapping_add(1);
        }
    }
}
