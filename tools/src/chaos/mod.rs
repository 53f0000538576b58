//! `rdma-chaos`: a fault campaign and a soak against real engines.
//!
//! Both start a real exporting engine on a generated volume whose bytes are known, a real
//! reading engine peered with it over UCX (tcp or shared memory, on loopback), and client
//! processes (this binary again, in its hidden client mode, [`client`]) that keep reads
//! in flight and check every byte served.
//!
//! - [`campaign`]: N iterations of SIGKILL or SIGSTOP/SIGCONT of a random client, the
//!   reader or the exporter at a random moment; killed engines are restarted as systemd
//!   would. Counts wrong bytes, hangs, leaked memfds and huge pages, engine deaths the
//!   campaign did not cause, and the time to recover.
//! - [`soak`]: clients attaching and detaching continuously for M minutes while the
//!   engines' RSS, fds and mappings are sampled.
//!
//! Every wait is bounded (named constants and options); the counters the clients keep are
//! in a shared memfd ([`counters`]), so a killed client's counts survive it.

pub mod campaign;
pub mod client;
pub mod counters;
pub mod known;
pub mod procfs;
pub mod report;
pub mod rig;
pub mod soak;

use std::path::PathBuf;

/// The hidden subcommand a client process runs.
pub const CLIENT_SUBCOMMAND: &str = "__client";

/// Why a run could not be made (the figures of a run that was made are a report, not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot set the run up: {0}")]
    Setup(String),
}

/// Which transport the engines use between them: the stream transport (the default
/// engines' own), or UCX's software transports in the opt-in mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Stream,
    Tcp,
    Sm,
}

/// How the campaign's client processes read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientApi {
    /// The rings themselves: one queue pair, `--depth` reads in flight; a new attachment
    /// (and region) whenever the engine goes away.
    #[default]
    Rings,
    /// `rdma_client::Reader` from `--depth` threads, attached once: it re-attaches by itself
    /// and the next engine takes its region over. Each thread keeps its last zero-copy view
    /// and checks it again before the next read, across engine restarts.
    Reader,
}

impl Transport {
    /// The UCX environment of every process of the run (as the RDMA tests use).
    pub fn ucx_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Transport::Stream => &[],
            Transport::Tcp => &[("UCX_TLS", "tcp")],
            Transport::Sm => &[("UCX_TLS", "sm,tcp"), ("UCX_MM_ERROR_HANDLING", "y")],
        }
    }

    /// The flags both engines take for it.
    pub fn engine_args(self) -> &'static [&'static str] {
        match self {
            Transport::Stream => &["--transport", "stream"],
            Transport::Tcp | Transport::Sm => &["--transport", "ucx", "--allow-ucx-software-rma"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Stream => "stream",
            Transport::Tcp => "tcp",
            Transport::Sm => "sm",
        }
    }
}

/// What every run needs, campaign or soak.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// The `rdma-engine` binary (default: beside this one).
    #[arg(long, default_value_os_t = beside_this_binary("rdma-engine"))]
    pub engine: PathBuf,
    /// Transport between the reading and the exporting engine: the stream transport, or UCX
    /// over tcp or shared memory (the opt-in mode).
    #[arg(long, value_enum, default_value_t = Transport::Stream)]
    pub transport: Transport,
    /// Client processes.
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// How the clients read: the rings, or the high-level Reader (kept across engine restarts).
    #[arg(long, value_enum, default_value_t = ClientApi::Rings)]
    pub client_api: ClientApi,
    /// Reads each client keeps in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub depth: u32,
    /// Each read's deadline, in milliseconds after its submission.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub deadline_ms: u64,
    /// A read with no completion this long after its deadline is a hang (ms). The default
    /// covers the reading engine's RDMA read timeout (5 s) and the longest SIGSTOP.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub hang_margin_ms: u64,
    /// Seed of the volume, the victims, the actions and their moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Huge pages to add to `vm.nr_hugepages` for the run (root), given back at the end.
    #[arg(long, default_value_t = 0)]
    pub reserve_hugepages: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// An environment variable (NAME=VALUE) for both engines beyond the UCX transport's,
    /// e.g. a UCX setting to try (repeatable).
    #[arg(long = "engine-env", value_parser = parse_env)]
    pub engine_env: Vec<(String, String)>,
    /// One more argument for the reading engine (repeatable), e.g. `--reader-arg=--hugepages=off`.
    #[arg(long = "reader-arg", allow_hyphen_values = true)]
    pub reader_args: Vec<String>,
    /// One more argument for the exporting engine (repeatable), e.g. `--exporter-arg=--supervise`
    /// (then an exporter fault hits the supervisor: a kill takes its engine with it, a stop
    /// stops the supervisor only).
    #[arg(long = "exporter-arg", allow_hyphen_values = true)]
    pub exporter_args: Vec<String>,
    /// Keep the run's directory (volume, engine logs) and print its path on stderr.
    #[arg(long)]
    pub keep_dir: bool,
    /// Clients check every other needle against deliberately wrong content (tests the
    /// wrong-bytes counter).
    #[arg(long, hide = true)]
    pub flip_expected: bool,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// `name` in the directory of the running executable.
pub fn beside_this_binary(name: &str) -> PathBuf {
    std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(name))).unwrap_or_else(|| name.into())
}
