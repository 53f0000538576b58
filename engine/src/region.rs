//! Creating a client's shared region: a memfd (hugetlb when possible),
//! pre-faulted so a shortage fails at attach, with its header written.

use crate::config::HugepagePolicy;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{madvise, MmapAdvise};
use rdma_ipc::mapping::{Access, Mapping, MappingError};
use shm_layout::geometry::Geometry;
use shm_layout::header::{backing, engine_state, region_state, RegionDescription};
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
    // Field order matters: the mapping is unmapped before the memfd closes.
    mapping: Mapping,
    pub memfd: OwnedFd,
}

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
/// the client has mapped the region ([`RegionMemory::seal_for_serving`]), with the seal that
/// needs the client's mapping to exist first.
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

impl RegionMemory {
    /// Allocates, pre-faults and initialises a region.
    pub fn create(
        geometry: Geometry,
        identity: RegionIdentity,
        policy: HugepagePolicy,
    ) -> Result<RegionMemory, RegionError> {
        let (memfd, mapping, hugepages) = allocate(geometry.region_size_bytes, policy)?;
        // SAFETY: the mapping is page-aligned, holds region_size_bytes, and
        // is owned by the RegionMemory the view is stored in.
        let view =
            unsafe { RegionView::new(mapping.base(), mapping.size_bytes(), geometry) }.map_err(RegionError::View)?;
        let description = RegionDescription {
            engine_generation: identity.engine_generation,
            region_id: identity.region_id,
            engine_pid: identity.engine_pid,
            client_pid: identity.client_pid,
            page_size_bytes: if hugepages { HUGE_PAGE_SIZE_BYTES as u32 } else { PAGE_SIZE_BYTES as u32 },
            backing: if hugepages { backing::HUGETLB } else { backing::NORMAL_PAGES },
            ..RegionDescription::new(&geometry)
        };
        view.init_header(&description);
        let live = view.live();
        live.region_state.store(region_state::ACTIVE, Ordering::Relaxed);
        live.heartbeat_ns.store(rdma_ipc::clock::monotonic_ns(), Ordering::Relaxed);
        live.engine_state.store(engine_state::RUNNING, Ordering::Release);
        Ok(RegionMemory { identity, geometry, hugepages, view, mapping, memfd })
    }

    pub fn size_bytes(&self) -> u64 {
        self.mapping.size_bytes()
    }

    /// Seals the region once the client has mapped it, before the engine serves it, and
    /// checks that the client freed none of its pages while it could.
    ///
    /// `F_SEAL_FUTURE_WRITE` refuses new writable mappings and, for shmem and hugetlbfs
    /// alike, hole punching (`fallocate(PUNCH_HOLE)`, `madvise(MADV_REMOVE)`), while the
    /// mappings already made keep working. A punched huge page is gone from every mapping
    /// and its reservation with it: the engine's next touch of it would allocate a new one,
    /// and with the pool empty that is SIGBUS. Before the seal the client had a writable fd,
    /// so the engine looks (`mincore`) at every page of its own pre-faulted mapping: a hole
    /// means the client is refused. Normal pages need no look: a punched shmem page comes
    /// back as a zero page, which the engine reads as any other bad input.
    /// Errors are one sentence for the client's refusal.
    pub fn seal_for_serving(&self) -> Result<(), String> {
        add_seals(&self.memfd, libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL).map_err(|error| {
            format!("the region could not be sealed for serving ({error}); a client must not seal its region itself")
        })?;
        if self.hugepages {
            let missing =
                self.pages_not_resident().map_err(|error| format!("cannot check the region's pages: {error}"))?;
            if missing > 0 {
                return Err(format!(
                    "{missing} pages of the region were freed (hole punched) before it was sealed; the engine does not serve it"
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
