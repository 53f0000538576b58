//! A client's shared region: created by the engine (a memfd, hugetlb when possible,
//! pre-faulted so a shortage fails at attach, with its header written), or adopted from a
//! client that presents the region an earlier engine made for it, checked as hostile input.
//! Either way the engine's mapping of it is guarded ([`crate::sigbus_guard`]): pages freed
//! under the engine fence the region instead of killing the engine.

use crate::config::HugepagePolicy;
use crate::sigbus_guard::{Guarded, Replacement};
use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{madvise, MmapAdvise};
use rdma_ipc::mapping::{Access, Mapping, MappingError};
use shm_layout::geometry::Geometry;
use shm_layout::header::{backing, engine_state, fence_reason, region_state, RegionDescription};
use shm_layout::region::RegionView;
use shm_layout::{HUGE_PAGE_SIZE_BYTES, PAGE_SIZE_BYTES};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot seal the region's size (F_ADD_SEALS): {0}")]
    Seal(std::io::Error),
    #[error("memfd_create failed: {0}")]
    Memfd(nix::Error),
    #[error("cannot size the region to {size_bytes} bytes: {source}")]
    Size { size_bytes: u64, source: nix::Error },
    #[error("not enough huge pages for a {size_bytes}-byte region ({source}); reserve more in /proc/sys/vm/nr_hugepages or run with --hugepages auto")]
    NoHugepages { size_bytes: u64, source: nix::Error },
    #[error(transparent)]
    Map(#[from] MappingError),
    #[error("the mapped region is not usable: {0:?}")]
    View(shm_layout::region::ViewError),
    #[error(transparent)]
    Guard(#[from] crate::sigbus_guard::InstallError),
    #[error(
        "the engine's SIGBUS guard lists {} ranges, its most; no region can be served safely beyond them",
        crate::sigbus_guard::GUARDED_RANGES_MAX
    )]
    GuardFull,
}

/// Facts about the client and the engine written into the header.
#[derive(Clone, Debug)]
pub struct RegionIdentity {
    pub region_id: u64,
    pub engine_generation: u64,
    pub engine_pid: u32,
    pub client_pid: u32,
    pub client_name: String,
}

/// A region's memory: the memfd (kept for `ringstat`), the engine's mapping,
/// and the geometry the engine computed (never re-read from shared memory).
#[derive(Debug)]
pub struct RegionMemory {
    pub identity: RegionIdentity,
    pub geometry: Geometry,
    pub hugepages: bool,
    pub view: RegionView,
    /// The memfd's file (device, inode): one region is served for one connection only.
    pub file: (u64, u64),
    // Field order matters: the guard ends before the mapping is unmapped (its range may be
    // mapped again by anything), and the mapping before the memfd closes.
    guard: Guarded,
    mapping: Mapping,
    pub memfd: OwnedFd,
}

/// What the engine accepts in a region a client presents at re-attach.
#[derive(Clone, Copy, Debug)]
pub struct AdoptionLimits {
    /// The largest region the engine's limits allow.
    pub max_region_bytes: u64,
    pub policy: HugepagePolicy,
}

/// `statfs` magic numbers of the two file systems a memfd lives on.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

fn create_hugetlb(size_bytes: u64) -> Result<(OwnedFd, Mapping), RegionError> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC
        | MemFdCreateFlag::MFD_ALLOW_SEALING
        | MemFdCreateFlag::MFD_HUGETLB
        | MemFdCreateFlag::MFD_HUGE_2MB;
    let memfd = memfd_create(c"rdma-region", flags).map_err(RegionError::Memfd)?;
    // fallocate reserves every huge page now: ENOSPC here instead of SIGBUS later.
    nix::unistd::ftruncate(&memfd, size_bytes as i64).map_err(|source| RegionError::Size { size_bytes, source })?;
    fallocate_retrying(&memfd, size_bytes).map_err(|source| RegionError::NoHugepages { size_bytes, source })?;
    seal_size(&memfd)?;
    let mapping = Mapping::new(&memfd, size_bytes, Access::ReadWrite, true)?;
    Ok((memfd, mapping))
}

fn create_normal(size_bytes: u64) -> Result<(OwnedFd, Mapping), RegionError> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    let memfd = memfd_create(c"rdma-region", flags).map_err(RegionError::Memfd)?;
    nix::unistd::ftruncate(&memfd, size_bytes as i64).map_err(|source| RegionError::Size { size_bytes, source })?;
    fallocate_retrying(&memfd, size_bytes).map_err(|source| RegionError::Size { size_bytes, source })?;
    seal_size(&memfd)?;
    let mapping = Mapping::new(&memfd, size_bytes, Access::ReadWrite, true)?;
    // SAFETY: advising our own fresh mapping; MADV_HUGEPAGE changes no contents.
    let advised = unsafe { madvise(mapping.base().cast(), size_bytes as usize, MmapAdvise::MADV_HUGEPAGE) };
    if let Err(error) = advised {
        tracing::debug!(%error, "MADV_HUGEPAGE not applied to a region");
    }
    Ok((memfd, mapping))
}

/// Times `fallocate` is retried when a signal interrupts it.
const FALLOCATE_ATTEMPTS: u32 = 16;

/// `fallocate` of the whole memfd, retried (bounded) on `EINTR`: hugetlbfs and shmem stop
/// allocating whenever a signal is pending for the thread, and what they allocated stays, so
/// the next call continues. (Seen on this machine with hugetlb regions once the start-up
/// report had queried sysinfo; which signal was pending was not found.)
fn fallocate_retrying(memfd: &OwnedFd, size_bytes: u64) -> Result<(), nix::Error> {
    let mut attempt = 1;
    loop {
        match fallocate(memfd.as_raw_fd(), FallocateFlags::empty(), 0, size_bytes as i64) {
            Err(nix::Error::EINTR) if attempt < FALLOCATE_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Seals the region's size before its fd leaves the engine: a client that truncates (or
/// grows) it would otherwise make the engine's next access to the region fault (SIGBUS),
/// taking every other client down. The seals cannot be lifted; `F_SEAL_SEAL` is added when
/// the client has mapped the region ([`RegionMemory::seal_for_serving`]).
fn seal_size(memfd: &OwnedFd) -> Result<(), RegionError> {
    add_seals(memfd, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW).map_err(RegionError::Seal)
}

fn add_seals(memfd: &OwnedFd, seals: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: fcntl on a descriptor we own; F_ADD_SEALS takes an int and touches no memory.
    let result = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn allocate(size_bytes: u64, policy: HugepagePolicy) -> Result<(OwnedFd, Mapping, bool), RegionError> {
    if policy == HugepagePolicy::Off {
        return create_normal(size_bytes).map(|(fd, mapping)| (fd, mapping, false));
    }
    match create_hugetlb(size_bytes) {
        Ok((fd, mapping)) => Ok((fd, mapping, true)),
        Err(error) if policy == HugepagePolicy::Require => Err(error),
        Err(error) => {
            if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "huge pages unavailable; regions fall back to normal pages with MADV_HUGEPAGE (marked in each region header; said once)"
                );
            }
            create_normal(size_bytes).map(|(fd, mapping)| (fd, mapping, false))
        }
    }
}

/// Guards the engine's mapping of a region (see [`crate::sigbus_guard`]).
fn guard_mapping(mapping: &Mapping, hugepages: bool) -> Result<Guarded, RegionError> {
    crate::sigbus_guard::install()?;
    let page_bytes = if hugepages { HUGE_PAGE_SIZE_BYTES } else { PAGE_SIZE_BYTES } as usize;
    let replacement = Replacement::PrivatePages { page_bytes };
    let guarded = Guarded::new(mapping.base().as_ptr() as usize, mapping.size_bytes() as usize, replacement);
    if !guarded.listed() {
        return Err(RegionError::GuardFull);
    }
    Ok(guarded)
}

impl RegionMemory {
    /// Allocates, pre-faults and initialises a region.
    pub fn create(
        geometry: Geometry,
        identity: RegionIdentity,
        policy: HugepagePolicy,
    ) -> Result<RegionMemory, RegionError> {
        let (memfd, mapping, hugepages) = allocate(geometry.region_size_bytes, policy)?;
        let guard = guard_mapping(&mapping, hugepages)?;
        let memory = RegionMemory::assemble(memfd, mapping, guard, geometry, identity, hugepages)?;
        memory.write_header();
        Ok(memory)
    }

    /// A region of `geometry` in a guarded mapping of `memfd`.
    fn assemble(
        memfd: OwnedFd,
        mapping: Mapping,
        guard: Guarded,
        geometry: Geometry,
        identity: RegionIdentity,
        hugepages: bool,
    ) -> Result<RegionMemory, RegionError> {
        // SAFETY: the mapping is page-aligned, holds region_size_bytes, and
        // is owned by the RegionMemory the view is stored in.
        let view =
            unsafe { RegionView::new(mapping.base(), mapping.size_bytes(), geometry) }.map_err(RegionError::View)?;
        let stat = nix::sys::stat::fstat(memfd.as_raw_fd())
            .map_err(|source| RegionError::Size { size_bytes: mapping.size_bytes(), source })?;
        let file = (stat.st_dev, stat.st_ino);
        Ok(RegionMemory { identity, geometry, hugepages, view, file, guard, mapping, memfd })
    }

    /// Takes over a region a client presents (the memfd an earlier engine made for it,
    /// after that engine went away), checking everything about it as hostile input: a
    /// memfd whose size is sealed and that is not sealed against writing, on huge pages if
    /// the engine requires them, no larger than the limits allow, with a valid header of
    /// this layout version that describes exactly its size. Writes nothing into it: the
    /// caller checks the geometry against its limits, then calls
    /// [`RegionMemory::take_over`]. Errors are one sentence for the client's refusal.
    pub fn adopt(memfd: OwnedFd, identity: RegionIdentity, limits: &AdoptionLimits) -> Result<RegionMemory, String> {
        let stat = nix::sys::stat::fstat(memfd.as_raw_fd())
            .map_err(|error| format!("cannot look at the presented region ({error})"))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err("the presented descriptor is not a region (not a regular file)".into());
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; it takes no argument and touches no memory.
        let seals = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err("the presented file is not a memfd (it has no seals)".into());
        }
        let size_seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals & size_seals != size_seals {
            return Err(
                "the presented region's size is not sealed (F_SEAL_SHRINK, F_SEAL_GROW), so it could shrink under the engine"
                    .into(),
            );
        }
        if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
            return Err(
                "the presented region is sealed against writing, so the engine cannot map it to serve it".into()
            );
        }
        let size_bytes = stat.st_size as u64;
        if size_bytes == 0 || !size_bytes.is_multiple_of(HUGE_PAGE_SIZE_BYTES) || size_bytes > limits.max_region_bytes {
            return Err(format!(
                "the presented region is {size_bytes} bytes; a region is a multiple of {HUGE_PAGE_SIZE_BYTES} bytes, at most {} with this engine's limits",
                limits.max_region_bytes
            ));
        }
        let fs = nix::sys::statfs::fstatfs(&memfd)
            .map_err(|error| format!("cannot look at the presented region's file system ({error})"))?;
        let hugepages = match fs.filesystem_type().0 as i64 {
            HUGETLBFS_MAGIC if fs.block_size() as u64 == HUGE_PAGE_SIZE_BYTES => true,
            TMPFS_MAGIC => false,
            _ => return Err("the presented file is not a memfd of normal or 2 MiB huge pages".into()),
        };
        if limits.policy == HugepagePolicy::Require && !hugepages {
            return Err(
                "the presented region is not on huge pages, which this engine requires (--hugepages require)".into()
            );
        }
        let mapping = Mapping::new(&memfd, size_bytes, Access::ReadWrite, true)
            .map_err(|error| format!("cannot map the presented region: {error}"))?;
        // Guarded before the first touch: the client can punch holes in it at any time.
        let guard = guard_mapping(&mapping, hugepages).map_err(|error| error.to_string())?;
        // The description is copied out once and validated: the client may change it at any time.
        // SAFETY: the mapping is page-aligned and `size_bytes` long, and outlives this use.
        let opened = unsafe { RegionView::open(mapping.base(), mapping.size_bytes()) };
        let geometry = opened
            .map(|(view, _)| *view.geometry())
            .map_err(|error| format!("the presented region's header is not valid: {error}"))?;
        if geometry.region_size_bytes != size_bytes {
            return Err(format!(
                "the presented region's header describes {} bytes, its file holds {size_bytes}",
                geometry.region_size_bytes
            ));
        }
        RegionMemory::assemble(memfd, mapping, guard, geometry, identity, hugepages).map_err(|error| error.to_string())
    }

    /// Makes an adopted region this engine's: a new description (this engine, this
    /// connection's client), live words reset, every ring empty and its counters zero. The
    /// buffer area is left as it is: the client's data stays where it was.
    pub fn take_over(&self) {
        for index in 0..self.geometry.queue_pair_count {
            let control = self.view.queue_control(index);
            for word in [
                &control.sq_tail,
                &control.sq_head,
                &control.sq_flags,
                &control.cq_tail,
                &control.cq_head,
                &control.cq_flags,
            ] {
                word.store(0, Ordering::Relaxed);
            }
            let stats = self.view.stats(index);
            for counter in [
                &stats.sqes_taken,
                &stats.cqes_posted,
                &stats.errors,
                &stats.invalid_entries,
                &stats.bytes_read,
                &stats.sleeps,
                &stats.client_wakeups,
                &stats.in_flight,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
        }
        self.view.live().fence_reason.store(fence_reason::NONE, Ordering::Relaxed);
        self.write_header();
    }

    /// Writes the description and the live words of a region this engine serves.
    fn write_header(&self) {
        let identity = &self.identity;
        let description = RegionDescription {
            engine_generation: identity.engine_generation,
            region_id: identity.region_id,
            engine_pid: identity.engine_pid,
            client_pid: identity.client_pid,
            page_size_bytes: if self.hugepages { HUGE_PAGE_SIZE_BYTES as u32 } else { PAGE_SIZE_BYTES as u32 },
            backing: if self.hugepages { backing::HUGETLB } else { backing::NORMAL_PAGES },
            ..RegionDescription::new(&self.geometry)
        };
        self.view.init_header(&description);
        let live = self.view.live();
        live.region_state.store(region_state::ACTIVE, Ordering::Relaxed);
        live.heartbeat_ns.store(rdma_ipc::clock::monotonic_ns(), Ordering::Relaxed);
        live.engine_state.store(engine_state::RUNNING, Ordering::Release);
    }

    /// Whether pages of the region were freed under the engine (see [`crate::sigbus_guard`]): the engine's
    /// copy of them is no longer the client's, so the region must be fenced.
    pub fn pages_lost(&self) -> bool {
        self.guard.hit()
    }

    pub fn size_bytes(&self) -> u64 {
        self.mapping.size_bytes()
    }

    /// Seals the region once the client has mapped it, before the engine serves it, and
    /// checks that the client freed none of its huge pages meanwhile.
    ///
    /// The seal is `F_SEAL_SEAL`: with the size seals the region already has, the seal set
    /// is then final. It is not sealed against writing (`F_SEAL_FUTURE_WRITE`), though that
    /// would refuse hole punching, because it also refuses every new writable mapping: a
    /// new engine could not adopt the region after a restart. A punched huge page is gone
    /// from every mapping with its reservation, so the engine looks (`mincore`) at every page
    /// of its own pre-faulted mapping and refuses a region with a hole; a page punched later
    /// is caught by the engine's guard ([`crate::sigbus_guard`]), which fences the region. Normal pages
    /// need no look: a punched shmem page comes back as a zero page, which the engine reads
    /// as any other bad input. A region presented again keeps the seal it has. Errors are
    /// one sentence for the client's refusal.
    pub fn seal_for_serving(&self) -> Result<(), String> {
        // SAFETY: F_GET_SEALS on a descriptor we own; it takes no argument and touches no memory.
        let seals = unsafe { libc::fcntl(self.memfd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals >= 0 && seals & libc::F_SEAL_SEAL == 0 {
            add_seals(&self.memfd, libc::F_SEAL_SEAL)
                .map_err(|error| format!("the region could not be sealed for serving ({error})"))?;
        }
        if self.hugepages {
            let missing =
                self.pages_not_resident().map_err(|error| format!("cannot check the region's pages: {error}"))?;
            if missing > 0 {
                return Err(format!(
                    "{missing} pages of the region were freed (hole punched) before it was served; the engine does not serve it"
                ));
            }
        }
        Ok(())
    }

    /// How many base pages of the engine's mapping are not resident.
    fn pages_not_resident(&self) -> Result<usize, std::io::Error> {
        let pages = self.mapping.size_bytes().div_ceil(PAGE_SIZE_BYTES) as usize;
        let mut resident = vec![0u8; pages];
        // SAFETY: the mapping is ours, page-aligned and `size_bytes` long; `resident` holds
        // one byte per page of it, as mincore writes.
        let result = unsafe {
            libc::mincore(
                self.mapping.base().as_ptr().cast(),
                self.mapping.size_bytes() as usize,
                resident.as_mut_ptr(),
            )
        };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(resident.iter().filter(|&&page| page & 1 == 0).count())
    }
}
