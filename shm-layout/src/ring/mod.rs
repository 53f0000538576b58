//! The single-producer single-consumer ring and the `NEED_WAKEUP` protocol.
//!
//! Every ring has a `head` (written by its consumer) and a `tail` (written by
//! its producer), free-running `u32`s: slot = index & (entries - 1), the ring
//! holds `tail - head` (wrapping) entries, which is never more than `entries`.
//! Each side keeps its own index locally (`local_*`) and a cached copy of the
//! peer's, reloaded only when the cache says the ring is full (producer) or
//! empty (consumer). Work is published once per batch.
//!
//! # Ordering table
//!
//! | operation                      | side     | access                       | ordering | why |
//! |--------------------------------|----------|------------------------------|----------|-----|
//! | write entries                  | producer | slots (volatile)             | plain    | published by the tail store below |
//! | publish                        | producer | `tail.store(local_tail)`     | Release  | entries written before are visible to whoever acquires this tail |
//! | reload peer tail               | consumer | `tail.load()`                | Acquire  | pairs with publish: entries up to that tail are readable |
//! | read entries                   | consumer | slots (volatile), copied out | plain    | after the Acquire above |
//! | release                        | consumer | `head.store(local_head)`     | Release  | our copies of the entries finished before the producer may reuse the slots |
//! | reload peer head               | producer | `head.load()`                | Acquire  | pairs with release: the slots up to that head are free to overwrite |
//! | set NEED_WAKEUP                | consumer | `flags.store(bit)`           | Relaxed  | ordered by the SeqCst fence that follows |
//! | fence before sleeping          | consumer | `fence(SeqCst)`              | SeqCst   | see below |
//! | re-check tail before sleeping  | consumer | `tail.load()`                | Acquire  | see below |
//! | fence after publishing         | producer | `fence(SeqCst)`              | SeqCst   | see below |
//! | check NEED_WAKEUP              | producer | `flags.load()`               | Relaxed  | ordered by the SeqCst fence before it |
//! | clear NEED_WAKEUP              | consumer | `flags.store(0)`             | Relaxed  | a stale set flag only costs the producer one spare wake |
//!
//! The peer's index is never trusted: a reloaded tail must lie between the
//! consumer's cached tail and `local_head + entries`; a reloaded head between
//! the producer's cached head and `local_tail`. Anything else is an
//! [`IndexError`], which the engine answers by fencing the client off.
//!
//! # The wake-up fences
//!
//! The consumer goes to sleep with: store NEED_WAKEUP; `fence(SeqCst)`; load
//! tail; sleep (futex on the tail word, expecting `local_head`) only if the
//! tail still equals `local_head`. The producer wakes with: store tail;
//! `fence(SeqCst)`; load flags; futex-wake if NEED_WAKEUP is set. This is
//! Dekker's pattern: the two SeqCst fences are totally ordered, so either the
//! consumer's tail load sees the new tail (and it does not sleep), or the
//! producer's flag load sees NEED_WAKEUP (and it wakes). Without both fences
//! each side's store can sit in its store buffer while it loads the other's
//! stale word, and both miss: the producer skips the wake and the consumer
//! sleeps on published work. liburing and the Rust io-uring crate both shipped
//! exactly this missing fence. The futex closes the remaining window (a wake
//! that arrives before the consumer is asleep): the kernel compares the tail
//! word with `local_head` under its own lock, and a changed tail returns at
//! once. Wake-ups are still only hints: every sleep is bounded by a timeout.

use crate::sync::{fence, spin_hint, AtomicU32, Ordering};
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Where a ring's entries live.
pub trait Slots<T: Copy> {
    /// Number of slots, a power of two.
    fn entries(&self) -> u32;

    /// Writes `value` into slot `index & (entries - 1)`.
    ///
    /// # Safety
    /// The caller is the ring's only producer and the slot is free (between
    /// the consumer's released head and `head + entries`).
    unsafe fn write(&self, index: u32, value: T);

    /// Copies slot `index & (entries - 1)` out.
    ///
    /// # Safety
    /// The caller is the ring's only consumer and the slot holds a published
    /// entry (between its head and the acquired tail).
    unsafe fn read(&self, index: u32) -> T;
}

/// Slots in memory shared with an untrusted peer, accessed with volatile
/// copies: the compiler may assume nothing about bytes another process can
/// change, and the consumer reads each entry exactly once.
#[derive(Debug)]
pub struct SharedSlots<T> {
    base: NonNull<T>,
    mask: u32,
}

// SAFETY: SharedSlots is a pointer into a shared mapping; which thread
// accesses which slot is governed by the ring protocol, not by this type.
unsafe impl<T: Send> Send for SharedSlots<T> {}

impl<T> SharedSlots<T> {
    /// # Safety
    /// `base` points to `entries` properly aligned `T`s that stay mapped as
    /// long as this value lives; `entries` is a power of two; any bit pattern
    /// is a valid `T` (the peer can write anything).
    pub unsafe fn new(base: NonNull<T>, entries: u32) -> SharedSlots<T> {
        debug_assert!(entries.is_power_of_two());
        SharedSlots { base, mask: entries - 1 }
    }
}

impl<T: Copy> Slots<T> for SharedSlots<T> {
    fn entries(&self) -> u32 {
        self.mask + 1
    }

    unsafe fn write(&self, index: u32, value: T) {
        // SAFETY: the slot index is masked into 0..entries, inside the array
        // `new` was given; the caller owns the slot by the ring protocol.
        unsafe { self.base.as_ptr().add((index & self.mask) as usize).write_volatile(value) }
    }

    unsafe fn read(&self, index: u32) -> T {
        // SAFETY: as in `write`; any bit pattern is a valid T (contract of `new`).
        unsafe { self.base.as_ptr().add((index & self.mask) as usize).read_volatile() }
    }
}

/// The peer moved its index somewhere the protocol does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexError {
    /// The consumer's head went backwards or past what was published.
    HeadOutOfRange { head: u32, cached_head: u32, local_tail: u32 },
    /// The producer's tail went backwards or more than a ring ahead.
    TailOutOfRange { tail: u32, cached_tail: u32, local_head: u32 },
}

impl core::fmt::Display for IndexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IndexError::HeadOutOfRange { head, cached_head, local_tail } => write!(
                f,
                "peer head {head} is outside [{cached_head}, {local_tail}]: it moved backwards or past the tail"
            ),
            IndexError::TailOutOfRange { tail, cached_tail, local_head } => write!(
                f,
                "peer tail {tail} is outside [{cached_tail}, {local_head} + entries]: it moved backwards or past the ring"
            ),
        }
    }
}

/// Why a push did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Index(IndexError),
}

/// The producing side of a ring.
#[derive(Debug)]
pub struct Producer<T, S> {
    tail: NonNull<AtomicU32>,
    head: NonNull<AtomicU32>,
    slots: S,
    /// Next index to write; published to `tail` by [`Producer::publish`].
    local_tail: u32,
    /// Last head loaded from the consumer; `local_tail - cached_head <= entries`.
    cached_head: u32,
    _entry: PhantomData<T>,
}

// SAFETY: the pointers name atomics in a mapping (or a test's heap) that the
// constructor's contract keeps alive; moving the producer to another thread
// moves the only producer.
unsafe impl<T: Send, S: Send> Send for Producer<T, S> {}

impl<T: Copy, S: Slots<T>> Producer<T, S> {
    /// A producer that starts at index `start` with an empty ring.
    ///
    /// # Safety
    /// `tail` and `head` stay valid while the producer lives; this is the
    /// ring's only producer.
    pub unsafe fn new(tail: NonNull<AtomicU32>, head: NonNull<AtomicU32>, slots: S, start: u32) -> Self {
        Producer { tail, head, slots, local_tail: start, cached_head: start, _entry: PhantomData }
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: valid for the producer's life (contract of `new`); atomics
        // tolerate the peer's concurrent stores.
        unsafe { self.head.as_ref() }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as in `head`.
        unsafe { self.tail.as_ref() }
    }

    /// Free slots, reloading the consumer's head only if fewer than `want`
    /// are free by the cached value.
    pub fn free(&mut self, want: u32) -> Result<u32, IndexError> {
        let entries = self.slots.entries();
        let free = entries - self.local_tail.wrapping_sub(self.cached_head);
        if free >= want {
            return Ok(free);
        }
        let head = self.head().load(Ordering::Acquire);
        if head.wrapping_sub(self.cached_head) > self.local_tail.wrapping_sub(self.cached_head) {
            return Err(IndexError::HeadOutOfRange {
                head,
                cached_head: self.cached_head,
                local_tail: self.local_tail,
            });
        }
        self.cached_head = head;
        Ok(entries - self.local_tail.wrapping_sub(head))
    }

    /// Writes one entry; it becomes visible at the next [`Producer::publish`].
    pub fn push(&mut self, value: T) -> Result<(), PushError> {
        if self.free(1).map_err(PushError::Index)? == 0 {
            return Err(PushError::Full);
        }
        // SAFETY: we are the only producer and free(1) >= 1 proved the slot
        // at local_tail is released by the consumer.
        unsafe { self.slots.write(self.local_tail, value) };
        self.local_tail = self.local_tail.wrapping_add(1);
        Ok(())
    }

    /// Makes every pushed entry visible to the consumer (one Release store).
    pub fn publish(&self) {
        self.tail().store(self.local_tail, Ordering::Release);
    }

    /// After [`Producer::publish`]: whether the consumer asked to be woken
    /// (`bit` set in its `flags`). Issues the SeqCst fence of the wake-up
    /// protocol (see the module docs).
    pub fn consumer_needs_wakeup(&self, flags: &AtomicU32, bit: u32) -> bool {
        fence(Ordering::SeqCst);
        flags.load(Ordering::Relaxed) & bit != 0
    }

    /// Entries pushed so far (published or not): the next index to write.
    pub fn local_tail(&self) -> u32 {
        self.local_tail
    }

    /// The tail word, for the futex a waiting consumer sleeps on.
    pub fn tail_word(&self) -> &AtomicU32 {
        self.tail()
    }

    /// The consumer's head as it last stored it (Relaxed, unchecked): a hint
    /// of its progress for a spinning waiter, never a licence to write a slot
    /// (that is [`Producer::free`]'s, with Acquire and a range check).
    pub fn consumer_head_hint(&self) -> u32 {
        self.head().load(Ordering::Relaxed)
    }
}

/// The consuming side of a ring.
#[derive(Debug)]
pub struct Consumer<T, S> {
    head: NonNull<AtomicU32>,
    tail: NonNull<AtomicU32>,
    slots: S,
    /// Next index to read; released to `head` by [`Consumer::release`].
    local_head: u32,
    /// Last tail loaded from the producer; `cached_tail - local_head <= entries`.
    cached_tail: u32,
    _entry: PhantomData<T>,
}

// SAFETY: as for Producer.
unsafe impl<T: Send, S: Send> Send for Consumer<T, S> {}

/// What [`Consumer::prepare_sleep`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepCheck {
    /// Nothing published: sleep on the tail word while it equals `expected_tail`.
    Sleep { expected_tail: u32 },
    /// Work arrived while the flag was being set: do not sleep.
    WorkArrived,
}

impl<T: Copy, S: Slots<T>> Consumer<T, S> {
    /// A consumer that starts at index `start` with an empty ring.
    ///
    /// # Safety
    /// `head` and `tail` stay valid while the consumer lives; this is the
    /// ring's only consumer.
    pub unsafe fn new(head: NonNull<AtomicU32>, tail: NonNull<AtomicU32>, slots: S, start: u32) -> Self {
        Consumer { head, tail, slots, local_head: start, cached_tail: start, _entry: PhantomData }
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: valid for the consumer's life (contract of `new`).
        unsafe { self.head.as_ref() }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as in `head`.
        unsafe { self.tail.as_ref() }
    }

    fn load_tail(&mut self) -> Result<u32, IndexError> {
        let tail = self.tail().load(Ordering::Acquire);
        let count = tail.wrapping_sub(self.local_head);
        if count > self.slots.entries() || count < self.cached_tail.wrapping_sub(self.local_head) {
            return Err(IndexError::TailOutOfRange {
                tail,
                cached_tail: self.cached_tail,
                local_head: self.local_head,
            });
        }
        self.cached_tail = tail;
        Ok(count)
    }

    /// Published entries not yet consumed, reloading the producer's tail
    /// only when the cached value says the ring is empty.
    pub fn available(&mut self) -> Result<u32, IndexError> {
        let cached = self.cached_tail.wrapping_sub(self.local_head);
        if cached != 0 {
            return Ok(cached);
        }
        self.load_tail()
    }

    /// Copies the next entry out, if one is published.
    pub fn pop(&mut self) -> Result<Option<T>, IndexError> {
        if self.available()? == 0 {
            return Ok(None);
        }
        // SAFETY: we are the only consumer and local_head < cached_tail, an
        // index the producer published (Acquire in load_tail).
        let value = unsafe { self.slots.read(self.local_head) };
        self.local_head = self.local_head.wrapping_add(1);
        Ok(Some(value))
    }

    /// Hands every consumed slot back to the producer (one Release store).
    pub fn release(&self) {
        self.head().store(self.local_head, Ordering::Release);
    }

    /// First step of going to sleep: sets `bit` in our `flags`, fences, and
    /// re-checks the tail (see the module docs). On `Sleep`, futex-wait on
    /// the tail word expecting the given value, then call
    /// [`Consumer::finish_sleep`]. On `WorkArrived` the flag is already clear.
    pub fn prepare_sleep(&mut self, flags: &AtomicU32, bit: u32) -> Result<SleepCheck, IndexError> {
        self.prepare_sleep_for(flags, bit, 1)
    }

    /// [`Consumer::prepare_sleep`] for a consumer that waits for `wanted` entries: it sleeps
    /// while fewer are published (expecting the tail it saw, so the next publish wakes it),
    /// instead of spinning while some but not enough are there. The same fence protocol.
    pub fn prepare_sleep_for(&mut self, flags: &AtomicU32, bit: u32, wanted: u32) -> Result<SleepCheck, IndexError> {
        flags.store(bit, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let available = self.load_tail()?;
        if available >= wanted.max(1) {
            flags.store(0, Ordering::Relaxed);
            return Ok(SleepCheck::WorkArrived);
        }
        Ok(SleepCheck::Sleep { expected_tail: self.local_head.wrapping_add(available) })
    }

    /// Clears the wake-up flag after a sleep (woken, timed out or not slept).
    pub fn finish_sleep(&self, flags: &AtomicU32) {
        flags.store(0, Ordering::Relaxed);
    }

    /// Spins up to `spin_count` times (with a pause hint) for work to arrive.
    /// Returns how many entries are available (0 if none came).
    pub fn spin_for_work(&mut self, spin_count: u32) -> Result<u32, IndexError> {
        for _ in 0..spin_count {
            let available = self.available()?;
            if available != 0 {
                return Ok(available);
            }
            spin_hint();
        }
        Ok(0)
    }

    /// Next index to read.
    pub fn local_head(&self) -> u32 {
        self.local_head
    }

    /// The tail word, for the futex a sleeping consumer waits on.
    pub fn tail_word(&self) -> &AtomicU32 {
        self.tail()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
