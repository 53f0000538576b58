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
    run_sq(entries, input.start, &input.sq_steps);
    run_cq(entries, input.start, &input.cq_steps);
});

/// The consumer rule for a tail load: `Ok(count)` or the error naming the values.
fn expected_tail_load(tail: u32, cached_tail: u32, local_head: u32, entries: u32) -> Result<u32, IndexError> {
    let count = tail.wrapping_sub(local_head);
    if count > entries || count < cached_tail.wrapping_sub(local_head) {
        return Err(IndexError::TailOutOfRange { tail, cached_tail, local_head });
    }
    Ok(count)
}

fn run_sq(entries: u32, start: u32, steps: &[SqStep]) {
    let mut ring = Ring::new(entries, start);
    let base = ring.base();
    // SAFETY: the Ring outlives the consumer (both live to the end of this function); the
    // slots are `entries` u64s (a power of two) and any bit pattern is a u64; the consumer is
    // the ring's only consumer.
    let mut consumer = unsafe {
        Consumer::new(NonNull::from(&*ring.head), NonNull::from(&*ring.tail), SharedSlots::new(base, entries), start)
    };
    let (mut local_head, mut cached_tail) = (start, start);
    let (mut client_tail, mut honest) = (start, true);
    let mut published: VecDeque<u64> = VecDeque::new();
    let mut written: VecDeque<u64> = VecDeque::new();
    for step in steps.iter().take(STEPS_MAX) {
        let result: Result<(), IndexError> = match *step {
            SqStep::ClientWrite(value) => {
                // An honest client writes only into slots the engine released.
                if client_tail.wrapping_sub(ring.head.load(Ordering::Acquire)) < entries {
                    ring.client_write(client_tail, value);
                    client_tail = client_tail.wrapping_add(1);
                    written.push_back(value);
                }
                Ok(())
            }
            SqStep::ClientPublish => {
                ring.tail.store(client_tail, Ordering::Release);
                published.append(&mut written);
                Ok(())
            }
            SqStep::ClientStoreTail(tail) => {
                ring.tail.store(tail, Ordering::Release);
                honest = false;
                Ok(())
            }
            SqStep::ClientNudgeTail(delta) => {
                let tail = local_head.wrapping_add(entries).wrapping_add_signed(i32::from(delta));
                ring.tail.store(tail, Ordering::Release);
                honest = false;
                Ok(())
            }
            SqStep::Pop | SqStep::Available => {
                let expected = if cached_tail != local_head {
                    Ok(cached_tail.wrapping_sub(local_head))
                } else {
                    expected_tail_load(ring.tail.load(Ordering::Relaxed), cached_tail, local_head, entries)
                };
                let popping = matches!(step, SqStep::Pop);
                let found = if popping {
                    consumer.pop().map(|entry| {
                        let count = u32::from(entry.is_some());
                        if let (Some(value), true) = (entry, honest) {
                            assert_eq!(Some(value), published.pop_front(), "entries must arrive in order, unchanged");
                        }
                        count
                    })
                } else {
                    consumer.available()
                };
                match expected {
                    Ok(count) => {
                        cached_tail = local_head.wrapping_add(count);
                        let count_found = found.expect("a tail inside the rule was refused");
                        if popping {
                            assert_eq!(count_found, u32::from(count > 0), "pop with {count} available");
                            local_head = local_head.wrapping_add(count_found);
                        } else {
                            assert_eq!(count_found, count);
                        }
                        Ok(())
                    }
                    Err(error) => {
                        assert_eq!(found, Err(error));
                        Err(error)
                    }
                }
            }
            SqStep::Release => {
                consumer.release();
                assert_eq!(ring.head.load(Ordering::Relaxed), local_head);
                Ok(())
            }
            SqStep::PrepareSleep(wanted) => {
                let tail = ring.tail.load(Ordering::Relaxed);
                let expected = expected_tail_load(tail, cached_tail, local_head, entries);
                let found = consumer.prepare_sleep_for(&ring.flags, NEED_WAKEUP, u32::from(wanted));
                match expected {
                    Ok(count) => {
                        cached_tail = tail;
                        let check = found.expect("a tail inside the rule was refused");
                        if count >= u32::from(wanted).max(1) {
                            assert_eq!(check, SleepCheck::WorkArrived);
                            assert_eq!(ring.flags.load(Ordering::Relaxed), 0, "work arrived: the flag is cleared");
                        } else {
                            assert_eq!(check, SleepCheck::Sleep { expected_tail: tail });
                            assert_eq!(ring.flags.load(Ordering::Relaxed), NEED_WAKEUP);
                            consumer.finish_sleep(&ring.flags);
                        }
                        Ok(())
                    }
                    Err(error) => {
                        assert_eq!(found, Err(error));
                        Err(error)
                    }
                }
            }
        };
        assert_eq!(consumer.local_head(), local_head);
        if let Err(error) = result {
            assert!(!honest, "an honest client was refused: {error}");
            return; // The engine fences the client: the ring is not touched again.
        }
    }
}

/// The producer rule for a head load: the head, or the error naming the values.
fn expected_head_load(head: u32, cached_head: u32, local_tail: u32) -> Result<u32, IndexError> {
    if head.wrapping_sub(cached_head) > local_tail.wrapping_sub(cached_head) {
        return Err(IndexError::HeadOutOfRange { head, cached_head, local_tail });
    }
    Ok(head)
}

/// `free(want)` by the rule: (free slots, new cached head).
fn expected_free(
    want: u32,
    head: u32,
    cached_head: u32,
    local_tail: u32,
    entries: u32,
) -> Result<(u32, u32), IndexError> {
    let free = entries - local_tail.wrapping_sub(cached_head);
    if free >= want {
        return Ok((free, cached_head));
    }
    let head = expected_head_load(head, cached_head, local_tail)?;
    Ok((entries - local_tail.wrapping_sub(head), head))
}

fn run_cq(entries: u32, start: u32, steps: &[CqStep]) {
    let mut ring = Ring::new(entries, start);
    let base = ring.base();
    // SAFETY: as in run_sq; the producer is the ring's only producer.
    let mut producer = unsafe {
        Producer::new(NonNull::from(&*ring.tail), NonNull::from(&*ring.head), SharedSlots::new(base, entries), start)
    };
    let (mut local_tail, mut cached_head) = (start, start);
    let (mut client_head, mut honest) = (start, true);
    let mut pushed: VecDeque<u64> = VecDeque::new();
    for step in steps.iter().take(STEPS_MAX) {
        let result: Result<(), IndexError> = match *step {
            CqStep::Push(value) => {
                let head = ring.head.load(Ordering::Relaxed);
                let expected = expected_free(1, head, cached_head, local_tail, entries);
                let found = producer.push(value);
                match expected {
                    Ok((free, head)) => {
                        cached_head = head;
                        if free == 0 {
                            assert_eq!(found, Err(PushError::Full));
                        } else {
                            assert_eq!(found, Ok(()));
                            if honest {
                                // The slot written was one the client had consumed and released.
                                assert!(local_tail.wrapping_sub(client_head) < entries, "overwrote an unread entry");
                            }
                            local_tail = local_tail.wrapping_add(1);
                            pushed.push_back(value);
                        }
                        Ok(())
                    }
                    Err(error) => {
                        assert_eq!(found, Err(PushError::Index(error)));
                        Err(error)
                    }
                }
            }
            CqStep::Publish => {
                producer.publish();
                assert_eq!(ring.tail.load(Ordering::Relaxed), local_tail);
                Ok(())
            }
            CqStep::Free(want) => {
                let head = ring.head.load(Ordering::Relaxed);
                let want = u32::from(want) % (entries + 2);
                let expected = expected_free(want, head, cached_head, local_tail, entries);
                let found = producer.free(want);
                match expected {
                    Ok((free, head)) => {
                        cached_head = head;
                        assert_eq!(found, Ok(free));
                        Ok(())
                    }
                    Err(error) => {
                        assert_eq!(found, Err(error));
                        Err(error)
                    }
                }
            }
            CqStep::ClientConsume(count) => {
                let tail = ring.tail.load(Ordering::Acquire);
                for _ in 0..count {
                    if client_head == tail {
                        break;
                    }
                    let value = ring.client_read(client_head);
                    if honest {
                        assert_eq!(Some(value), pushed.pop_front(), "completions must arrive in order, unchanged");
                    }
                    client_head = client_head.wrapping_add(1);
                }
                Ok(())
            }
            CqStep::ClientRelease => {
                ring.head.store(client_head, Ordering::Release);
                Ok(())
            }
            CqStep::ClientStoreHead(head) => {
                ring.head.store(head, Ordering::Release);
                honest = false;
                Ok(())
            }
            CqStep::ClientNudgeHead(delta) => {
                ring.head.store(local_tail.wrapping_add_signed(i32::from(delta)), Ordering::Release);
                honest = false;
                Ok(())
            }
        };
        assert_eq!(producer.local_tail(), local_tail);
        if let Err(error) = result {
            assert!(!honest, "an honest client was refused: {error}");
            return;
        }
    }
}
