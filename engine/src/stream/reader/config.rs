//! The read role's stream settings and setup errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::rdma::token::ReadKey;

/// Most exporters one engine reads from.
pub const PEERS_MAX: usize = 256;

/// The read role's stream settings, fixed at start.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Exporters to read from (their `--listen` addresses).
    pub peers: Vec<SocketAddr>,
    /// Most exporters at once: `peers` plus those found through the master later.
    pub max_peers: usize,
    /// Reads in flight at most (the read table's capacity).
    pub max_in_flight: usize,
    /// SeaweedFS's read key, for exporters that ask for it.
    pub read_key: Option<ReadKey>,
    /// Mutual TLS (`[grpc.client]`'s certificate, exporters' checked against `[grpc] ca`):
    /// every connection runs over it (`None`: plaintext).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections kept to each exporter.
    pub connections_per_peer: usize,
    /// How long connecting and the handshake may take.
    pub connect_timeout: Duration,
    /// How long a connection may leave requests without a byte of answer before it is failed.
    pub read_timeout: Duration,
    /// First reconnect delay after a failure; doubled per failure up to the maximum.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
}

impl StreamConfig {
    pub fn new(peers: Vec<SocketAddr>) -> StreamConfig {
        StreamConfig {
            max_peers: peers.len(),
            peers,
            max_in_flight: 256,
            read_key: None,
            tls: None,
            connections_per_peer: 2,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }

    pub(super) fn validate(&self) -> Result<(), StreamError> {
        let fail = |reason: String| Err(StreamError::Config(reason));
        if !(1..=1 << 20).contains(&self.max_in_flight) {
            return fail("max_in_flight must be in 1..=1048576".into());
        }
        if self.peers.len() > self.max_peers || self.max_peers > PEERS_MAX {
            return fail(format!("at most {PEERS_MAX} peers, and no more than max_peers"));
        }
        if !(1..=16).contains(&self.connections_per_peer) {
            return fail("connections_per_peer must be in 1..=16".into());
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() || self.reconnect_backoff_min.is_zero() {
            return fail("timeouts and backoff must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream read configuration: {0}")]
    Config(String),
    #[error("cannot start the stream connect thread: {0}")]
    Thread(std::io::Error),
    #[error("buffer area {0} is already registered")]
    AreaExists(u64),
    #[error("cannot add exporter {0}: already {1} peers, the most this engine was sized for")]
    TooManyPeers(SocketAddr, usize),
}
