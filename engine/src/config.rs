//! The engine's command line and limits, validated once at start-up.

use clap::{Parser, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

/// Most SQ futexes one poller can sleep on (futex_waitv takes 128 words; one
/// is the engine's own doorbell).
pub const MAX_SLEEPING_QUEUE_PAIRS: u32 = rdma_ipc::futex::WAITV_MAX as u32 - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HugepagePolicy {
    /// Huge pages when available, else normal pages with MADV_HUGEPAGE (said once in the log).
    Auto,
    /// Refuse an attach when huge pages are not available.
    Require,
    /// Normal pages only.
    Off,
}

/// Which backend reads local volumes (`--local-io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalIoKind {
    /// io_uring, falling back to pread threads where it cannot start.
    IoUring,
    /// A pool of pread threads.
    Threads,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// rdma-engine: the shared-memory RDMA read coprocessor for SeaweedFS.
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "rdma-engine", version)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[command(flatten)]
    #[serde(skip)]
    pub file: crate::config_file::ConfigFileArgs,

    /// Run the engine as a child of a small supervisor that restarts it when it dies of a
    /// signal (UCX aborts the process on some peer failures, e.g. a reader killed mid-read
    /// over tcp), within 100 ms; a crash loop (deaths within 1 s of their start) backs off to
    /// 10 s. A clean exit or a start-up error ends both; SIGTERM/SIGINT/SIGHUP are passed on.
    #[arg(long)]
    pub supervise: bool,

    /// Path of the Unix control socket clients attach through (created mode 0600).
    #[arg(long)]
    pub socket: PathBuf,

    /// A directory of SeaweedFS volumes (`[collection_]ID.dat` + `.idx`) served
    /// locally, read straight into the client's buffer. Repeatable.
    #[arg(long = "volume-dir")]
    pub volume_dir: Vec<PathBuf>,

    /// How local volumes are read: io_uring (falls back to pread threads, with one log line,
    /// where io_uring cannot start) or a pool of pread threads.
    #[arg(long, value_enum, default_value_t = LocalIoKind::IoUring)]
    pub local_io: LocalIoKind,

    /// Threads of the pread pool (with `--local-io threads`, or when io_uring is unavailable).
    #[arg(long, default_value_t = 2)]
    pub local_io_threads: usize,

    /// Width of offsets in the volumes' `.idx` files: 4 (SeaweedFS default,
    /// 16-byte entries) or 5 (the `5BytesOffset` build, 17-byte entries).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub offset_bytes: u8,

    /// Which remote transport both roles use: `auto` takes UCX only when a verbs (RDMA)
    /// device is present and can register the export's file mappings, else the stream
    /// transport (our protocol over TCP); the start-up log says which and why.
    #[arg(long, value_enum, default_value_t = crate::transport::TransportKind::Auto)]
    pub transport: crate::transport::TransportKind,

    /// With `--transport ucx` on a host without a verbs device: accept that UCX's software
    /// transports let any peer that connects read and write this process's memory
    /// (docs/security.md). For trusted single-tenant setups and tests of the UCX code path.
    #[arg(long)]
    pub allow_ucx_software_rma: bool,

    /// Export role: a directory of SeaweedFS volumes to export to reading engines.
    /// Repeatable; needs --listen.
    #[arg(long = "export-dir", requires = "listen")]
    pub export_dir: Vec<PathBuf>,

    /// Export role: the one address the exporter listens on (HOST:PORT).
    #[arg(long, requires = "export_dir")]
    pub listen: Option<std::net::SocketAddr>,

    /// Export role: only these reader addresses may connect (repeatable).
    /// Without it (and without --security-toml) any host that reaches --listen can read every
    /// exported volume; see docs/security.md.
    #[arg(long = "allow-peer", requires = "listen")]
    pub allow_peer: Vec<std::net::IpAddr>,

    /// Read role: an exporting engine to read volumes from (its --listen address).
    /// Repeatable.
    #[arg(long = "peer")]
    pub peer: Vec<std::net::SocketAddr>,

    /// Read role: the SeaweedFS master (HOST:PORT) that locates volumes this engine does not
    /// serve locally (`/dir/lookup`); their reads go to the exporter at the volume server's
    /// host and --export-port, else to the volume server's HTTP.
    #[arg(long)]
    pub master: Option<String>,

    /// Read role: the port the export role listens on at every volume server's host (with
    /// --master).
    #[arg(long, requires = "master")]
    pub export_port: Option<u16>,

    /// Read role: a volume server (HOST:PORT) the HTTP fallback reads from when no master
    /// locates the volume (setups without a master, or a master that is down).
    #[arg(long)]
    pub volume_server: Option<String>,

    /// Read role: never read from the volume server's HTTP (reads that RDMA and local files
    /// cannot serve fail instead).
    #[arg(long)]
    pub no_http_fallback: bool,

    /// Read role: threads of the HTTP fallback (its requests in flight at once).
    #[arg(long, default_value_t = 8)]
    pub http_fallback_threads: usize,

    /// SeaweedFS's security.toml: its `[jwt.signing.read]` key authenticates readers and
    /// exporters to each other (the stream transport's challenge and response; UCX's catalogue
    /// requests are signed with it), and its gRPC certificates (`[grpc] ca`, `[grpc.volume]`
    /// for the export role, `[grpc.client]` for the read role) put the stream transport on
    /// mutual TLS. Give it to both roles.
    #[arg(long)]
    pub security_toml: Option<PathBuf>,

    /// Testing only: the read role signs its tokens as if this many seconds ago (a reader
    /// host whose clock is behind), so an exporter's refusal of expired tokens can be shown.
    #[arg(long, hide = true, default_value_t = 0)]
    #[serde(skip_serializing_if = "is_zero")]
    pub read_token_backdate_secs: u64,

    /// Read role: stream transport connections kept to each exporter.
    #[arg(long, default_value_t = 2)]
    pub stream_connections_per_peer: usize,

    /// Read role: remote reads each queue pair can have in flight at once; the
    /// engine sizes its table for every queue pair of every client at once.
    #[arg(long, default_value_t = 64)]
    pub rdma_reads_per_queue_pair: usize,

    /// Read role: the longest single RDMA get, in KiB (0: no limit). A longer read is fetched
    /// in several gets in flight at once, which moves large needles faster over UCX's tcp
    /// transport (see docs/benchmarks.md).
    #[arg(long, default_value_t = 0)]
    pub rdma_get_max_kib: u64,

    /// Read role, UCX: MiB the cached indexes of remote volumes may hold in all; past it the
    /// index read least recently is dropped, and its volume is read through the exporter's
    /// lookups again. (The stream transport caches none: the exporter looks needles up.)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub remote_index_budget_mib: u64,

    /// Read role, UCX: reads of a remote volume that the exporter looks up (one round trip
    /// each) before the volume's whole index is pulled into the cache, if it fits the budget;
    /// 0: never pulled.
    #[arg(long, default_value_t = crate::rdma::remote::DEFAULT_INDEX_PULL_AFTER_LOOKUPS)]
    pub remote_index_pull_after_lookups: u32,

    /// Most clients attached at once.
    #[arg(long, default_value_t = 16)]
    pub max_clients: u32,

    /// Most queue pairs one client may ask for.
    #[arg(long, default_value_t = 4)]
    pub max_queue_pairs: u32,

    /// Most SQ entries per queue pair a client may ask for (a power of two).
    #[arg(long, default_value_t = 1024)]
    pub max_sq_entries: u32,

    /// Largest buffer area one client may ask for, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub max_buffer_mib: u64,

    /// Whether regions are backed by huge pages.
    #[arg(long, value_enum, default_value_t = HugepagePolicy::Auto)]
    pub hugepages: HugepagePolicy,

    /// The longest the poller spins on empty rings before it sleeps, in microseconds (it spins
    /// less while its last idle spells say spinning does not pay; 0: never spin). The UCX
    /// export role's worker spins the same way (the stream exporter never spins).
    #[arg(long, default_value_t = 50)]
    pub idle_spin_us: u64,

    /// Heartbeat interval: the longest sleep between two heartbeats, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Serve Prometheus metrics (`GET /metrics`, text format) on this address (HOST:PORT).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Pin the poller thread to this CPU.
    #[arg(long)]
    pub poller_cpu: Option<usize>,

    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--max-clients × --max-queue-pairs is {found}, more than the {MAX_SLEEPING_QUEUE_PAIRS} queue pairs one poller can sleep on")]
    TooManyQueuePairs { found: u64 },
    #[error("--{name} {value} is outside the layout's limit of {limit}")]
    OutOfRange { name: &'static str, value: u64, limit: u64 },
    #[error("--max-sq-entries {0} is not a power of two of at least 2")]
    SqEntries(u32),
    #[error("--heartbeat-ms must be between 1 and 1000 so clients notice a dead engine within a second")]
    Heartbeat,
    #[error("--{name} {value:?} is not HOST:PORT")]
    NotHostPort { name: &'static str, value: String },
}

impl Config {
    /// Checks the relations between settings; the engine refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use shm_layout::geometry::{MAX_BUFFER_SIZE_BYTES, MAX_QUEUE_PAIRS, MAX_SQ_ENTRIES};
        let total = self.max_clients as u64 * self.max_queue_pairs as u64;
        if total > MAX_SLEEPING_QUEUE_PAIRS as u64 {
            return Err(ConfigError::TooManyQueuePairs { found: total });
        }
        let ranges: [(&'static str, u64, u64); 4] = [
            ("max-clients", self.max_clients as u64, MAX_SLEEPING_QUEUE_PAIRS as u64),
            ("max-queue-pairs", self.max_queue_pairs as u64, MAX_QUEUE_PAIRS as u64),
            ("max-sq-entries", self.max_sq_entries as u64, MAX_SQ_ENTRIES as u64),
            ("max-buffer-mib", self.max_buffer_mib, MAX_BUFFER_SIZE_BYTES >> 20),
        ];
        for (name, value, limit) in ranges {
            if value == 0 || value > limit {
                return Err(ConfigError::OutOfRange { name, value, limit });
            }
        }
        if !self.max_sq_entries.is_power_of_two() || self.max_sq_entries < 2 {
            return Err(ConfigError::SqEntries(self.max_sq_entries));
        }
        if !(1..=4096).contains(&self.rdma_reads_per_queue_pair) {
            return Err(ConfigError::OutOfRange {
                name: "rdma-reads-per-queue-pair",
                value: self.rdma_reads_per_queue_pair as u64,
                limit: 4096,
            });
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 1000 {
            return Err(ConfigError::Heartbeat);
        }
        for (name, value) in [("master", &self.master), ("volume-server", &self.volume_server)] {
            if let Some(value) = value.as_ref().filter(|value| !is_host_port(value)) {
                return Err(ConfigError::NotHostPort { name, value: value.clone() });
            }
        }
        if !(1..=16).contains(&self.stream_connections_per_peer) {
            return Err(ConfigError::OutOfRange {
                name: "stream-connections-per-peer",
                value: self.stream_connections_per_peer as u64,
                limit: 16,
            });
        }
        if !(1..=256).contains(&self.http_fallback_threads) {
            return Err(ConfigError::OutOfRange {
                name: "http-fallback-threads",
                value: self.http_fallback_threads as u64,
                limit: 256,
            });
        }
        Ok(())
    }

    /// Size of the RDMA read table: every queue pair can have its share in flight.
    pub fn max_rdma_in_flight(&self) -> usize {
        self.rdma_reads_per_queue_pair * self.max_clients as usize * self.max_queue_pairs as usize
    }

    pub fn max_buffer_size_bytes(&self) -> u64 {
        self.max_buffer_mib << 20
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// `HOST:PORT`: a non-empty host without a scheme or path, and a port.
fn is_host_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|port| port > 0),
        None => false,
    }
}
