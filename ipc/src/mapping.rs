//! A shared mapping of a region's file descriptor, unmapped on drop.

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot map a region of {size_bytes} bytes: {source}")]
    Map { size_bytes: u64, source: nix::Error },
    #[error("cannot map an empty region")]
    Empty,
}

/// How a mapping may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// For inspection tools: a stray write faults instead of corrupting a ring.
    ReadOnly,
}

/// `size_bytes` of a file mapped `MAP_SHARED`.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    size_bytes: usize,
}

// SAFETY: a Mapping is an address range; what is done with the bytes is
// governed by the ring protocol in shm-layout.
unsafe impl Send for Mapping {}
// SAFETY: as above; Mapping itself hands out only the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `size_bytes` of `fd` shared. `populate` pre-faults every page
    /// (`MAP_POPULATE`), so a shortage shows now, not as SIGBUS later.
    pub fn new(fd: impl AsFd, size_bytes: u64, access: Access, populate: bool) -> Result<Mapping, MappingError> {
        let length = NonZeroUsize::new(size_bytes as usize).ok_or(MappingError::Empty)?;
        let protection = match access {
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            Access::ReadOnly => ProtFlags::PROT_READ,
        };
        let mut flags = MapFlags::MAP_SHARED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        // SAFETY: a fresh shared mapping at an address the kernel chooses
        // aliases no Rust object; we own it until Drop.
        let base = unsafe { mmap(None, length, protection, flags, fd, 0) }
            .map_err(|source| MappingError::Map { size_bytes, source })?;
        Ok(Mapping { base: base.cast(), size_bytes: length.get() })
    }

    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes as u64
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/size_bytes are exactly what mmap returned; nothing
        // borrowed from the mapping outlives its owner by the callers' contract.
        let _ = unsafe { munmap(self.base.cast(), self.size_bytes) };
    }
}
