//! Read SeaweedFS needles through an `rdma-engine` on this host.
//!
//! Most programs want the [`Reader`]: file ids in, the bytes the volume server would send
//! out, from any number of threads, across engine restarts and stalls.
//!
//! ```no_run
//! use rdma_client::{Reader, ReaderOptions, ReadError};
//! let reader = Reader::connect("/run/rdma-engine.sock", ReaderOptions::default())?;
//! let data: Vec<u8> = reader.read_file_id("3,01637037d6")?;
//! let part = reader.read_range("3,01637037d6", 100, 4096)?; // HTTP's range rules
//! # Ok::<(), ReadError>(())
//! ```
//!
//! Into a buffer of your own, or with no copy at all (the bytes stay where the engine put
//! them, in the shared region, for as long as the view lives):
//!
//! ```no_run
//! # use rdma_client::{Reader, ReaderOptions, ReadError};
//! # let reader = Reader::connect("/run/rdma-engine.sock", ReaderOptions::default())?;
//! let mut buffer = vec![0u8; 1 << 20];
//! let length = reader.read_into("3,01637037d6", &mut buffer)?;
//! let view = reader.read_view("3,01637037d6")?;
//! let checksum: u32 = view.iter().map(|&byte| u32::from(byte)).sum();
//! # let _ = (length, checksum);
//! # Ok::<(), ReadError>(())
//! ```
//!
//! Errors are a [`ReadError`]: the engine's code when it answered with one
//! ([`ReadError::engine_code`], e.g. [`ErrorCode::NO_SUCH_NEEDLE`]), and whether trying
//! again may help ([`ReadError::is_retryable`]: the engine was restarting, or the read's
//! deadline passed while it was stalled).
//!
//! ```no_run
//! # use rdma_client::{Reader, ReaderOptions, ReadError, ErrorCode};
//! # use std::time::Duration;
//! let options = ReaderOptions { timeout: Duration::from_secs(2), ..ReaderOptions::default() };
//! let reader = Reader::connect("/run/rdma-engine.sock", options)?;
//! match reader.read_file_id("3,01637037d6") {
//!     Ok(data) => println!("{} bytes", data.len()),
//!     Err(error) if error.engine_code() == Some(ErrorCode::NO_SUCH_NEEDLE) => println!("not there"),
//!     Err(error) if error.is_retryable() => println!("try again later: {error}"),
//!     Err(error) => return Err(error),
//! }
//! # Ok::<(), ReadError>(())
//! ```
//!
//! Beneath it, the rings themselves: attach, allocate buffers in the shared region, submit
//! requests on a queue pair, reap completions, wait.
//!
//! ```no_run
//! use rdma_client::{AttachOptions, Client, Operation};
//! use std::time::Duration;
//! let client = Client::attach("/run/rdma-engine.sock".as_ref(), &AttachOptions::default())?;
//! let mut queue_pair = client.take_queue_pair(0)?;
//! queue_pair.prepare(Operation::Nop, 1)?;
//! queue_pair.submit()?;
//! queue_pair.wait(1, Duration::from_secs(1))?;
//! let completion = queue_pair.reap_one()?.expect("one completion");
//! assert_eq!(completion.tag, 1);
//! # Ok::<(), rdma_client::ClientError>(())
//! ```
//!
//! The API is safe: buffers are [`Buffer`] handles (an offset and a length in
//! the region's buffer area), never raw pointers. A buffer handed to a read
//! belongs to the engine until its completion, which hands it back; the
//! library holds it meanwhile, so it cannot be reused early.

mod buffers;
mod error;
mod queue_pair;
pub mod reader;

pub use buffers::Buffer;
pub use error::{ClientError, CompletionError};
pub use queue_pair::{Completion, Operation, QueuePair, ReadSource};
pub use reader::{NeedleView, ReadError, Reader, ReaderOptions};
pub use shm_layout::entry::ErrorCode;
pub use volume_format::file_id::FileId;

use buffers::BufferAllocator;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rdma_ipc::control::{self, AdoptRequest, AttachRequest, Request, Response};
use rdma_ipc::mapping::{Access, Mapping};
use shm_layout::header::{engine_state, fence_reason, region_state, RegionDescription};
use shm_layout::region::RegionView;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a client asks for at attach.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub queue_pairs: u32,
    pub sq_entries: u32,
    /// Rounded up to a multiple of 4096.
    pub buffer_size_bytes: u64,
    /// For the engine's logs and `ringstat`.
    pub client_name: String,
}

impl Default for AttachOptions {
    fn default() -> AttachOptions {
        AttachOptions {
            queue_pairs: 1,
            sq_entries: 128,
            buffer_size_bytes: 16 << 20,
            client_name: std::env::args().next().unwrap_or_else(|| "client".into()),
        }
    }
}

/// An attachment to an engine. Cheap to clone; the region is detached when
/// the last clone and queue pair are gone (buffers keep only the memory mapped).
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

/// A region as this process maps it: the memory, its buffer allocator, and the memfd, kept
/// so the region can be presented to the next engine ([`Client::reattach`]). Outlives the
/// attachments that serve it: a buffer (a zero-copy view) holds the memory, not the engine.
#[derive(Debug)]
pub(crate) struct RegionMemory {
    pub(crate) view: RegionView,
    pub(crate) allocator: Mutex<BufferAllocator>,
    // Dropped after the view: the mapping must outlive every use of it.
    mapping: Mapping,
    memfd: OwnedFd,
}

impl RegionMemory {
    pub(crate) fn bytes(&self, offset: u64, length: u64) -> &[u8] {
        match self.view.buffer_range(offset, length) {
            // SAFETY: the range is inside the buffer area of a mapping that
            // lives as long as &self; the engine writes a buffer only while a
            // read of it is in flight, and callers only pass buffers they hold.
            Some(pointer) => unsafe { std::slice::from_raw_parts(pointer.as_ptr(), length as usize) },
            None => &[],
        }
    }
}

/// One attachment: the engine's connection and description over a region's memory.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) memory: Arc<RegionMemory>,
    description: RegionDescription,
    queue_pairs_taken: Mutex<Vec<bool>>,
    /// Set when the region was handed to another engine ([`Client::reattach`]): this
    /// attachment's queue pairs must not touch the rings again.
    retired: AtomicBool,
    /// A pidfd of the engine process (when its pid is visible here): says when it has exited.
    engine: Option<OwnedFd>,
    // The socket's EOF is what tells the engine to reclaim the region.
    socket: OwnedFd,
}

impl Client {
    /// Connects to the engine's control socket and attaches a new region.
    pub fn attach(socket_path: &Path, options: &AttachOptions) -> Result<Client, ClientError> {
        let socket = control::connect_to(socket_path)?;
        let request = Request::Attach(AttachRequest {
            layout_version: shm_layout::LAYOUT_VERSION,
            queue_pairs: options.queue_pairs,
            sq_entries: options.sq_entries,
            buffer_size_bytes: options.buffer_size_bytes.div_ceil(4096) * 4096,
            client_name: options.client_name.clone(),
        });
        control::send(&socket, &request, &[])?;
        let (reply, mut fds) = attached(&socket)?;
        if fds.len() != 1 {
            return Err(ClientError::Control(control::ControlError::FdCount { found: fds.len(), expected: 1 }));
        }
        let memfd = fds.remove(0);
        let mapping = Mapping::new(&memfd, reply.region_size_bytes, Access::ReadWrite, true)?;
        // SAFETY: the mapping is page-aligned, of the size mapped, and is
        // stored in RegionMemory next to the view, dropped after every use of it.
        let (view, description) = unsafe { RegionView::open(mapping.base(), mapping.size_bytes()) }
            .map_err(|error| ClientError::BadRegion(error.to_string()))?;
        let allocator = Mutex::new(BufferAllocator::new(description.buffer_size_bytes));
        let memory = Arc::new(RegionMemory { view, allocator, mapping, memfd });
        Client::serving(socket, reply.region_id, memory, description)
    }

    /// Attaches to the engine at `socket_path` again, presenting this client's region
    /// (`Adopt`): after the engine this client was attached to went away, the next one takes
    /// the same memory over, so buffers and zero-copy views the application holds stay
    /// valid and new reads land in the same region. The engine checks the region as
    /// hostile input and may refuse it (then attach a new one).
    ///
    /// Nothing may drive this client's queue pairs any more: they are retired here (their
    /// calls fail with [`ClientError::Retired`]), and a request the old engine took and
    /// never answered keeps its buffer until that engine has exited.
    pub fn reattach(&self, socket_path: &Path, client_name: &str) -> Result<Client, ClientError> {
        self.shared.retired.store(true, Ordering::Release);
        let socket = control::connect_to(socket_path)?;
        let request = Request::Adopt(AdoptRequest {
            layout_version: shm_layout::LAYOUT_VERSION,
            client_name: client_name.to_string(),
        });
        let memory = &self.shared.memory;
        control::send(&socket, &request, &[memory.memfd.as_raw_fd()])?;
        let (reply, fds) = attached(&socket)?;
        if !fds.is_empty() {
            return Err(ClientError::Control(control::ControlError::FdCount { found: fds.len(), expected: 0 }));
        }
        if reply.region_size_bytes != memory.mapping.size_bytes() {
            return Err(ClientError::BadRegion(format!(
                "the engine took over a {}-byte region as {} bytes",
                memory.mapping.size_bytes(),
                reply.region_size_bytes
            )));
        }
        // The new engine rewrote the description: read it again, same shape required.
        // SAFETY: the mapping is the region's, alive while `memory` is; the second view is
        // dropped at once.
        let (view, description) = unsafe { RegionView::open(memory.mapping.base(), memory.mapping.size_bytes()) }
            .map_err(|error| ClientError::BadRegion(error.to_string()))?;
        if view.geometry() != memory.view.geometry() {
            return Err(ClientError::BadRegion("the engine changed the region's shape when it took it over".into()));
        }
        Client::serving(socket, reply.region_id, memory.clone(), description)
    }

    /// The second round trip of an attach: confirms the mapping, waits for `Serving`.
    fn serving(
        socket: OwnedFd,
        region_id: u64,
        memory: Arc<RegionMemory>,
        description: RegionDescription,
    ) -> Result<Client, ClientError> {
        control::confirm_mapped(&socket, region_id)?;
        let engine = control::peer_credentials(&socket).ok().and_then(|credentials| pidfd_open(credentials.pid()));
        let shared = Shared {
            memory,
            description,
            queue_pairs_taken: Mutex::new(vec![false; description.queue_pair_count as usize]),
            retired: AtomicBool::new(false),
            engine,
            socket,
        };
        Ok(Client { shared: Arc::new(shared) })
    }

    /// The region's memfd (device, inode): the same across [`Client::reattach`].
    pub fn region_file(&self) -> Result<(u64, u64), ClientError> {
        let stat = nix::sys::stat::fstat(self.shared.memory.memfd.as_raw_fd())
            .map_err(|error| ClientError::BadRegion(format!("cannot look at the region's memfd: {error}")))?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// Whether the engine process this client attached to has exited, waiting for it at
    /// most `timeout` (`None`: its pid is not visible here, as from another PID namespace).
    pub fn engine_exited(&self, timeout: Duration) -> Option<bool> {
        self.shared.engine_exited(timeout)
    }

    /// The region's description as the engine wrote it (validated at attach).
    pub fn description(&self) -> &RegionDescription {
        &self.shared.description
    }

    /// Takes queue pair `index` for exclusive use (each can be taken once).
    pub fn take_queue_pair(&self, index: u32) -> Result<QueuePair, ClientError> {
        let mut taken = self.shared.queue_pairs_taken.lock().map_err(|_| ClientError::Poisoned)?;
        match taken.get_mut(index as usize) {
            None => Err(ClientError::NoSuchQueuePair { index, count: self.shared.description.queue_pair_count }),
            Some(true) => Err(ClientError::QueuePairTaken(index)),
            Some(slot) => {
                *slot = true;
                Ok(QueuePair::new(self.shared.clone(), index))
            }
        }
    }

    /// Allocates `length_bytes` in the buffer area.
    pub fn allocate(&self, length_bytes: u32) -> Result<Buffer, ClientError> {
        BufferAllocator::allocate(&self.shared, length_bytes)
    }

    /// The bytes of a buffer the client holds (so no read is writing into it), from the
    /// region the buffer belongs to.
    pub fn bytes<'a>(&'a self, buffer: &'a Buffer) -> &'a [u8] {
        buffer.bytes()
    }

    /// Fails if the engine stopped or died or fenced this client off.
    pub fn check_alive(&self) -> Result<(), ClientError> {
        self.shared.check_alive()
    }
}

impl Shared {
    /// The engine's state words and the control socket (EOF = engine gone).
    pub(crate) fn check_alive(&self) -> Result<(), ClientError> {
        if self.retired.load(Ordering::Acquire) {
            return Err(ClientError::Retired);
        }
        let live = self.memory.view.live();
        if live.region_state.load(Ordering::Acquire) == region_state::FENCED {
            let reason = live.fence_reason.load(Ordering::Relaxed);
            return Err(ClientError::Fenced(fence_reason::describe(reason)));
        }
        if live.engine_state.load(Ordering::Acquire) == engine_state::STOPPED {
            return Err(ClientError::EngineStopped);
        }
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) > 0 {
            // The engine never sends unprompted: readable means EOF or error.
            return Err(ClientError::EngineGone);
        }
        Ok(())
    }

    /// Whether this attachment was handed to another engine.
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// See [`Client::engine_exited`].
    pub(crate) fn engine_exited(&self, timeout: Duration) -> Option<bool> {
        let pidfd = self.engine.as_ref()?;
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::from(timeout.as_millis().min(u16::MAX as u128) as u16);
        Some(poll(&mut fds, timeout).unwrap_or(0) > 0)
    }
}

/// Receives the answer to an attach or adopt request: the reply and its descriptors.
fn attached(socket: &OwnedFd) -> Result<(control::AttachReply, Vec<OwnedFd>), ClientError> {
    let (response, fds) = control::receive::<Response>(socket)?;
    match response {
        Response::Attached(reply) => Ok((reply, fds)),
        Response::Refused { reason } => Err(ClientError::Refused(reason)),
        Response::Regions { .. } | Response::Serving { .. } => Err(ClientError::UnexpectedResponse),
    }
}

/// A pidfd of process `pid` (none for pid 0, a pid not visible in this PID namespace, or a
/// kernel without `pidfd_open`).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a new descriptor nothing else owns.
    (raw >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) })
}
