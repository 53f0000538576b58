//! The control thread: accepts clients on the Unix socket, checks their
//! credentials, creates regions on attach, seals each one when its client has
//! mapped it and only then hands it to the poller, lists them for `ringstat`,
//! and reclaims a region when its connection ends (EOF, however the client died).

use crate::config::Config;
use crate::poller::{Command, PollerLink};
use crate::region::{AdoptionLimits, RegionIdentity, RegionMemory};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rdma_ipc::control::{
    self, AdoptRequest, AttachReply, AttachRequest, ControlError, RegionSummary, Request, Response,
};
use shm_layout::geometry::Geometry;
use shm_layout::LAYOUT_VERSION;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the control thread looks at the shutdown flag and the
/// released-region queue while no socket is active.
const POLL_INTERVAL_MS: u16 = 20;
/// How long a client may take between `Attached` and `Mapped` (mapping the region).
const MAPPING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Connection {
    fd: OwnedFd,
    pid: u32,
    region: ConnectionRegion,
}

/// Where a connection's region is.
#[derive(Debug)]
enum ConnectionRegion {
    None,
    /// Handed over, not yet mapped by the client: neither served nor listed, and never
    /// touched by the engine, until the client's `Mapped` lets the engine seal it.
    AwaitingMapping {
        memory: Arc<RegionMemory>,
        deadline: Instant,
    },
    /// Sealed and given to the poller.
    Serving {
        region_id: u64,
    },
}

#[derive(Debug)]
pub struct ControlServer {
    listener: OwnedFd,
    config: Config,
    link: Arc<PollerLink>,
    connections: Vec<Connection>,
    /// Every region from attach until the poller has released it.
    regions: HashMap<u64, Arc<RegionMemory>>,
    next_region_id: u64,
    engine_generation: u64,
    engine_uid: u32,
}

impl ControlServer {
    pub fn new(listener: OwnedFd, config: Config, link: Arc<PollerLink>, engine_generation: u64) -> ControlServer {
        ControlServer {
            listener,
            config,
            link,
            connections: Vec::new(),
            regions: HashMap::new(),
            next_region_id: 1,
            engine_generation,
            engine_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    fn max_connections(&self) -> usize {
        self.config.max_clients as usize * 2 + 8
    }

    /// Serves the socket until `shutdown` is set.
    pub fn run(&mut self, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Acquire) {
            self.reclaim_released();
            self.drop_unmapped_regions(Instant::now());
            let ready = self.wait_for_sockets();
            for (index, flags) in ready.into_iter().rev() {
                if index == 0 {
                    self.accept_one();
                } else if flags.intersects(PollFlags::POLLIN) {
                    self.handle_message(index - 1);
                } else {
                    self.close_connection(index - 1, "hung up");
                }
            }
        }
    }

    /// The attached-client gauges of the metrics (this thread is their only writer).
    fn publish_region_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let metrics = &crate::metrics::METRICS;
        metrics.attached_clients.store(self.regions.len() as u64, Relaxed);
        let hugepages = self.regions.values().filter(|memory| memory.hugepages).count();
        metrics.hugepage_regions.store(hugepages as u64, Relaxed);
        metrics.set_regions(self.regions.values().cloned());
    }

    /// Drops the regions the poller handed back: unmaps them and closes the memfds.
    pub fn reclaim_released(&mut self) {
        while let Some(memory) = self.link.released.pop() {
            let region_id = memory.identity.region_id;
            self.regions.remove(&region_id);
            self.publish_region_gauges();
            drop(memory);
            tracing::info!(region_id, "region reclaimed");
        }
    }

    /// Closes the connections whose client did not confirm its mapping in time.
    fn drop_unmapped_regions(&mut self, now: Instant) {
        for index in (0..self.connections.len()).rev() {
            if let ConnectionRegion::AwaitingMapping { deadline, .. } = self.connections[index].region {
                if now >= deadline {
                    tracing::warn!(
                        pid = self.connections[index].pid,
                        "a client did not confirm its mapping within {MAPPING_TIMEOUT:?} of its attach (a client library older than the engine?); dropping its connection"
                    );
                    self.close_connection(index, "did not confirm its mapping");
                }
            }
        }
    }

    /// Polls the listener and every connection; returns (index, events) of
    /// the ready ones, index 0 being the listener.
    fn wait_for_sockets(&self) -> Vec<(usize, PollFlags)> {
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.connections.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        fds.extend(self.connections.iter().map(|c| PollFd::new(c.fd.as_fd(), PollFlags::POLLIN)));
        if poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)).unwrap_or(0) <= 0 {
            return Vec::new();
        }
        fds.iter()
            .enumerate()
            .filter_map(|(index, fd)| fd.revents().filter(|events| !events.is_empty()).map(|events| (index, events)))
            .collect()
    }

    fn accept_one(&mut self) {
        let fd = match control::accept(&self.listener) {
            Ok(fd) => fd,
            Err(error) => return tracing::warn!(%error, "accept failed"),
        };
        let credentials = match control::peer_credentials(&fd) {
            Ok(credentials) => credentials,
            Err(error) => return tracing::warn!(%error, "cannot read a client's credentials; connection closed"),
        };
        if credentials.uid() != self.engine_uid && credentials.uid() != 0 {
            let reason = format!(
                "uid {} may not use this engine: only its own uid {} and root may attach",
                credentials.uid(),
                self.engine_uid
            );
            tracing::warn!(pid = credentials.pid(), "{reason}");
            let _ = control::send_without_blocking(&fd, &Response::Refused { reason }, &[]);
            return;
        }
        if self.connections.len() >= self.max_connections() {
            let reason = format!("the engine already has {} control connections, its limit", self.connections.len());
            let _ = control::send_without_blocking(&fd, &Response::Refused { reason }, &[]);
            return;
        }
        self.connections.push(Connection { fd, pid: credentials.pid() as u32, region: ConnectionRegion::None });
    }

    fn handle_message(&mut self, index: usize) {
        let (request, fds) = match control::receive::<Request>(&self.connections[index].fd) {
            Ok(received) => received,
            Err(ControlError::Closed) => return self.close_connection(index, "closed"),
            Err(error) => {
                let reason = format!("unreadable control message: {error}");
                let _ = control::send_without_blocking(&self.connections[index].fd, &Response::Refused { reason }, &[]);
                return self.close_connection(index, "sent an unreadable message");
            }
        };
        let sent = match request {
            Request::Attach(attach) => self.attach(index, &attach),
            Request::Mapped { region_id } => return self.serve_mapped(index, region_id),
            Request::ListRegions => self.list_regions(index),
            Request::Adopt(adopt) => self.adopt(index, &adopt, fds),
        };
        match sent {
            Ok(()) => {}
            Err(ControlError::Io { source: nix::errno::Errno::EAGAIN, .. }) => {
                let pid = self.connections[index].pid;
                tracing::warn!(pid, "a client does not read its control replies; dropping its connection");
                self.close_connection(index, "does not read its replies");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot answer a client");
                self.close_connection(index, "could not be answered");
            }
        }
    }

    fn refuse(&self, index: usize, reason: String) -> Result<(), ControlError> {
        tracing::info!(pid = self.connections[index].pid, "attach refused: {reason}");
        control::send_without_blocking(&self.connections[index].fd, &Response::Refused { reason }, &[])
    }

    /// Checks that a connection may have a region now (layout version, one region per
    /// connection, the engine running, the client count); one sentence saying what and why.
    fn check_admission(&self, index: usize, layout_version: u32) -> Result<(), String> {
        if layout_version != LAYOUT_VERSION {
            return Err(format!(
                "client layout version {layout_version} is not this engine's version {LAYOUT_VERSION}; use a client library of the same release"
            ));
        }
        if !matches!(self.connections[index].region, ConnectionRegion::None) {
            return Err("this connection already has a region; open another connection for another one".into());
        }
        if self.link.shutdown.load(Ordering::Acquire) {
            return Err("the engine is shutting down".into());
        }
        let awaiting_mapping = self
            .connections
            .iter()
            .filter(|connection| matches!(connection.region, ConnectionRegion::AwaitingMapping { .. }))
            .count();
        let clients = self.regions.len() + awaiting_mapping;
        if clients >= self.config.max_clients as usize {
            return Err(format!("the engine already serves {clients} clients, its limit (--max-clients)"));
        }
        Ok(())
    }

    /// Checks a region's shape against the limits; returns the geometry or one sentence
    /// saying what and why.
    fn check_geometry(&self, queue_pairs: u32, sq_entries: u32, buffer_size_bytes: u64) -> Result<Geometry, String> {
        let config = &self.config;
        if queue_pairs == 0 || queue_pairs > config.max_queue_pairs {
            return Err(format!(
                "{queue_pairs} queue pairs asked, the engine allows 1 to {} (--max-queue-pairs)",
                config.max_queue_pairs
            ));
        }
        if sq_entries > config.max_sq_entries {
            return Err(format!(
                "{sq_entries} SQ entries asked, the engine allows at most {} (--max-sq-entries)",
                config.max_sq_entries
            ));
        }
        if buffer_size_bytes > config.max_buffer_size_bytes() {
            return Err(format!(
                "a {buffer_size_bytes}-byte buffer area asked, the engine allows at most {} bytes (--max-buffer-mib)",
                config.max_buffer_size_bytes()
            ));
        }
        Geometry::new(queue_pairs, sq_entries, buffer_size_bytes)
            .map_err(|error| format!("the asked region is not possible: {error}"))
    }

    /// The identity of the next region, for the client of connection `index`.
    fn next_identity(&self, index: usize, client_name: &str) -> RegionIdentity {
        RegionIdentity {
            region_id: self.next_region_id,
            engine_generation: self.engine_generation,
            engine_pid: std::process::id(),
            client_pid: self.connections[index].pid,
            client_name: client_name.chars().take(64).collect(),
        }
    }

    fn attach(&mut self, index: usize, request: &AttachRequest) -> Result<(), ControlError> {
        let geometry = match self
            .check_admission(index, request.layout_version)
            .and_then(|()| self.check_geometry(request.queue_pairs, request.sq_entries, request.buffer_size_bytes))
        {
            Ok(geometry) => geometry,
            Err(reason) => return self.refuse(index, reason),
        };
        let identity = self.next_identity(index, &request.client_name);
        let memory = match RegionMemory::create(geometry, identity, self.config.hugepages) {
            Ok(memory) => Arc::new(memory),
            Err(error) => return self.refuse(index, format!("cannot create the region: {error}")),
        };
        self.next_region_id += 1;
        self.hand_over(index, memory, true)
    }

    /// Takes over the region a client presents (its region from an earlier engine), checked
    /// as hostile input, and answers as for a new region, without the descriptor.
    fn adopt(&mut self, index: usize, request: &AdoptRequest, mut fds: Vec<OwnedFd>) -> Result<(), ControlError> {
        if let Err(reason) = self.check_admission(index, request.layout_version) {
            return self.refuse(index, reason);
        }
        if fds.len() != 1 {
            let reason = format!("a region to adopt travels as one descriptor; this request carried {}", fds.len());
            return self.refuse(index, reason);
        }
        let config = &self.config;
        let max_region_bytes =
            Geometry::new(config.max_queue_pairs, config.max_sq_entries, config.max_buffer_size_bytes())
                .map_or(0, |geometry| geometry.region_size_bytes);
        let limits = AdoptionLimits { max_region_bytes, policy: config.hugepages };
        let memfd = fds.remove(0);
        // Before anything else touches it: a region served for another connection stays its.
        let served =
            nix::sys::stat::fstat(memfd.as_raw_fd()).is_ok_and(|stat| self.serves_file((stat.st_dev, stat.st_ino)));
        if served {
            return self.refuse(index, "the presented region is already served for another connection".into());
        }
        let identity = self.next_identity(index, &request.client_name);
        let memory = match RegionMemory::adopt(memfd, identity, &limits) {
            Ok(memory) => memory,
            Err(reason) => return self.refuse(index, reason),
        };
        let geometry = memory.geometry;
        if let Err(reason) =
            self.check_geometry(geometry.queue_pair_count, geometry.sq_entries, geometry.buffer_size_bytes)
        {
            return self.refuse(index, format!("the presented region is larger than this engine allows: {reason}"));
        }
        memory.take_over();
        self.next_region_id += 1;
        tracing::info!(
            region_id = memory.identity.region_id,
            client_pid = memory.identity.client_pid,
            "region adopted"
        );
        self.hand_over(index, Arc::new(memory), false)
    }

    /// Whether a region of this file (device, inode) is attached or awaits its mapping.
    fn serves_file(&self, file: (u64, u64)) -> bool {
        self.regions.values().any(|memory| memory.file == file)
            || self.connections.iter().any(|connection| {
                matches!(&connection.region, ConnectionRegion::AwaitingMapping { memory, .. } if memory.file == file)
            })
    }

    /// Answers `Attached` (with the memfd when `send_memfd`) and waits for the mapping.
    fn hand_over(&mut self, index: usize, memory: Arc<RegionMemory>, send_memfd: bool) -> Result<(), ControlError> {
        let reply = AttachReply {
            region_id: memory.identity.region_id,
            region_size_bytes: memory.size_bytes(),
            engine_generation: self.engine_generation,
            hugepages: memory.hugepages,
        };
        let memfd = [memory.memfd.as_raw_fd()];
        let fds: &[i32] = if send_memfd { &memfd } else { &[] };
        control::send_without_blocking(&self.connections[index].fd, &Response::Attached(reply), fds)?;
        self.connections[index].region =
            ConnectionRegion::AwaitingMapping { memory, deadline: Instant::now() + MAPPING_TIMEOUT };
        Ok(())
    }

    /// The second half of an attach: the client has mapped its region. Seals it, checks it,
    /// and gives it to the poller; a client whose region cannot be served is refused and
    /// its connection closed.
    fn serve_mapped(&mut self, index: usize, region_id: u64) {
        let region = std::mem::replace(&mut self.connections[index].region, ConnectionRegion::None);
        let memory = match region {
            ConnectionRegion::AwaitingMapping { memory, .. } if memory.identity.region_id == region_id => memory,
            other => {
                self.connections[index].region = other;
                let _ = self.refuse(index, format!("region {region_id} does not await its mapping on this connection"));
                return self.close_connection(index, "confirmed a mapping it was not given");
            }
        };
        if let Err(reason) = memory.seal_for_serving() {
            let _ = self.refuse(index, reason);
            self.connections[index].region = ConnectionRegion::AwaitingMapping { memory, deadline: Instant::now() };
            return self.close_connection(index, "was refused at sealing");
        }
        if let Err(error) =
            control::send_without_blocking(&self.connections[index].fd, &Response::Serving { region_id }, &[])
        {
            tracing::warn!(%error, pid = self.connections[index].pid, "cannot answer a client's mapping; dropping it");
            return self.close_connection(index, "could not be answered");
        }
        tracing::info!(
            region_id,
            client_pid = memory.identity.client_pid,
            client = %memory.identity.client_name,
            queue_pairs = memory.geometry.queue_pair_count,
            sq_entries = memory.geometry.sq_entries,
            region_size_bytes = memory.size_bytes(),
            hugepages = memory.hugepages,
            "client attached"
        );
        self.connections[index].region = ConnectionRegion::Serving { region_id };
        self.regions.insert(region_id, memory.clone());
        self.publish_region_gauges();
        self.link.send(Command::Attach(memory));
    }

    fn list_regions(&self, index: usize) -> Result<(), ControlError> {
        let mut regions: Vec<&Arc<RegionMemory>> = self.regions.values().collect();
        regions.sort_by_key(|memory| memory.identity.region_id);
        regions.truncate(control::MAX_FDS_PER_MESSAGE);
        let summaries = regions
            .iter()
            .map(|memory| RegionSummary {
                region_id: memory.identity.region_id,
                client_pid: memory.identity.client_pid,
                client_name: memory.identity.client_name.clone(),
                region_size_bytes: memory.size_bytes(),
            })
            .collect();
        // Read-only descriptors of the same memfds: a lister (ringstat) can map them for
        // reading only, never write into another client's region.
        let read_only: Vec<OwnedFd> = regions
            .iter()
            .map(|memory| reopen_read_only(&memory.memfd))
            .collect::<Result<_, _>>()
            .map_err(|source| ControlError::Io { operation: "reopen a region read-only", source })?;
        let fds: Vec<_> = read_only.iter().map(|fd| fd.as_raw_fd()).collect();
        let response = Response::Regions {
            engine_pid: std::process::id(),
            engine_generation: self.engine_generation,
            regions: summaries,
            remote_transport: self.remote_transport(),
        };
        control::send_without_blocking(&self.connections[index].fd, &response, &fds)
    }

    /// The remote transport the engine chose at start, when it has a remote role.
    fn remote_transport(&self) -> Option<String> {
        let config = &self.config;
        let remote = config.listen.is_some() || !config.peer.is_empty() || config.export_port.is_some();
        remote.then(|| match config.transport {
            crate::transport::TransportKind::Ucx => "ucx".to_string(),
            _ => "stream".to_string(),
        })
    }

    fn close_connection(&mut self, index: usize, why: &str) {
        let connection = self.connections.swap_remove(index);
        match connection.region {
            ConnectionRegion::None => {}
            ConnectionRegion::AwaitingMapping { memory, .. } => {
                // Never given to the poller: dropping it unmaps it and closes the memfd.
                tracing::info!(
                    region_id = memory.identity.region_id,
                    client_pid = connection.pid,
                    "client {why} before its region was served; region dropped"
                );
            }
            ConnectionRegion::Serving { region_id } => {
                tracing::info!(region_id, client_pid = connection.pid, "client {why}; detaching its region");
                self.link.send(Command::Detach { region_id });
            }
        }
    }
}

/// A new, read-only open file description of `fd`'s file (through `/proc/self/fd`), so the
/// receiver cannot map it writable or truncate it.
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, nix::Error> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let raw = nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty())?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}
