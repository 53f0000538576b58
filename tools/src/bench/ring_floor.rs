//! The ring floor: `shm_layout::ring`'s `Producer`/`Consumer` (the product
//! ring code, `SharedSlots` over heap memory) between two pinned threads of
//! this process. The responder pops SQEs and pushes CQEs exactly as the
//! engine's poller does (pop, push, release, publish per batch) but does no
//! validation or work; the requester keeps `depth` entries in flight with
//! the same publish-and-check-wakeup a client submit does.

use super::pipeline::Pipeline;
use super::SliceResult;
use crate::affinity::pin_current_thread;
use crate::timing::TickClock;
use rdma_ipc::futex;
use shm_layout::entry::{Cqe, Sqe};
use shm_layout::ring::{Consumer, Producer, SharedSlots};
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[repr(C, align(128))]
struct IndexLine {
    value: AtomicU32,
}

/// A queue pair's indices and slots on the heap, for two threads.
struct HeapRings {
    sq_tail: IndexLine,
    sq_head: IndexLine,
    sq_flags: IndexLine,
    cq_tail: IndexLine,
    cq_head: IndexLine,
    sq_slots: Vec<UnsafeCell<Sqe>>,
    cq_slots: Vec<UnsafeCell<Cqe>>,
    stop: AtomicBool,
}

// SAFETY: slots are only touched through the ring protocol (one producer
// and one consumer per ring, ordering argued in shm_layout::ring); the
// rest are atomics.
unsafe impl Sync for HeapRings {}

/// SQ entries of the floor ring: the client library's default.
const RING_SQ_ENTRIES: u32 = 128;

type Requester = (Producer<Sqe, SharedSlots<Sqe>>, Consumer<Cqe, SharedSlots<Cqe>>);
type Responder = (Consumer<Sqe, SharedSlots<Sqe>>, Producer<Cqe, SharedSlots<Cqe>>);

impl HeapRings {
    fn new() -> Arc<HeapRings> {
        let line = || IndexLine { value: AtomicU32::new(0) };
        Arc::new(HeapRings {
            sq_tail: line(),
            sq_head: line(),
            sq_flags: line(),
            cq_tail: line(),
            cq_head: line(),
            sq_slots: (0..RING_SQ_ENTRIES).map(|_| UnsafeCell::new(Sqe::default())).collect(),
            cq_slots: (0..RING_SQ_ENTRIES * 2).map(|_| UnsafeCell::new(Cqe::default())).collect(),
            stop: AtomicBool::new(false),
        })
    }

    fn slots<T>(cells: &[UnsafeCell<T>]) -> SharedSlots<T> {
        // UnsafeCell<T> has T's layout, so the cells are an array of T.
        let base = NonNull::new(cells.as_ptr() as *mut T).expect("a Vec's pointer is not null");
        // SAFETY: `cells.len()` Ts (a power of two) live as long as the Arc
        // the caller keeps beside the ring end; any bit pattern is a valid
        // Sqe/Cqe (FromBytes); writes go through UnsafeCell memory.
        unsafe { SharedSlots::new(base, cells.len() as u32) }
    }

    /// # Safety
    /// Called once per `HeapRings`; the result lives no longer than `self`.
    unsafe fn requester(&self) -> Requester {
        // SAFETY: the caller's contract; this is the only SQ producer and CQ consumer.
        unsafe {
            (
                Producer::new(
                    NonNull::from(&self.sq_tail.value),
                    NonNull::from(&self.sq_head.value),
                    Self::slots(&self.sq_slots),
                    0,
                ),
                Consumer::new(
                    NonNull::from(&self.cq_head.value),
                    NonNull::from(&self.cq_tail.value),
                    Self::slots(&self.cq_slots),
                    0,
                ),
            )
        }
    }

    /// # Safety
    /// Called once per `HeapRings`; the result lives no longer than `self`.
    unsafe fn responder(&self) -> Responder {
        // SAFETY: the caller's contract; this is the only SQ consumer and CQ producer.
        unsafe {
            (
                Consumer::new(
                    NonNull::from(&self.sq_head.value),
                    NonNull::from(&self.sq_tail.value),
                    Self::slots(&self.sq_slots),
                    0,
                ),
                Producer::new(
                    NonNull::from(&self.cq_tail.value),
                    NonNull::from(&self.cq_head.value),
                    Self::slots(&self.cq_slots),
                    0,
                ),
            )
        }
    }
}

/// Serves the SQ like the engine's poller, minus validation and work.
fn ring_responder(rings: Arc<HeapRings>, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let _ = pin_current_thread(cpu);
    }
    // SAFETY: the only responder of these rings; `rings` outlives the ends.
    let (mut sq, mut cq) = unsafe { rings.responder() };
    let mut idle_spins = 0u32;
    loop {
        let available = sq.available().unwrap_or(0);
        if available == 0 {
            idle_spins = idle_spins.wrapping_add(1);
            if idle_spins.is_multiple_of(1024) && rings.stop.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
            continue;
        }
        let room = cq.free(available).unwrap_or(0);
        for _ in 0..available.min(room) {
            if let Ok(Some(sqe)) = sq.pop() {
                let _ = cq.push(Cqe { user_data: sqe.user_data, ..Cqe::default() });
            }
        }
        sq.release();
        cq.publish();
    }
}

/// The ring floor at `depth` entries in flight, requester on this thread
/// (already pinned by the caller), responder on `responder_cpu`.
pub fn ring_slice(
    clock: &TickClock,
    depth: u32,
    responder_cpu: Option<usize>,
    warmup: Duration,
    slice: Duration,
) -> SliceResult {
    let rings = HeapRings::new();
    let responder = {
        let rings = rings.clone();
        std::thread::spawn(move || ring_responder(rings, responder_cpu))
    };
    // SAFETY: the only requester of these rings; `rings` outlives the ends.
    let (mut sq, mut cq) = unsafe { rings.requester() };
    let mut pipeline = Pipeline::new(clock, warmup, slice);
    let mut sequence = 0u64;
    while !pipeline.finished() {
        let wanted = depth.saturating_sub(pipeline.in_flight);
        if wanted > 0 {
            let stamp = clock.now();
            for _ in 0..wanted {
                if sq.push(Sqe::nop(sequence)).is_err() {
                    break;
                }
                sequence += 1;
                pipeline.submitted(stamp);
            }
            sq.publish();
            // The client's submit: fence, then check NEED_WAKEUP (never set here).
            if sq.consumer_needs_wakeup(&rings.sq_flags.value, 1) {
                futex::wake(&rings.sq_tail.value, 1);
            }
        }
        let mut reaped = 0u32;
        while let Ok(Some(_cqe)) = cq.pop() {
            reaped += 1;
        }
        if reaped > 0 {
            cq.release();
            pipeline.completed(reaped);
        } else {
            std::hint::spin_loop();
            pipeline.idle();
        }
    }
    rings.stop.store(true, Ordering::Release);
    fence(Ordering::SeqCst);
    let _ = responder.join();
    pipeline.into_result()
}
