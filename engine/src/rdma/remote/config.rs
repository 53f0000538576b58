//! The read role's settings and setup errors.

use std::net::SocketAddr;
use std::time::Duration;

/// Least `max_in_flight` accepted (the design asks for at least 64 reads per queue pair).
pub const MAX_IN_FLIGHT_MIN: usize = 64;
/// Largest `max_in_flight` accepted.
pub const MAX_IN_FLIGHT_MAX: usize = 1 << 20;
/// Most exporters one engine reads from.
pub const PEERS_MAX: usize = 256;
/// The cached remote indexes' byte budget by default: about 16 M needles.
pub const DEFAULT_INDEX_BUDGET_BYTES: usize = 256 << 20;
/// Lookups of a volume before its index is pulled, by default: a volume read this often is
/// read often enough that one pull (about 125 ns a needle over UCX tcp here) costs less than
/// the lookups to come (one round trip each), and a volume read now and then costs the
/// reader no memory.
pub const DEFAULT_INDEX_PULL_AFTER_LOOKUPS: u32 = 64;
/// Longest single get by default (see `docs/benchmarks.md`, "UCX over tcp: large reads").
pub const DEFAULT_GET_MAX_BYTES: u64 = u64::MAX;
/// Smallest and largest index staging buffer per peer.
const INDEX_CHUNK_MIN_BYTES: usize = 4096;
const INDEX_CHUNK_MAX_BYTES: usize = 64 << 20;

/// The read role's settings, fixed at start.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Exporters to read from (their `--listen` addresses).
    pub peers: Vec<SocketAddr>,
    /// Most exporters at once: `peers` plus those added later ([`super::RemoteReads::add_peer`],
    /// for volumes located through the master).
    pub max_peers: usize,
    /// Reads in flight at most (started, completion not yet popped); at least 64.
    pub max_in_flight: usize,
    /// UCX settings (`("TLS", "tcp")`) on top of the `UCX_*` environment.
    pub ucx: Vec<(String, String)>,
    /// How long connecting (until the catalogue arrives) and a catalogue request may take.
    pub connect_timeout: Duration,
    /// How long a read's gets may stay in flight before its peer is declared hung and failed.
    pub read_timeout: Duration,
    /// First reconnect delay after a failure; doubled per failure up to the maximum.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Staging buffer per peer for index pulls; pulls go in chunks of this size.
    pub index_chunk_bytes: usize,
    /// SeaweedFS's read key: every catalogue request carries a token signed with it.
    pub read_key: Option<crate::rdma::token::ReadKey>,
    /// Longest single get: longer reads are fetched in several gets at once (at most
    /// `GETS_PER_TRANSFER_MAX` in flight per read).
    pub get_max_bytes: u64,
    /// Bytes the cached indexes of remote volumes may hold in all: past it, the index read
    /// least recently is dropped (and pulled again by its next read).
    pub index_budget_bytes: usize,
    /// Reads of a volume answered by the exporter's lookups before its whole index is pulled
    /// into the cache (in the background, when it fits the budget); 0: never pulled, every
    /// read of a needle not cached asks the exporter.
    pub index_pull_after_lookups: u32,
    /// Tokens are signed as if this long ago (testing: a reader whose clock is behind).
    pub token_backdate: Duration,
}

impl RemoteConfig {
    pub fn new(peers: Vec<SocketAddr>) -> RemoteConfig {
        RemoteConfig {
            max_peers: peers.len(),
            peers,
            max_in_flight: 256,
            ucx: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            index_chunk_bytes: 1 << 20,
            read_key: None,
            get_max_bytes: DEFAULT_GET_MAX_BYTES,
            token_backdate: Duration::ZERO,
            index_budget_bytes: DEFAULT_INDEX_BUDGET_BYTES,
            index_pull_after_lookups: DEFAULT_INDEX_PULL_AFTER_LOOKUPS,
        }
    }

    pub(super) fn validate(&self) -> Result<(), RemoteError> {
        let fail = |reason: String| Err(RemoteError::Config(reason));
        if !(MAX_IN_FLIGHT_MIN..=MAX_IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return fail(format!("max_in_flight must be in {MAX_IN_FLIGHT_MIN}..={MAX_IN_FLIGHT_MAX}"));
        }
        if self.peers.len() > self.max_peers || self.max_peers > PEERS_MAX {
            return fail(format!("at most {PEERS_MAX} peers, and no more than max_peers"));
        }
        if !(INDEX_CHUNK_MIN_BYTES..=INDEX_CHUNK_MAX_BYTES).contains(&self.index_chunk_bytes) {
            return fail("index_chunk_bytes must be in 4 KiB..=64 MiB".into());
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() || self.reconnect_backoff_min.is_zero() {
            return fail("timeouts and backoff must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote read configuration: {0}")]
    Config(String),
    #[error("UCX setup for the read role failed: {0}")]
    Ucx(#[from] ucx::Error),
    #[error("buffer area {0} is already registered")]
    AreaExists(u64),
    #[error("cannot add exporter {0}: already {1} peers, the most this engine was sized for")]
    TooManyPeers(SocketAddr, usize),
}
