//! The exporter's view of one file: a read-only mapping that grows with the file, registered
//! with UCX in pieces.
//!
//! Each file gets a *reservation*: a large range of address space mapped read-only to anonymous
//! zero pages (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`: no memory, no commit charge).
//! The file is mapped over its start with `MAP_FIXED`, page-aligned, up to its current length
//! rounded up to a page; growth maps the next part at the next address, so file offset `x` is
//! always at `base + x` and the registered pieces never move. Nothing of the file is mapped
//! beyond its end, so a software-emulated get (served by memcpy inside this process) can never
//! touch a file page past EOF, which would SIGBUS the exporter; a rogue get past the end reads
//! zeros instead. When the file is replaced, [`FileMap::retire`] maps zeros over the whole
//! reservation (late gets read zeros, fail their needle check, and the reader refreshes); the
//! old inode is released at once, the address range only after a grace period.
//!
//! Registration: piece `k` covers file bytes `k * piece_size .. min((k + 1) * piece_size,
//! mapped length)`. Only the last piece changes when the file grows; its old registration is
//! kept (retired) for a grace period because readers may still use its rkey.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Instant;

use ucx::{Context, MemoryRegion};

use super::catalogue::{to_hex, FileEntry, PieceEntry};
use super::page_size_bytes;
use crate::sigbus_guard::{Guarded, Replacement};

/// Why a file could not be (re)mapped or registered.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot map {path}: {source}")]
    Map { path: PathBuf, source: std::io::Error },
    #[error("cannot register {path} with UCX: {source}")]
    Register { path: PathBuf, source: ucx::Error },
    /// The file grew past its reservation; the caller exports it afresh.
    #[error("{path} grew to {length_bytes} bytes, past its {reserved_bytes}-byte reservation")]
    Outgrown { path: PathBuf, length_bytes: u64, reserved_bytes: u64 },
}

/// A range of address space owned by one file; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    base: NonNull<u8>,
    length_bytes: u64,
    /// Its entry in the SIGBUS guard's table (`sigbus_guard`); emptied before the range is unmapped.
    guard: Option<Guarded>,
}

impl Reservation {
    fn new(length_bytes: u64, path: &Path) -> Result<Reservation, MapError> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length_bytes as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MapError::Map { path: path.to_path_buf(), source: std::io::Error::last_os_error() });
        }
        let base = NonNull::new(base.cast::<u8>()).expect("mmap returned NULL without MAP_FIXED");
        let guard = Some(Guarded::new(base.as_ptr() as usize, length_bytes as usize, Replacement::ZeroPages));
        Ok(Reservation { base, length_bytes, guard })
    }

    /// Maps file bytes `from..to` (page-aligned, inside the reservation) at `base + from`.
    fn map_file(&self, file: &File, from: u64, to: u64, path: &Path) -> Result<(), MapError> {
        assert!(from <= to && to <= self.length_bytes, "file range outside the reservation");
        if from == to {
            return Ok(());
        }
        // SAFETY: base + from .. base + to lies inside our reservation (asserted), which only
        // this value maps and unmaps; MAP_FIXED replaces zero pages or an older mapping of the
        // same file bytes. `from` is page-aligned, as mmap requires of the file offset.
        let mapped = unsafe {
            libc::mmap(
                self.base.as_ptr().add(from as usize).cast(),
                (to - from) as usize,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                from as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(MapError::Map { path: path.to_path_buf(), source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Whether a get read zeros past a shrunk end since the last call (`sigbus_guard`).
    fn take_zeroed(&self) -> bool {
        self.guard.as_ref().is_some_and(Guarded::take_hit)
    }

    /// Maps zero pages over `from..to` (page-aligned, inside the reservation).
    fn map_zeros(&self, from: u64, to: u64) {
        assert!(from <= to && to <= self.length_bytes, "range outside the reservation");
        if from == to {
            return;
        }
        // SAFETY: as in map_file; anonymous zero pages replace whatever this reservation had.
        let mapped = unsafe {
            libc::mmap(
                self.base.as_ptr().add(from as usize).cast(),
                (to - from) as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            // The old mapping stays; only the early release of the inode is lost.
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot map zeros over a retired file");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Out of the guard's table first: the address range may be reused once unmapped.
        drop(self.guard.take());
        // SAFETY: we own this range (mapped in new); every registration of it is dropped first
        // (field order in FileMap and RetiredFile).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.length_bytes as usize) };
    }
}

/// One registered piece of a file.
#[derive(Debug)]
pub(crate) struct Piece {
    pub(crate) file_offset: u64,
    pub(crate) length_bytes: u64,
    pub(crate) rkey_hex: String,
    pub(crate) region: MemoryRegion,
}

/// Registrations and address space no longer in the catalogue, kept until `since + grace`.
#[derive(Debug)]
pub(crate) struct Retired {
    // Field order: registrations are dropped before the memory they cover is unmapped.
    _pieces: Vec<Piece>,
    _reservation: Option<Reservation>,
    pub(crate) since: Instant,
}

/// A file mapped and registered for export.
#[derive(Debug)]
pub(crate) struct FileMap {
    // Field order: pieces (registrations) drop before the reservation is unmapped.
    pieces: Vec<Piece>,
    reservation: Reservation,
    file: File,
    path: PathBuf,
    /// (device, inode) of the open file.
    pub(crate) identity: (u64, u64),
    /// File length at the last refresh.
    pub(crate) length_bytes: u64,
    /// Bytes of the reservation mapped from the file: `length_bytes` rounded up to a page.
    mapped_bytes: u64,
    piece_size_bytes: u64,
}

/// Registration settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapSettings {
    /// Registration piece size: a multiple of the page size, at most 1 GiB.
    pub(crate) piece_size_bytes: u64,
    /// Address space reserved past the file's length for it to grow into.
    pub(crate) headroom_bytes: u64,
}

impl FileMap {
    /// Opens, maps and registers `path`.
    pub(crate) fn open(path: &Path, context: &Context, settings: MapSettings) -> Result<FileMap, MapError> {
        let io = |source| MapError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        let page = page_size_bytes();
        let reserved_bytes =
            round_up(metadata.len().saturating_add(settings.headroom_bytes), settings.piece_size_bytes)
                .max(settings.piece_size_bytes)
                .max(page);
        let reservation = Reservation::new(reserved_bytes, path)?;
        let mut map = FileMap {
            pieces: Vec::new(),
            reservation,
            file,
            path: path.to_path_buf(),
            identity: (metadata.dev(), metadata.ino()),
            length_bytes: 0,
            mapped_bytes: 0,
            piece_size_bytes: settings.piece_size_bytes,
        };
        map.refresh(context, &mut Vec::new())?;
        Ok(map)
    }

    /// Picks up growth (or a truncation) of the open file: maps the new part and registers the
    /// pieces that changed. Superseded registrations go to `retired`.
    pub(crate) fn refresh(&mut self, context: &Context, retired: &mut Vec<Retired>) -> Result<(), MapError> {
        let length_bytes =
            self.file.metadata().map_err(|source| MapError::Io { path: self.path.clone(), source })?.len();
        if self.reservation.take_zeroed() {
            // Gets touched pages past a shrunk end and the guard put zero pages there. The file
            // may have grown back since (SeaweedFS appends where it truncated): map what it
            // holds now over all of its old mapping, before the length is compared.
            let file_bytes = round_up(length_bytes, page_size_bytes()).min(self.mapped_bytes);
            self.reservation.map_file(&self.file, 0, file_bytes, &self.path)?;
        }
        if length_bytes == self.length_bytes {
            return Ok(());
        }
        let mapped_bytes = round_up(length_bytes, page_size_bytes());
        if mapped_bytes > self.reservation.length_bytes {
            return Err(MapError::Outgrown {
                path: self.path.clone(),
                length_bytes,
                reserved_bytes: self.reservation.length_bytes,
            });
        }
        if mapped_bytes > self.mapped_bytes {
            self.reservation.map_file(&self.file, self.mapped_bytes, mapped_bytes, &self.path)?;
        } else if mapped_bytes < self.mapped_bytes {
            // Truncated (SeaweedFS rolls back a failed append): nothing past the end stays mapped.
            tracing::warn!(path = %self.path.display(), length_bytes, "exported file shrank");
            self.reservation.map_zeros(mapped_bytes, self.mapped_bytes);
        }
        self.mapped_bytes = mapped_bytes;
        self.length_bytes = length_bytes;
        self.register_pieces(context, retired)
    }

    fn register_pieces(&mut self, context: &Context, retired: &mut Vec<Retired>) -> Result<(), MapError> {
        let size = self.piece_size_bytes;
        let wanted = self.mapped_bytes.div_ceil(size) as usize;
        let piece_length = |index: usize| (self.mapped_bytes - index as u64 * size).min(size);
        // Keep the unchanged prefix; retire the rest (at most the old last piece and beyond).
        let keep = self
            .pieces
            .iter()
            .enumerate()
            .take_while(|(index, piece)| *index < wanted && piece.length_bytes == piece_length(*index));
        let keep = keep.count();
        let superseded: Vec<Piece> = self.pieces.drain(keep..).collect();
        if !superseded.is_empty() {
            retired.push(Retired { _pieces: superseded, _reservation: None, since: Instant::now() });
        }
        for index in keep..wanted {
            let file_offset = index as u64 * size;
            let length_bytes = piece_length(index);
            // SAFETY: base + file_offset .. + length_bytes is inside the reservation (mapped_bytes
            // <= its length), which stays mapped while this registration lives: pieces drop before
            // the reservation (field order) and retired pieces before their reservation.
            let region = unsafe {
                MemoryRegion::register(
                    context,
                    self.reservation.base.as_ptr().add(file_offset as usize),
                    length_bytes as usize,
                )
            }
            .map_err(|source| MapError::Register { path: self.path.clone(), source })?;
            let rkey = region.pack_rkey().map_err(|source| MapError::Register { path: self.path.clone(), source })?;
            self.pieces.push(Piece { file_offset, length_bytes, rkey_hex: to_hex(&rkey), region });
        }
        Ok(())
    }

    /// The catalogue entry: current length and registered pieces.
    pub(crate) fn entry(&self) -> FileEntry {
        FileEntry {
            length_bytes: self.length_bytes,
            pieces: self
                .pieces
                .iter()
                .map(|piece| PieceEntry {
                    file_offset: piece.file_offset,
                    length_bytes: piece.length_bytes,
                    address: piece.region.address(),
                    rkey_hex: piece.rkey_hex.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names the open file (false once it was replaced or removed).
    pub(crate) fn still_at_path(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity)
    }

    /// Reads `buffer.len()` bytes at file offset 0 from the mapping (the super block).
    pub(crate) fn read_prefix(&self, length: usize) -> Option<&[u8]> {
        if (length as u64) > self.length_bytes {
            return None;
        }
        // SAFETY: the first length_bytes of the reservation map the file; read-only, shared.
        // The bytes below the length at refresh time are written and do not change under us
        // (SeaweedFS only appends; the super block is rewritten only by compaction, which
        // writes a new file).
        Some(unsafe { std::slice::from_raw_parts(self.reservation.base.as_ptr(), length) })
    }

    /// Stops exporting: zero pages replace the file at once (releasing the inode); the
    /// registrations and the address space are retired for the grace period.
    pub(crate) fn retire(self, retired: &mut Vec<Retired>) {
        let FileMap { pieces, reservation, .. } = self;
        reservation.map_zeros(0, reservation.length_bytes);
        retired.push(Retired { _pieces: pieces, _reservation: Some(reservation), since: Instant::now() });
    }
}

/// `value` rounded up to a multiple of `unit` (a power of two or any positive unit).
pub(crate) fn round_up(value: u64, unit: u64) -> u64 {
    value.div_ceil(unit).saturating_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn byte_at(map: &FileMap, offset: u64) -> u8 {
        assert!(offset < map.reservation.length_bytes);
        // SAFETY: inside the reservation, which is mapped (read-only) while `map` lives; a
        // page past the file's end reads zeros through the guard.
        unsafe { std::ptr::read_volatile(map.reservation.base.as_ptr().add(offset as usize)) }
    }

    /// SeaweedFS truncates a failed append away and appends the next needle at the same offset.
    /// A get that touched the cut pages in between left zero pages there; the next refresh must
    /// map the file's new bytes over them even though the length is the old one again.
    #[test]
    fn pages_zeroed_past_a_shrunk_end_read_the_file_again_once_it_grew_back() {
        crate::sigbus_guard::install().unwrap();
        let page = page_size_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.dat");
        std::fs::write(&path, vec![0x11u8; 3 * page as usize]).unwrap();
        let context = Context::new(ucx::Features::RMA | ucx::Features::AM).unwrap();
        let settings = MapSettings { piece_size_bytes: 1 << 20, headroom_bytes: 1 << 20 };
        let mut map = FileMap::open(&path, &context, settings).unwrap();
        let probe = 2 * page + 5;
        assert_eq!(byte_at(&map, probe), 0x11);

        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(page).unwrap();
        assert_eq!(byte_at(&map, probe), 0, "past the new end: a zero page, not SIGBUS");
        file.write_all_at(&vec![0x22u8; 2 * page as usize], page).unwrap();
        map.refresh(&context, &mut Vec::new()).unwrap();
        assert_eq!(byte_at(&map, probe), 0x22, "the file's new bytes, not the zero page");
        crate::sigbus_guard::take_zeroed_pages();
    }
}
