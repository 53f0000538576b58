//! `rdma-sidecar`: the HTTP face of a reading engine on a reader host.
//!
//! One attach at start, a [`pool::ReadPool`] of queue pairs with many reads
//! in flight, and a `tiny_http` server whose worker threads answer two APIs:
//! - the protocol `weed mount -rdma.*` spoke ([`mount`]: `/health`, `/read`,
//!   `/cleanup`), data in the body;
//! - the volume server's read API ([`volume_api`]: `GET`/`HEAD /<fid>`),
//!   answered as the volume server answers it.
//!
//! Plus `/stats` (JSON) and `/metrics` (Prometheus), from [`stats`].
//! `docs/sidecar.md` has the APIs and every deviation from the volume server.

pub mod http;
pub mod mime;
pub mod mount;
pub mod needle;
pub mod pool;
pub mod ranges;
pub mod routes;
pub mod stats;
pub mod volume_api;

use rdma_client::{AttachOptions, Client, ClientError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to run the sidecar (validated by the CLI).
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub socket: PathBuf,
    pub listen: String,
    pub queue_pairs: u32,
    pub sq_entries: u32,
    pub buffer_mib: u64,
    pub http_threads: usize,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot attach to the engine at {socket}: {error}")]
    Attach { socket: PathBuf, error: ClientError },
    #[error("cannot start the read pool: {0}")]
    Pool(ClientError),
    #[error("cannot listen on {listen}: {reason}")]
    Listen { listen: String, reason: String },
    #[error("cannot start HTTP worker threads: {0}")]
    Threads(std::io::Error),
}

/// A started sidecar: attached, listening, with its workers running.
pub struct Sidecar {
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar").field("listen", &self.local_address()).field("workers", &self.workers.len()).finish()
    }
}

impl Sidecar {
    /// Attaches to the engine, starts the pool and the HTTP workers.
    pub fn start(config: &SidecarConfig) -> Result<Sidecar, SidecarError> {
        let options = AttachOptions {
            queue_pairs: config.queue_pairs,
            sq_entries: config.sq_entries,
            buffer_size_bytes: config.buffer_mib << 20,
            client_name: "rdma-sidecar".into(),
        };
        let client = Client::attach(&config.socket, &options)
            .map_err(|error| SidecarError::Attach { socket: config.socket.clone(), error })?;
        let pool = pool::ReadPool::start(client, config.timeout).map_err(SidecarError::Pool)?;
        let state = Arc::new(routes::State { pool, stats: stats::Stats::new() });
        let server = tiny_http::Server::http(&config.listen)
            .map_err(|error| SidecarError::Listen { listen: config.listen.clone(), reason: error.to_string() })?;
        let server = Arc::new(server);
        let mut workers = Vec::with_capacity(config.http_threads);
        for index in 0..config.http_threads {
            let (state, server) = (state.clone(), server.clone());
            let worker = std::thread::Builder::new()
                .name(format!("sidecar-http-{index}"))
                .spawn(move || routes::worker(&state, &server))
                .map_err(SidecarError::Threads)?;
            workers.push(worker);
        }
        Ok(Sidecar { server, workers })
    }

    /// The address it listens on (the port, when `--listen` named port 0).
    pub fn local_address(&self) -> String {
        self.server.server_addr().to_string()
    }

    /// Serves until the workers stop (they do when the server is closed).
    pub fn wait(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}
