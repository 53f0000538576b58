//! The stream transport's export role: one thread that listens on `--listen` only, admits
//! readers by address (`--allow-peer`) and by the read key's challenge and response, and
//! answers their requests from its own index of the exported volumes (`read::local`'s, the
//! same scan and refresh rules as local reads).
//!
//! The thread waits on epoll (`mio`) for its listener and connections, at most
//! [`WAIT_TIMEOUT`] at a time; every [`SWEEP_INTERVAL`] it closes connections past their time
//! limits, and every `rescan_interval` it picks up new, grown, replaced and removed volumes.
//! `connection` is one reader's connection, `answer` turns a request into its reply.

mod answer;
mod connection;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use volume_format::index::OffsetWidth;

use self::connection::{Close, Connection, Context, Turn};
use super::tls::TlsLink;
use super::Limits;
use crate::rdma::export::{spawn_thread, ExportError, ExportHandle};
use crate::rdma::token::ReadKey;
use crate::read::local::LocalVolumes;

/// Longest wait for an event: bounds how late a stop request, a sweep or a rescan is noticed.
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(100);
/// How often connections are checked against their time limits.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
const LISTENER: Token = Token(usize::MAX);
/// Events taken per wait.
const EVENTS_MAX: usize = 256;

/// What to export and how.
#[derive(Clone, Debug)]
pub struct StreamExportConfig {
    /// Directories holding SeaweedFS volumes (`[collection_]N.dat` + `.idx`).
    pub dirs: Vec<PathBuf>,
    /// The one address the exporter listens on (port 0: any free port).
    pub listen: SocketAddr,
    pub offset_width: OffsetWidth,
    /// Reader addresses admitted (`None`: any address; the read key, if any, still applies).
    pub allowed_peers: Option<Vec<IpAddr>>,
    /// SeaweedFS's read key: readers must prove they hold it (`None`: admitted by address).
    pub read_key: Option<ReadKey>,
    /// Mutual TLS (`[grpc.volume]`'s certificate, readers' checked against `[grpc] ca`):
    /// every connection runs over it (`None`: plaintext).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: Limits,
    /// How often the directories are scanned and every index refreshed.
    pub rescan_interval: Duration,
}

impl StreamExportConfig {
    pub fn new(dirs: Vec<PathBuf>, listen: SocketAddr) -> StreamExportConfig {
        StreamExportConfig {
            dirs,
            listen,
            offset_width: OffsetWidth::Four,
            allowed_peers: None,
            read_key: None,
            tls: None,
            limits: Limits::default(),
            rescan_interval: Duration::from_secs(1),
        }
    }
}

/// Starts the exporter thread; returns once it listens with every volume loaded. It runs until
/// `shutdown` is set or the handle is joined or dropped.
pub fn spawn(config: StreamExportConfig, shutdown: Arc<AtomicBool>) -> Result<ExportHandle, ExportError> {
    if config.dirs.is_empty() {
        return Err(ExportError::Config("no export directory given".into()));
    }
    if config.allowed_peers.as_ref().is_some_and(Vec::is_empty) {
        return Err(ExportError::Config("the allowed peer list is empty: no reader could connect".into()));
    }
    spawn_thread(
        "stream-export",
        shutdown,
        move || StreamExporter::new(config),
        |server| server.listener.local_addr().map_err(|error| ExportError::Stream(error.to_string())),
        |mut server, stop, shutdown| server.run(stop, shutdown),
    )
}

/// Everything the exporter thread owns.
struct StreamExporter {
    config: StreamExportConfig,
    poll: Poll,
    listener: TcpListener,
    /// By token; `None` slots are free.
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    by_peer: HashMap<IpAddr, usize>,
    /// Per reader address, the second its accepts are counted in and how many (entries a
    /// second old are dropped by the sweep, so the map holds the last second's addresses).
    accepts: HashMap<IpAddr, (Instant, u32)>,
    /// Connections to give another turn without waiting for an event.
    busy: Vec<usize>,
    volumes: LocalVolumes,
    /// Changes when the list of volumes does (announced with every VOLUMES reply).
    volumes_generation: u64,
    volumes_fingerprint: u64,
    last_sweep: Instant,
    last_rescan: Instant,
    /// Connections refused at accept, by why (each logged at powers of two: a peer can cause
    /// them at will).
    refused_not_allowed: u64,
    refused_over_limit: u64,
    refused_too_often: u64,
    closed_for_cause: u64,
}

impl StreamExporter {
    fn new(config: StreamExportConfig) -> Result<StreamExporter, ExportError> {
        let volumes = LocalVolumes::load(&config.dirs, config.offset_width).map_err(|(dir, error)| {
            ExportError::Config(format!("cannot read export directory {}: {error}", dir.display()))
        })?;
        let poll = Poll::new().map_err(|error| ExportError::Stream(format!("epoll: {error}")))?;
        let mut listener = TcpListener::bind(config.listen)
            .map_err(|error| ExportError::Stream(format!("cannot listen on {}: {error}", config.listen)))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|error| ExportError::Stream(format!("epoll: {error}")))?;
        let capacity = config.limits.connections_max;
        let now = Instant::now();
        let mut exporter = StreamExporter {
            poll,
            listener,
            connections: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            by_peer: HashMap::new(),
            accepts: HashMap::new(),
            busy: Vec::with_capacity(capacity),
            volumes,
            volumes_generation: 1,
            volumes_fingerprint: 0,
            last_sweep: now,
            last_rescan: now,
            refused_not_allowed: 0,
            refused_over_limit: 0,
            refused_too_often: 0,
            closed_for_cause: 0,
            config,
        };
        exporter.volumes_fingerprint = exporter.fingerprint();
        tracing::info!(volumes = exporter.volumes.len(), "stream export role ready");
        exporter.say_who_can_read();
        Ok(exporter)
    }

    /// Says once, at start, what reaches the exported volumes.
    fn say_who_can_read(&self) {
        match (&self.config.read_key, &self.config.allowed_peers) {
            (None, None) => tracing::warn!(
                listen = %self.config.listen,
                "no read key (--security-toml) and no --allow-peer: anyone who reaches this port can read every exported volume"
            ),
            (None, Some(peers)) => tracing::info!(
                allowed = peers.len(),
                "no read key (--security-toml): readers are admitted by address (--allow-peer) only"
            ),
            (Some(_), _) => tracing::info!("readers must prove they hold SeaweedFS's read key before any request"),
        }
        match self.config.tls {
            Some(_) => tracing::info!(
                "the stream transport runs over mutual TLS: readers need a certificate signed by [grpc] ca"
            ),
            None => tracing::info!(
                "the stream transport runs in plaintext: needles cross the network unencrypted (give [grpc.volume] cert and key and [grpc] ca for mutual TLS)"
            ),
        }
    }

    fn run(&mut self, stop: &AtomicBool, shutdown: &AtomicBool) -> Result<(), ExportError> {
        let mut events = Events::with_capacity(EVENTS_MAX);
        while !stop.load(Ordering::Acquire) && !shutdown.load(Ordering::Relaxed) {
            self.wait(&mut events)?;
            let now = Instant::now();
            let mut again = std::mem::take(&mut self.busy);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    Token(index) => again.push(index),
                }
            }
            again.sort_unstable();
            again.dedup();
            for &index in &again {
                self.turn(index, now);
            }
            again.clear();
            if self.busy.is_empty() {
                self.busy = again;
            }
            if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
                self.last_sweep = now;
                self.sweep(now);
            }
            if now.duration_since(self.last_rescan) >= self.config.rescan_interval {
                self.last_rescan = now;
                self.volumes.refresh_all();
                let fingerprint = self.fingerprint();
                if fingerprint != self.volumes_fingerprint {
                    self.volumes_fingerprint = fingerprint;
                    self.volumes_generation += 1;
                }
            }
        }
        Ok(())
    }

    /// Takes the events that are there, or waits for some in epoll (bounded). It never spins:
    /// the kernel moves the bytes, and a wake-up is all a spin could save. Measured both ways
    /// (`docs/benchmarks.md`, "The stream transport"): an adaptive spin gained 5-20 % at depth
    /// 32 unpinned, but cost 4 KiB concurrency 1 in `rdma-bench compare` (1.9-2.7x HTTP against
    /// 3.7x without), where the reader's poller, the client and the exporter share two CPUs,
    /// and it spends the volume host's CPU.
    fn wait(&mut self, events: &mut Events) -> Result<(), ExportError> {
        let timeout = if self.busy.is_empty() { WAIT_TIMEOUT } else { Duration::ZERO };
        match self.poll.poll(events, Some(timeout)) {
            Err(error) if error.kind() != std::io::ErrorKind::Interrupted => {
                Err(ExportError::Stream(format!("epoll wait: {error}")))
            }
            _ => Ok(()),
        }
    }

    /// Accepts every pending connection, within the address list and the limits.
    fn accept(&mut self, now: Instant) {
        // Bounded: the kernel's backlog; each pass takes one connection or stops.
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::warn!(%error, "accepting a stream connection failed");
                    return;
                }
            };
            let ip = peer.ip().to_canonical();
            if let Some(allowed) = &self.config.allowed_peers {
                if !allowed.iter().any(|allowed| allowed.to_canonical() == ip) {
                    self.refused_not_allowed += 1;
                    if self.refused_not_allowed.is_power_of_two() {
                        tracing::warn!(%peer, refused = self.refused_not_allowed, "closing a connection from an address not in --allow-peer");
                    }
                    continue;
                }
            }
            let (second, count) = self.accepts.entry(ip).or_insert((now, 0));
            if now.duration_since(*second) >= Duration::from_secs(1) {
                (*second, *count) = (now, 0);
            }
            *count += 1;
            if *count > self.config.limits.accepts_per_peer_per_second_max {
                self.refused_too_often += 1;
                if self.refused_too_often.is_power_of_two() {
                    tracing::warn!(%peer, refused = self.refused_too_often, "closing a connection from an address that opens more than its limit per second");
                }
                continue;
            }
            let from_peer = self.by_peer.get(&ip).copied().unwrap_or(0);
            let Some(index) = self.free.pop().filter(|_| from_peer < self.config.limits.connections_per_peer_max)
            else {
                self.refused_over_limit += 1;
                if self.refused_over_limit.is_power_of_two() {
                    tracing::warn!(%peer, refused = self.refused_over_limit, "closing a connection over the exporter's connection limits");
                }
                continue;
            };
            let tls = match &self.config.tls {
                None => None,
                Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                    Ok(tls) => Some(TlsLink::new(tls)),
                    Err(error) => {
                        tracing::warn!(%peer, %error, "cannot start TLS on a stream connection");
                        self.free.push(index);
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let registered =
                self.poll.registry().register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE);
            if let Err(error) = registered {
                tracing::warn!(%peer, %error, "cannot watch a stream connection");
                self.free.push(index);
                continue;
            }
            *self.by_peer.entry(ip).or_insert(0) += 1;
            self.connections[index] = Some(Connection::new(stream, peer, tls, now));
            // The reader may have sent its hello already (edge-triggered: no event would come).
            self.busy.push(index);
        }
    }

    /// Gives connection `index` a turn; closes it when it ends.
    fn turn(&mut self, index: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(index).and_then(Option::as_mut) else { return };
        let mut context = Context {
            volumes: &mut self.volumes,
            read_key: self.config.read_key.as_ref(),
            limits: &self.config.limits,
            volumes_generation: self.volumes_generation,
            now,
        };
        match connection.turn(&mut context) {
            Ok(Turn::Idle) => {}
            Ok(Turn::More) => self.busy.push(index),
            Err(close) => self.close(index, &close),
        }
    }

    /// Closes connections past their time limits, and forgets accept counts a second old.
    fn sweep(&mut self, now: Instant) {
        self.accepts.retain(|_, (second, _)| now.duration_since(*second) < Duration::from_secs(1));
        for index in 0..self.connections.len() {
            let Some(connection) = &self.connections[index] else { continue };
            if let Err(close) = connection.check_timeouts(&self.config.limits, now) {
                self.close(index, &close);
            }
        }
    }

    fn close(&mut self, index: usize, why: &Close) {
        let Some(mut connection) = self.connections.get_mut(index).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(&mut connection.stream);
        let ip = connection.peer.ip().to_canonical();
        if let Some(count) = self.by_peer.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.by_peer.remove(&ip);
            }
        }
        self.free.push(index);
        match why {
            Close::Eof => tracing::debug!(peer = %connection.peer, "stream connection closed by the reader"),
            _ => {
                self.closed_for_cause += 1;
                if self.closed_for_cause.is_power_of_two() {
                    tracing::warn!(peer = %connection.peer, reason = %why, closed = self.closed_for_cause, "closing a stream connection");
                }
            }
        }
    }

    /// A digest of the volume list (its generation changes with it).
    fn fingerprint(&self) -> u64 {
        let mut ids: Vec<u32> = self.volumes.volume_ids().collect();
        ids.sort_unstable();
        ids.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &id| (hash ^ u64::from(id)).wrapping_mul(0x100_0000_01b3))
    }
}
