//! Building the read transports from the configuration: on the control thread (local
//! volumes, settings), then on the poller thread (UCX objects stay on the thread that made
//! them; the lookup and HTTP threads start there too).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::http::{HttpConfig, HttpReads, Waker};
use super::locate::Locator;
use super::remote::Remote;
use super::routes::RouteTable;
use super::{local, ReadCounters, ReadService};
use crate::config::{Config, LocalIoKind};
use crate::rdma::remote::{RemoteConfig, RemoteReads, PEERS_MAX};
use crate::security::{SecurityError, SecurityToml};
use crate::stream::reader::{StreamConfig, StreamReads};
use crate::transport::TransportKind;
use volume_format::index::OffsetWidth;

/// Exporters found through the master that one engine connects to at most.
const MASTER_PEERS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ReadSetupError {
    #[error(
        "cannot read volume directory {dir}: {source} (of --volume-dir {all}; the engine serves all of them or none)"
    )]
    VolumeDir { dir: String, all: String, source: std::io::Error },
    #[error("cannot start the RDMA read role: {0}")]
    Remote(#[from] crate::rdma::remote::RemoteError),
    #[error("cannot start the stream read role: {0}")]
    Stream(#[from] crate::stream::reader::StreamError),
    #[error("--security-toml: {0}")]
    Security(#[from] crate::security::SecurityError),
    #[error("cannot start the {what} threads: {source}")]
    Threads { what: &'static str, source: std::io::Error },
}

/// What the read transports need to start: built on the control thread,
/// turned into a [`ReadService`] on the poller thread (UCX objects stay on
/// the thread that made them).
#[derive(Debug)]
pub struct ReadSetup {
    local: local::LocalVolumes,
    remote: Option<RemoteConfig>,
    stream: Option<StreamConfig>,
    master: Option<String>,
    export_port: Option<u16>,
    volume_server: Option<Arc<str>>,
    http_threads: Option<usize>,
    local_io: LocalIoKind,
    local_io_threads: usize,
    table_capacity: usize,
    reads_per_queue_pair: usize,
}

impl ReadSetup {
    /// Loads `--volume-dir` volumes and prepares the other transports' settings; `None` when
    /// no read transport is configured.
    pub fn from_config(config: &Config) -> Result<Option<ReadSetup>, ReadSetupError> {
        if config.volume_dir.is_empty()
            && config.peer.is_empty()
            && config.master.is_none()
            && config.volume_server.is_none()
        {
            return Ok(None);
        }
        let width = if config.offset_bytes == 5 { OffsetWidth::Five } else { OffsetWidth::Four };
        let local = local::LocalVolumes::load(&config.volume_dir, width).map_err(|(dir, source)| {
            ReadSetupError::VolumeDir { dir: dir.display().to_string(), all: join_paths(&config.volume_dir), source }
        })?;
        if !config.volume_dir.is_empty() {
            tracing::info!(volumes = local.len(), "local volumes loaded");
        }
        let table_capacity = config.max_rdma_in_flight().max(crate::rdma::remote::MAX_IN_FLIGHT_MIN);
        let master_peers = if config.master.is_some() && config.export_port.is_some() { MASTER_PEERS_MAX } else { 0 };
        let security = config.security_toml.as_deref().map(SecurityToml::load).transpose()?;
        let read_key = match config.transport {
            TransportKind::Ucx => security.as_ref().map(SecurityToml::read_key_for_ucx).transpose()?,
            _ => security.as_ref().and_then(|security| security.read_key.clone()),
        };
        let remote = (!config.peer.is_empty() || master_peers > 0).then(|| RemoteConfig {
            max_in_flight: table_capacity,
            read_key,
            token_backdate: std::time::Duration::from_secs(config.read_token_backdate_secs),
            max_peers: (config.peer.len() + master_peers).min(PEERS_MAX),
            index_budget_bytes: usize::try_from(config.remote_index_budget_mib << 20).unwrap_or(usize::MAX),
            index_pull_after_lookups: config.remote_index_pull_after_lookups,
            get_max_bytes: match config.rdma_get_max_kib {
                0 => u64::MAX,
                kib => kib << 10,
            },
            ..RemoteConfig::new(config.peer.clone())
        });
        let (remote, stream) = match (remote, config.transport) {
            (Some(remote), TransportKind::Ucx) => (Some(remote), None),
            (Some(remote), _) => {
                let tls =
                    security.as_ref().and_then(|security| security.client_tls.as_ref().map(|files| (security, files)));
                let tls = tls
                    .map(|(security, files)| {
                        crate::stream::tls::client_config(files).map_err(|message| SecurityError::Tls {
                            path: security.path.display().to_string(),
                            message,
                        })
                    })
                    .transpose()?;
                let stream = StreamConfig {
                    max_peers: remote.max_peers,
                    max_in_flight: remote.max_in_flight,
                    read_key: remote.read_key.clone(),
                    tls,
                    connections_per_peer: config.stream_connections_per_peer,
                    ..StreamConfig::new(remote.peers.clone())
                };
                (None, Some(stream))
            }
            (None, _) => (None, None),
        };
        let http_wanted = !config.no_http_fallback && (config.master.is_some() || config.volume_server.is_some());
        Ok(Some(ReadSetup {
            local,
            remote,
            stream,
            master: config.master.clone(),
            export_port: config.export_port,
            volume_server: config.volume_server.as_deref().map(Arc::from),
            http_threads: http_wanted.then_some(config.http_fallback_threads),
            local_io: config.local_io,
            local_io_threads: config.local_io_threads,
            table_capacity,
            reads_per_queue_pair: config.rdma_reads_per_queue_pair,
        }))
    }

    /// Starts the transports. Call on the thread that will use them; `wake` rings its
    /// doorbell (other threads call it when they queued a completion for it).
    pub fn start(self, wake: Waker) -> Result<ReadService, ReadSetupError> {
        let wake_local = wake.clone();
        let remote = match (self.remote, self.stream) {
            (Some(config), _) => {
                let peers = config.peers.len();
                let remote = RemoteReads::new(config)?;
                tracing::info!(peers, transport = "ucx", "remote read role started");
                Some(Remote::Ucx(remote))
            }
            (None, Some(config)) => {
                let peers = config.peers.len();
                let remote = StreamReads::new(config, wake.clone())?;
                tracing::info!(peers, transport = "stream", "remote read role started");
                Some(Remote::Stream(remote))
            }
            (None, None) => None,
        };
        let threads = |what| move |source| ReadSetupError::Threads { what, source };
        let locator = match self.master {
            Some(master) => {
                tracing::info!(%master, export_port = self.export_port, "volumes are located through the master");
                Some(Locator::start(master, wake.clone()).map_err(threads("master lookup"))?)
            }
            None => None,
        };
        let http = match self.http_threads {
            Some(threads_count) => {
                let config = HttpConfig { threads: threads_count, capacity: self.table_capacity };
                tracing::info!(threads = threads_count, "HTTP fallback ready");
                Some(HttpReads::spawn(config, wake).map_err(threads("HTTP fallback"))?)
            }
            None => None,
        };
        let capacity = self.table_capacity;
        let mut local = self.local;
        if local.has_dirs() {
            local
                .start_io(self.local_io, self.local_io_threads, capacity, wake_local)
                .map_err(threads("local read"))?;
        }
        Ok(ReadService {
            local,
            remote,
            http,
            locator,
            export_port: self.export_port,
            volume_server: self.volume_server,
            routes: RouteTable::new(capacity),
            parked: Vec::with_capacity(capacity),
            waiting_peers: 0,
            reads_per_queue_pair: self.reads_per_queue_pair,
            // Sized at start: the poll loop does not allocate.
            by_volume: std::collections::HashMap::with_capacity(super::VOLUMES_COUNTED_MAX),
            logged_counters: ReadCounters::default(),
            last_counters_log: Instant::now(),
            last_deadline_scan: Instant::now(),
        })
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}
