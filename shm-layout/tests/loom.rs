//! Model-checked ring protocol: every interleaving (within loom's bounds) of
//! one producer and one consumer, and of the NEED_WAKEUP sleep/wake protocol.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p shm-layout --test loom --release`
//! (the project's test script does this with its own target directory).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use shm_layout::ring::{Consumer, Producer, SleepCheck, Slots};
use std::ptr::NonNull;

const NEED_WAKEUP: u32 = 1;

/// Heap slots through loom's UnsafeCell, so loom reports any data race on an
/// entry (a consumer reading a slot the producer may still be writing).
struct LoomSlots {
    cells: Box<[UnsafeCell<u64>]>,
}

/// The slot array as both sides see it.
#[derive(Clone)]
struct SlotsHandle(Arc<LoomSlots>);

impl Slots<u64> for SlotsHandle {
    fn entries(&self) -> u32 {
        self.0.cells.len() as u32
    }

    unsafe fn write(&self, index: u32, value: u64) {
        let slot = &self.0.cells[(index as usize) & (self.0.cells.len() - 1)];
        // SAFETY: the ring protocol gives the producer this slot.
        slot.with_mut(|pointer| unsafe { *pointer = value });
    }

    unsafe fn read(&self, index: u32) -> u64 {
        let slot = &self.0.cells[(index as usize) & (self.0.cells.len() - 1)];
        // SAFETY: the ring protocol gives the consumer this slot.
        slot.with(|pointer| unsafe { *pointer })
    }
}

/// The shared words of one ring plus a futex model: `wait` re-checks the
/// word under the lock, as the kernel does under its hash-bucket lock.
struct Shared {
    head: AtomicU32,
    tail: AtomicU32,
    flags: AtomicU32,
    futex_lock: Mutex<()>,
    futex_queue: Condvar,
    slots: SlotsHandle,
}

impl Shared {
    fn new(entries: usize, start: u32) -> Arc<Shared> {
        Arc::new(Shared {
            head: AtomicU32::new(start),
            tail: AtomicU32::new(start),
            flags: AtomicU32::new(0),
            futex_lock: Mutex::new(()),
            futex_queue: Condvar::new(),
            slots: SlotsHandle(Arc::new(LoomSlots { cells: (0..entries).map(|_| UnsafeCell::new(0)).collect() })),
        })
    }

    fn producer(&self, start: u32) -> Producer<u64, SlotsHandle> {
        // SAFETY: every caller holds an Arc<Shared> that outlives the producer.
        unsafe { Producer::new(NonNull::from(&self.tail), NonNull::from(&self.head), self.slots.clone(), start) }
    }

    fn consumer(&self, start: u32) -> Consumer<u64, SlotsHandle> {
        // SAFETY: as in producer.
        unsafe { Consumer::new(NonNull::from(&self.head), NonNull::from(&self.tail), self.slots.clone(), start) }
    }

    fn futex_wait(&self, expected: u32) {
        let guard = self.futex_lock.lock().unwrap();
        if self.tail.load(Ordering::SeqCst) == expected {
            // No timeout here on purpose: a lost wake-up shows as a deadlock.
            drop(self.futex_queue.wait(guard).unwrap());
        }
    }

    fn futex_wake(&self) {
        let _guard = self.futex_lock.lock().unwrap();
        self.futex_queue.notify_all();
    }
}

#[test]
fn spsc_delivers_every_entry_in_order_across_wrap() {
    loom::model(|| {
        let start = u32::MAX - 1;
        let shared = Shared::new(2, start);
        let producer_shared = shared.clone();
        let producer = loom::thread::spawn(move || {
            let mut producer = producer_shared.producer(start);
            let mut next = 1u64;
            while next <= 3 {
                match producer.push(next) {
                    Ok(()) => next += 1,
                    Err(_) => {
                        producer.publish();
                        loom::thread::yield_now();
                    }
                }
            }
            producer.publish();
        });
        let mut consumer = shared.consumer(start);
        let mut expected = 1u64;
        while expected <= 3 {
            match consumer.pop().unwrap() {
                Some(value) => {
                    assert_eq!(value, expected);
                    expected += 1;
                    consumer.release();
                }
                None => loom::thread::yield_now(),
            }
        }
        producer.join().unwrap();
    });
}

#[test]
fn need_wakeup_never_loses_a_wakeup() {
    loom::model(|| {
        let shared = Shared::new(2, 0);
        let producer_shared = shared.clone();
        let producer = loom::thread::spawn(move || {
            let mut producer = producer_shared.producer(0);
            producer.push(7).unwrap();
            producer.publish();
            if producer.consumer_needs_wakeup(&producer_shared.flags, NEED_WAKEUP) {
                producer_shared.futex_wake();
            }
        });
        let mut consumer = shared.consumer(0);
        let value = loop {
            if let Some(value) = consumer.pop().unwrap() {
                break value;
            }
            match consumer.prepare_sleep(&shared.flags, NEED_WAKEUP).unwrap() {
                SleepCheck::Sleep { expected_tail } => {
                    shared.futex_wait(expected_tail);
                    consumer.finish_sleep(&shared.flags);
                }
                SleepCheck::WorkArrived => {}
            }
        };
        assert_eq!(value, 7);
        producer.join().unwrap();
    });
}
