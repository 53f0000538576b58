//! What each client process counts, in a memfd the campaign creates and every client maps:
//! one 128-byte slot of atomics per client. The counters outlive a client the campaign
//! kills (the campaign holds the memfd), and the campaign reads them while a client is
//! stopped.
//!
//! Every field has one writer: the client of that slot (the campaign only clears
//! `attached` after it killed the client, when nobody else writes it). Readers use
//! Relaxed loads: the figures are counts and times, no other memory is published
//! through them.

use super::ChaosError;
use rdma_ipc::mapping::{Access, Mapping};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most clients one campaign runs (the memfd is one page per 32 slots).
pub const MAX_CLIENTS: usize = 64;

/// One client's counters.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct ClientSlot {
    /// Reads completed with the right bytes.
    pub reads_ok: AtomicU64,
    /// Data bytes of those reads.
    pub bytes_ok: AtomicU64,
    /// Reads completed as a success whose bytes differ from the known content.
    pub wrong_reads: AtomicU64,
    /// Reads with no completion by their submission + deadline + margin.
    pub hangs: AtomicU64,
    /// Reads completed with an error code (expected while a peer is down).
    pub read_errors: AtomicU64,
    /// Attachments that ended with an error (engine gone, fenced, a hang).
    pub session_errors: AtomicU64,
    /// Successful attaches.
    pub attaches: AtomicU64,
    /// Attaches that failed (expected while the engine restarts).
    pub attach_failures: AtomicU64,
    /// `CLOCK_MONOTONIC` of the last read completed with the right bytes.
    pub last_success_ns: AtomicU64,
    /// 1 while the client holds an attachment.
    pub attached: AtomicU64,
    /// Detaches on purpose (the soak's churn).
    pub detaches: AtomicU64,
    /// Regions the client has read through (a `Reader`'s region survives engine restarts: 1).
    pub regions: AtomicU64,
    _reserved: [AtomicU64; 4],
}

const _: () = assert!(core::mem::size_of::<ClientSlot>() == 128);

const SLOTS_BYTES: u64 = (MAX_CLIENTS * core::mem::size_of::<ClientSlot>()) as u64;

/// The mapped slots.
#[derive(Debug)]
pub struct Counters {
    mapping: Mapping,
}

impl Counters {
    /// A new zeroed memfd, not close-on-exec, so clients inherit it under the same number.
    pub fn create() -> Result<(Counters, OwnedFd), ChaosError> {
        let memfd = nix::sys::memfd::memfd_create(c"rdma-chaos-counters", nix::sys::memfd::MemFdCreateFlag::empty())
            .map_err(|error| ChaosError::Setup(format!("memfd_create for the counters: {error}")))?;
        nix::unistd::ftruncate(&memfd, SLOTS_BYTES as i64)
            .map_err(|error| ChaosError::Setup(format!("ftruncate of the counters: {error}")))?;
        Ok((Counters::map(memfd.as_fd())?, memfd))
    }

    /// Maps the counters memfd a client inherited as `fd`.
    pub fn inherited(fd: i32) -> Result<Counters, ChaosError> {
        // SAFETY: the campaign passes the number of the counters memfd it left open across
        // exec; the borrow lasts only for the mmap call below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Counters::map(borrowed)
    }

    fn map(fd: BorrowedFd<'_>) -> Result<Counters, ChaosError> {
        let mapping = Mapping::new(fd, SLOTS_BYTES, Access::ReadWrite, true)
            .map_err(|error| ChaosError::Setup(format!("cannot map the counters: {error}")))?;
        Ok(Counters { mapping })
    }

    /// Slot `index` (< [`MAX_CLIENTS`]).
    pub fn slot(&self, index: usize) -> &ClientSlot {
        assert!(index < MAX_CLIENTS, "client slot {index} is past {MAX_CLIENTS}");
        // SAFETY: the mapping is page-aligned and SLOTS_BYTES long, so slot `index` lies
        // inside it at a 128-byte aligned offset; ClientSlot is all atomics, for which the
        // zeroed memfd and anything another process stores are valid values; the
        // reference lives no longer than &self, which owns the mapping.
        unsafe { &*self.mapping.base().as_ptr().cast::<ClientSlot>().add(index) }
    }
}

impl ClientSlot {
    pub fn add(counter: &AtomicU64, count: u64) {
        // One writer per slot: a load and a store, no locked instruction.
        counter.store(counter.load(Ordering::Relaxed) + count, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
