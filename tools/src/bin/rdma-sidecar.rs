//! rdma-sidecar: an HTTP server on a reading engine, speaking the
//! `weed mount` sidecar protocol and the volume server's read API.
//! Logic in `rdma_tools::sidecar`.
//!
//! Exit codes: 0 never (it serves until killed); 2 usage; 3 the engine
//! could not be attached; 1 anything else (cannot listen, no threads).

use clap::Parser;
use rdma_engine::config::LogFormat;
use rdma_tools::exit_code;
use rdma_tools::sidecar::{Sidecar, SidecarConfig, SidecarError};
use std::path::PathBuf;
use std::time::Duration;

/// Serve needle reads of a local engine over HTTP.
#[derive(Debug, Parser)]
#[command(name = "rdma-sidecar", version)]
struct Args {
    /// The reading engine's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Address to listen on, HOST:PORT (port 0 picks one; the log says which).
    #[arg(long)]
    listen: String,
    /// Queue pairs to attach with (at most the engine's --max-queue-pairs).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    queue_pairs: u32,
    /// SQ entries per queue pair (a power of two; the CQ tracks twice as many reads).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=4096))]
    sq_entries: u32,
    /// Buffer area in MiB: reads in flight at once need about 1 MiB each.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(4..=1024))]
    buffer_mib: u64,
    /// Most HTTP connections open at once (each has a thread).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_connections: u64,
    /// Give up on a read after this long.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() {
    let args = Args::parse();
    rdma_engine::logging::init(args.log_format);
    if !args.sq_entries.is_power_of_two() {
        eprintln!("rdma-sidecar: --sq-entries {} is not a power of two", args.sq_entries);
        std::process::exit(exit_code::USAGE);
    }
    let config = SidecarConfig {
        socket: args.socket,
        listen: args.listen,
        queue_pairs: args.queue_pairs,
        sq_entries: args.sq_entries,
        buffer_mib: args.buffer_mib,
        max_connections: args.max_connections as usize,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let sidecar = match Sidecar::start(&config) {
        Ok(sidecar) => sidecar,
        Err(error) => {
            eprintln!("rdma-sidecar: {error}");
            let code = match error {
                SidecarError::Attach { .. } | SidecarError::Pool(_) => exit_code::ENGINE,
                SidecarError::Listen { .. } | SidecarError::Threads(_) => exit_code::OTHER,
            };
            std::process::exit(code);
        }
    };
    tracing::info!(
        listen = %sidecar.local_address(),
        queue_pairs = config.queue_pairs,
        max_connections = config.max_connections,
        "rdma-sidecar listening"
    );
    sidecar.wait();
}
