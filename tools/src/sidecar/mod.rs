//! `rdma-sidecar`: the HTTP face of a reading engine on a reader host.
//!
//! One attachment kept up (the client library's [`rdma_client::Reader`]: attached again
//! when the engine comes back, its pool of queue pairs with many reads in flight shared by
//! every request), and an HTTP/1.1 server
//! ([`server`], a thread per connection) that answers two APIs:
//! - the protocol `weed mount -rdma.*` spoke ([`mount`]: `/health`, `/read`,
//!   `/cleanup`), data in the body;
//! - the volume server's read API ([`volume_api`]: `GET`/`HEAD /<fid>`),
//!   answered as the volume server answers it.
//!
//! Plus `/stats` (JSON) and `/metrics` (Prometheus), from [`stats`].
//! `docs/sidecar.md` has the APIs and every deviation from the volume server.

pub mod conditional;
pub mod config;
pub mod http;
pub mod manifest;
pub mod mime;
pub mod mount;
pub mod needle;
pub mod ranges;
pub mod routes;
pub mod server;
pub mod stats;
pub mod volume_api;

use rdma_client::reader::{ReadError, Reader, ReaderOptions};
use rdma_client::AttachOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a lost engine is attached again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How long a sidecar started before its engine waits for it.
pub const ENGINE_WAIT: Duration = Duration::from_secs(60);

/// How to run the sidecar (validated by the CLI).
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    pub socket: PathBuf,
    pub listen: String,
    pub queue_pairs: u32,
    pub sq_entries: u32,
    pub buffer_mib: u64,
    pub max_connections: usize,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot attach to the engine at {socket}: {error}")]
    Attach { socket: PathBuf, error: ReadError },
    #[error("cannot listen on {listen}: {reason}")]
    Listen { listen: String, reason: String },
    #[error("cannot start the accept thread: {0}")]
    Threads(std::io::Error),
}

/// A started sidecar: attached, listening, accepting.
#[derive(Debug)]
pub struct Sidecar {
    local_address: String,
    acceptor: std::thread::JoinHandle<()>,
}

impl Sidecar {
    /// Attaches to the engine, starts the pool, listens and accepts.
    pub fn start(config: &SidecarConfig) -> Result<Sidecar, SidecarError> {
        let options = AttachOptions {
            queue_pairs: config.queue_pairs,
            sq_entries: config.sq_entries,
            buffer_size_bytes: config.buffer_mib << 20,
            client_name: "rdma-sidecar".into(),
        };
        let options = ReaderOptions {
            attach: options,
            timeout: config.timeout,
            engine_wait: ENGINE_WAIT,
            reattach: true,
            retry_interval: RETRY_INTERVAL,
            keep_region: true,
        };
        let reader = Reader::connect(&config.socket, options)
            .map_err(|error| SidecarError::Attach { socket: config.socket.clone(), error })?;
        let state = Arc::new(routes::State { reader, stats: stats::Stats::new() });
        let listen_error =
            |error: std::io::Error| SidecarError::Listen { listen: config.listen.clone(), reason: error.to_string() };
        let listener = std::net::TcpListener::bind(&config.listen).map_err(listen_error)?;
        let local_address = listener.local_addr().map_err(listen_error)?.to_string();
        let handler: Arc<server::Handler> = Arc::new(move |request| routes::handle(&state, request));
        let max_connections = config.max_connections;
        let acceptor = std::thread::Builder::new()
            .name("sidecar-accept".into())
            .spawn(move || server::serve(listener, handler, max_connections))
            .map_err(SidecarError::Threads)?;
        Ok(Sidecar { local_address, acceptor })
    }

    /// The address it listens on (the port, when `--listen` named port 0).
    pub fn local_address(&self) -> &str {
        &self.local_address
    }

    /// Serves until the listener fails.
    pub fn wait(self) {
        let _ = self.acceptor.join();
    }
}
