//! The engine's SIGBUS guard: ranges of its address space where a page that vanished under
//! it is replaced instead of ending the process (and every read it serves) with `SIGBUS`.
//!
//! Two kinds of range are listed:
//!
//! - **Exported files** ([`Replacement::ZeroPages`]). The exporter maps each file up to its
//!   length at the last refresh, but SeaweedFS can shrink a `.dat` at any moment (it
//!   truncates a failed append away), and until the exporter's next refresh the pages past
//!   the new end stay mapped. UCX's software gets (tcp, shared memory) copy from them inside
//!   this process, and a touch of a file page past its end raises `SIGBUS`. The handler maps
//!   a read-only zero page over the faulting page, so the copy goes on with zeros. Those fail
//!   the reader's needle check; the reader then asks for the catalogue again, which
//!   refreshes the volume here: the file is mapped again over its current length.
//! - **Client regions** ([`Replacement::PrivatePages`]). A region's memfd is shared writable
//!   with its client, who can punch a hole in it (`fallocate(PUNCH_HOLE)`,
//!   `madvise(MADV_REMOVE)`). A punched huge page is gone with its reservation: the engine's
//!   next touch allocates a new one from the pool, and with the pool empty that is `SIGBUS`.
//!   (The memfd is not sealed against punching, `F_SEAL_FUTURE_WRITE`, because that seal
//!   also refuses every new writable mapping, and a new engine must map a region it adopts
//!   after a restart.) The handler maps private writable memory over the faulting huge page
//!   and marks the range; the poller fences the region at its next pass, since the engine's
//!   copy of that page is no longer the client's.
//!
//! The table is fixed and read by the handler without locks. On a `SIGBUS` for a missing page
//! (`BUS_ADRERR`) inside a listed range, the handler maps the replacement over the page and
//! returns; the faulting access runs again on it. Any other `SIGBUS` goes to the handler
//! installed before (UCX's, which prints a backtrace and ends the process), or gets the
//! default action.
//!
//! Ordering: a slot is claimed by swapping its `base` from 0 to a mark, its other fields are
//! stored, then its `base` (Release); the handler loads `base` (Acquire) before the rest. A
//! slot is emptied (`base` = 0) before its range is unmapped; its owner makes sure nothing
//! touches the range by then.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Most ranges the guard can list: exported files (two per volume, plus retired ones in
/// their grace period) and client regions. One past it, an exported file is unguarded (the
/// exporter says so) and a client is refused.
pub(crate) const GUARDED_RANGES_MAX: usize = 8192;

/// A slot's `base` while its owner fills it in.
const FILLING: usize = usize::MAX;

struct Slot {
    /// Start address; 0: free; [`FILLING`]: being filled.
    base: AtomicUsize,
    length_bytes: AtomicUsize,
    /// Size of the pages replaced (0: the system's page), a power of two.
    page_bytes: AtomicUsize,
    /// Replaced with private writable memory (client regions), else with read-only zeros.
    writable: AtomicBool,
    /// The handler replaced a page in this range since its owner last looked.
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the table
const FREE: Slot = Slot {
    base: AtomicUsize::new(0),
    length_bytes: AtomicUsize::new(0),
    page_bytes: AtomicUsize::new(0),
    writable: AtomicBool::new(false),
    hit: AtomicBool::new(false),
};

/// What replaces a page that vanished in a listed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// A read-only zero page of the system's page size (exported files).
    ZeroPages,
    /// Private writable memory of `page_bytes` (client regions: 2 MiB for hugetlb ones).
    PrivatePages { page_bytes: usize },
}
static SLOTS: [Slot; GUARDED_RANGES_MAX] = [FREE; GUARDED_RANGES_MAX];
/// One past the highest slot ever used: the handler looks no further.
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);
static PAGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Pages of exported files the handler replaced with zeros since the last [`take_zeroed_pages`].
static ZEROED_PAGES: AtomicU64 = AtomicU64::new(0);
static TABLE_FULL_SAID: AtomicBool = AtomicBool::new(false);
/// The `SIGBUS` action before ours, to hand other faults to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Why the handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the engine's SIGBUS handler (for files that shrink and regions punched under it): {0}")]
pub struct InstallError(std::io::Error);

/// Installs the handler (once per process; later calls do nothing). Call it after UCX is
/// initialised, so that UCX's own handler is the one faults not ours are handed to.
pub(crate) fn install() -> Result<(), InstallError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        PAGE_BYTES.store(crate::rdma::page_size_bytes() as usize, Ordering::Relaxed);
        // SAFETY: sigaction structs are plain data; zeroed is a valid empty one.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: plain data, as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `action.sa_mask` is a valid sigset to empty.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: both pointers are to live sigaction structs; on_sigbus has the SA_SIGINFO
        // signature.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let _ = PREVIOUS.set(previous);
        Ok(())
    });
    installed.clone().map_err(|error| InstallError(std::io::Error::other(error)))
}

/// A range's place in the table; empties it when dropped (before the range is unmapped).
#[derive(Debug)]
pub(crate) struct Guarded {
    slot: Option<usize>,
}

impl Guarded {
    /// Lists `base .. base + length_bytes` (`base` aligned to the replacement's pages). A full
    /// table leaves it unguarded, said once ([`Guarded::listed`]).
    pub(crate) fn new(base: usize, length_bytes: usize, replacement: Replacement) -> Guarded {
        let (page_bytes, writable) = match replacement {
            Replacement::ZeroPages => (0, false),
            Replacement::PrivatePages { page_bytes } => (page_bytes, true),
        };
        // Bounded: one pass over the table.
        for (index, slot) in SLOTS.iter().enumerate() {
            // Claimed with a mark first, so no other thread fills the slot meanwhile.
            if slot.base.compare_exchange(0, FILLING, Ordering::Acquire, Ordering::Relaxed).is_err() {
                continue;
            }
            slot.length_bytes.store(length_bytes, Ordering::Relaxed);
            slot.page_bytes.store(page_bytes, Ordering::Relaxed);
            slot.writable.store(writable, Ordering::Relaxed);
            slot.hit.store(false, Ordering::Relaxed);
            slot.base.store(base, Ordering::Release);
            SLOTS_USED.fetch_max(index + 1, Ordering::Release);
            return Guarded { slot: Some(index) };
        }
        if !TABLE_FULL_SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = GUARDED_RANGES_MAX,
                "more exported files and regions than the SIGBUS guard lists: a get past the end of a file that shrinks could end this process"
            );
        }
        Guarded { slot: None }
    }

    /// Whether the range is in the table (a full table leaves it out).
    pub(crate) fn listed(&self) -> bool {
        self.slot.is_some()
    }

    /// Whether a page of this range was replaced since the last call (for exported files:
    /// pages of the file there are zero pages now, until the owner maps it over them again).
    pub(crate) fn take_hit(&self) -> bool {
        self.slot.is_some_and(|index| SLOTS[index].hit.swap(false, Ordering::Relaxed))
    }

    /// Whether a page of this range was ever replaced (client regions: fenced for good).
    pub(crate) fn hit(&self) -> bool {
        self.slot.is_some_and(|index| SLOTS[index].hit.load(Ordering::Acquire))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            SLOTS[index].base.store(0, Ordering::Release);
        }
    }
}

/// Pages past a shrunk exported file's end that gets touched (and read as zeros) since the last call.
pub(crate) fn take_zeroed_pages() -> u64 {
    ZEROED_PAGES.swap(0, Ordering::Relaxed)
}

/// The listed range that holds `address` (async-signal-safe: atomics only).
fn guarded(address: usize) -> Option<&'static Slot> {
    let used = SLOTS_USED.load(Ordering::Acquire).min(GUARDED_RANGES_MAX);
    SLOTS[..used].iter().find(|slot| {
        let base = slot.base.load(Ordering::Acquire);
        base != 0 && base != FILLING && address >= base && address - base < slot.length_bytes.load(Ordering::Relaxed)
    })
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let system_page_bytes = PAGE_BYTES.load(Ordering::Relaxed);
    let slot = if code == libc::BUS_ADRERR && system_page_bytes > 0 { guarded(address) } else { None };
    if let Some(slot) = slot {
        let page_bytes = slot.page_bytes.load(Ordering::Relaxed).max(system_page_bytes);
        let writable = slot.writable.load(Ordering::Relaxed);
        let page = address & !(page_bytes - 1);
        let (protection, reserve) =
            if writable { (libc::PROT_READ | libc::PROT_WRITE, 0) } else { (libc::PROT_READ, libc::MAP_NORESERVE) };
        // SAFETY: the page lies inside a listed range, address space this process mapped and
        // guards; the replacement keeps every access to it valid (an exported file's page
        // past the end reads zeros; a region's page becomes private, and the region is
        // fenced). mmap is a plain system call here (no allocation, no lock).
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_bytes,
                protection,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | reserve | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            slot.hit.store(true, Ordering::Release);
            if !writable {
                ZEROED_PAGES.fetch_add(1, Ordering::Relaxed);
            }
            return; // the faulting access runs again on the replacement
        }
    }
    hand_on(signal, info, context);
}

/// A fault that is not ours: to the previous handler, or the default action.
fn hand_on(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.get().map(|action| (action.sa_sigaction, action.sa_flags));
    match previous {
        Some((handler, flags)) if handler != libc::SIG_DFL && handler != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO handler has this signature; we pass on what we got.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                handler(signal, info, context);
            } else {
                // SAFETY: a plain handler takes the signal number only.
                let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                handler(signal);
            }
        }
        _ => {
            // The default action: reset and return; the fault happens again and ends the
            // process as it would have without us.
            // SAFETY: plain data; SIG_DFL with an empty mask is a valid action.
            let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: a valid action struct; the old action is not wanted.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Maps two pages of a fresh file (MAP_SHARED, read-only), then cuts the file to nothing:
    /// both pages are past its end. Returns the file (kept open) and the mapping's address.
    fn shrunk_mapping() -> (std::fs::File, usize, usize) {
        let page = crate::rdma::page_size_bytes() as usize;
        let file = tempfile::tempfile().unwrap();
        file.set_len(2 * page as u64).unwrap();
        // SAFETY: a fresh mapping chosen by the kernel, of a file this test owns.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), 2 * page, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        assert_ne!(base, libc::MAP_FAILED);
        file.set_len(0).unwrap();
        (file, base as usize, page)
    }

    #[test]
    fn a_touch_past_the_end_of_a_guarded_file_reads_zeros() {
        install().unwrap();
        let (_file, base, page) = shrunk_mapping();
        let guarded = Guarded::new(base, 2 * page, Replacement::ZeroPages);
        take_zeroed_pages();
        // SAFETY: inside the mapping made above; the guard turns the fault into a zero page.
        let byte = unsafe { std::ptr::read_volatile((base + page + 17) as *const u8) };
        assert_eq!(byte, 0);
        assert_eq!(take_zeroed_pages(), 1, "one page was replaced");
        assert!(guarded.take_hit(), "the range knows");
        assert!(!guarded.take_hit(), "once");
        drop(guarded);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, 2 * page) };
    }

    #[test]
    fn a_touch_past_the_end_of_an_unguarded_file_still_raises_sigbus() {
        install().unwrap();
        let (_file, base, _) = shrunk_mapping();
        // SAFETY: the child only reads the mapping and exits; it allocates nothing.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: inside the mapping; past the file's end, so this faults.
                unsafe { std::ptr::read_volatile(base as *const u8) };
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(
                    matches!(status, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGBUS, _)),
                    "the child should have died of SIGBUS: {status:?}"
                );
            }
        }
    }

    /// A page of a shared memfd mapping truncated away (what a punched huge page is when the
    /// pool is empty) faults with SIGBUS; in a region's range, the access lands on private
    /// writable memory, the range is marked, and the rest of the mapping is still the file's.
    #[test]
    fn a_vanished_region_page_is_replaced_with_private_memory() {
        install().unwrap();
        let page = crate::rdma::page_size_bytes() as usize;
        let memfd =
            nix::sys::memfd::memfd_create(c"guard-test", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&memfd, 3 * page as i64).unwrap();
        let mapping =
            rdma_ipc::mapping::Mapping::new(&memfd, 3 * page as u64, rdma_ipc::mapping::Access::ReadWrite, true)
                .unwrap();
        let base = mapping.base().as_ptr() as usize;
        let guarded = Guarded::new(base, 3 * page, Replacement::PrivatePages { page_bytes: page });
        assert!(guarded.listed() && !guarded.hit());
        nix::unistd::ftruncate(&memfd, page as i64).unwrap();
        let word = (base + 2 * page) as *mut u64;
        // SAFETY: inside the mapping; the guard turns the fault into private memory.
        unsafe { word.write_volatile(7) };
        // SAFETY: as above; the page is private memory now.
        assert_eq!(unsafe { word.read_volatile() }, 7);
        assert!(guarded.hit());
        // SAFETY: inside the mapping, still backed by the file.
        unsafe { (base as *mut u64).write_volatile(9) };
        let mut first = [0u8; 8];
        nix::sys::uio::pread(&memfd, &mut first, 0).unwrap();
        assert_eq!(u64::from_ne_bytes(first), 9);
        drop(guarded);
    }
}
