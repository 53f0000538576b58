//! rdma-bench: engine figures beside their floors, measured in the same run.
//! Logic in `rdma_tools::bench`.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use rdma_tools::bench::contend::{busy_loop_main, BUSY_LOOP_SUBCOMMAND, CONTENDERS_MAX};
use rdma_tools::bench::floor::{helper_main, HELPER_SUBCOMMAND};
use rdma_tools::bench::{compare, index, nop, read, reader, remote_index, restart, BenchError};
use rdma_tools::exit_code;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "rdma-bench", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Local,
    Ucx,
    Stream,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// NOP round trips (1 and 2 queue pairs × 1, 8, 32 in flight, and
    /// wake-from-sleep) beside the cache-line, bare-ring and futex floors.
    Nop {
        /// The engine's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Total measured time, split over rounds and slices (the run takes
        /// a little longer: warm-ups and set-up).
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        duration_ms: u64,
        /// Alternating rounds (figures are medians over rounds).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
        /// Sleep before each wake-from-sleep submission, in µs.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
        gap_us: u64,
        /// After the quiet run, run the engine's figures again beside this
        /// many busy-loop processes (started and stopped by the bench).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=CONTENDERS_MAX as i64))]
        contend: u32,
    },
    /// Needle reads (4 KiB, 64 KiB, 1 MiB × depth 1 and 32) beside pread
    /// (local) or a bare ucp_get loop from the same exporter (ucx).
    ///
    /// With --transport ucx, --socket is the reading engine's (started with
    /// --peer) and --peer the exporter's --listen address; run the bench
    /// with the same UCX_TLS (and UCX_MM_ERROR_HANDLING) as the reader.
    Read {
        /// The engine's control socket (for ucx: the reading engine's).
        #[arg(long)]
        socket: PathBuf,
        /// Which path the engine reads through.
        #[arg(long, value_enum)]
        transport: TransportArg,
        /// The exporter's --listen address (HOST:PORT); ucx and stream only.
        #[arg(long, required_if_eq_any([("transport", "ucx"), ("transport", "stream")]))]
        peer: Option<SocketAddr>,
        /// Directory of the volumes (.dat + .idx) the engine serves (for
        /// ucx: the exporter's --export-dir, readable from this host).
        #[arg(long)]
        volume_dir: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Total measured time, split over rounds and slices.
        #[arg(long, default_value_t = 12_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        duration_ms: u64,
        /// Alternating rounds.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rounds: u32,
        /// After the quiet run, run the engine's figures again beside this
        /// many busy-loop processes (started and stopped by the bench).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=CONTENDERS_MAX as i64))]
        contend: u32,
        /// Measure only these sizes (4KiB, 64KiB, 1MiB; comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<String>,
        /// Measure only these queue depths (1, 32; comma-separated; default both).
        #[arg(long, value_delimiter = ',')]
        depths: Vec<u32>,
    },
    /// Every read path against SeaweedFS's own HTTP GET, in one run: starts a real master,
    /// volume server, exporter, reading engines and rdma-sidecar in a temporary directory,
    /// uploads files, measures, stops them all.
    Compare {
        /// The `weed` binary (deploy/install-seaweedfs.sh prints its path).
        #[arg(long)]
        weed: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write the chart (SVG) here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Measured time per path and cell (size × concurrency), split over rounds.
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
        cell_ms: u64,
        /// Alternating rounds per cell.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// Files uploaded per size.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        files_per_size: u64,
    },
    /// The needle index: bytes a needle, build and lookup time at 100k, 1M and 4M needles and
    /// 1,000 volumes of 10k, beside the map it replaced, each case in a process of its own.
    Index {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Alternating rounds (figures are medians over rounds).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
    },
    /// The client library's Reader beside the raw queue pair beneath it: 4 KiB and 1 MiB
    /// needles at 1 and 32 at once, against a running engine.
    Reader {
        #[arg(long)]
        socket: PathBuf,
        /// The engine's volume directory (needles of 4096 and 1048576 bytes are looked up there).
        #[arg(long)]
        volume_dir: PathBuf,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Alternating rounds per cell (figures are medians).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// Seconds per measured cell.
        #[arg(long, default_value_t = 1.0)]
        seconds_per_cell: f64,
    },
    /// UCX reads of remote volumes: a volume's first read through the exporter's lookup beside
    /// a whole index pull, the cached index bytes a reader holds, and random 4 KiB reads with
    /// the index cached and through lookups (an exporter in this process, UCX over tcp).
    RemoteIndex {
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// Volumes of small needles.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        volumes: u32,
        /// Needles per volume.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        needles: u64,
        /// The reader's index budget (the engine's --remote-index-budget-mib).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        budget_mib: u64,
        /// Seconds per measured cell of the random reads (3 alternating rounds each).
        #[arg(long, default_value_t = 1.0)]
        seconds_per_cell: f64,
    },
    /// What an engine restart costs clients that stay attached: an engine (restarted by the
    /// bench, SIGKILL and SIGTERM in turn) read by a Rust Reader and an rdma-sidecar, each
    /// from several threads; per restart, the time from the new engine's socket to each
    /// client's first read, and the reads that failed meanwhile.
    Restart {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Engine restarts (SIGKILL and SIGTERM alternate).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=10_000))]
        restarts: u32,
        /// Reading threads per client.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
        threads: u32,
    },
    /// Internal: one case of `index`, in a process of its own.
    #[command(name = index::INDEX_CASE_SUBCOMMAND, hide = true)]
    IndexCase {
        #[arg(long, value_enum)]
        structure: index::Structure,
        #[arg(long)]
        volumes: usize,
        #[arg(long)]
        needles: usize,
    },
    /// Internal: the floor helper process (re-executed by `nop`).
    #[command(name = HELPER_SUBCOMMAND, hide = true)]
    FloorHelper {
        #[arg(long)]
        fd: i32,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Internal: the server of `read --transport stream`'s bare TCP floor.
    #[command(name = read::tcp_floor::TCP_FLOOR_SUBCOMMAND, hide = true)]
    TcpFloor,
    /// Internal: one busy-loop process of `--contend`.
    #[command(name = BUSY_LOOP_SUBCOMMAND, hide = true)]
    BusyLoop {
        #[arg(long)]
        parent: u32,
    },
}

fn fail(error: BenchError) -> ! {
    eprintln!("rdma-bench: {error}");
    std::process::exit(error.exit_code());
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => {
            eprintln!("rdma-bench: cannot encode the report: {error}");
            std::process::exit(exit_code::OTHER);
        }
    }
}

fn main() {
    // The floor's UCX context gets the engine's defaults too, so the ratio compares like with like.
    rdma_engine::rdma::set_ucx_environment_defaults();
    match Args::parse().command {
        Command::Nop { socket, json, duration_ms, rounds, gap_us, contend } => {
            let options = nop::NopOptions { socket, duration_ms, rounds, gap_us, contend };
            let report = nop::run(&options).unwrap_or_else(|error| fail(error));
            if json {
                print_json(&report);
            } else {
                print!("{}", rdma_tools::bench::render_nop(&report));
            }
        }
        Command::Read { socket, transport, peer, volume_dir, json, duration_ms, rounds, contend, sizes, depths } => {
            let cases = read::Cases::select(&sizes, &depths)
                .unwrap_or_else(|message| Args::command().error(clap::error::ErrorKind::InvalidValue, message).exit());
            let options = read::ReadOptions { socket, volume_dir, duration_ms, rounds, contend, cases };
            match (transport, peer) {
                (TransportArg::Local, Some(_)) => Args::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--peer applies to --transport ucx and stream only",
                    )
                    .exit(),
                (TransportArg::Local, None) => {
                    let report = read::run(&options).unwrap_or_else(|error| fail(error));
                    if json {
                        print_json(&report);
                    } else {
                        print!("{}", rdma_tools::bench::render_read(&report));
                    }
                }
                (TransportArg::Ucx | TransportArg::Stream, peer) => {
                    let peer = peer.expect("clap requires --peer with --transport ucx or stream");
                    let transport =
                        if transport == TransportArg::Stream { read::Transport::Stream } else { read::Transport::Ucx };
                    let options = read::ucx::UcxReadOptions { read: options, peer, transport };
                    let report = read::ucx::run(&options).unwrap_or_else(|error| fail(error));
                    if json {
                        print_json(&report);
                    } else {
                        print!("{}", rdma_tools::bench::render_read_ucx(&report));
                    }
                }
            }
        }
        Command::Compare { weed, json, plot, cell_ms, rounds, files_per_size } => {
            let beside = |name: &str| {
                std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(name))).unwrap_or_default()
            };
            let options = compare::CompareOptions {
                weed,
                engine: beside("rdma-engine"),
                sidecar: beside("rdma-sidecar"),
                cell_ms,
                rounds,
                files_per_size: files_per_size as usize,
            };
            let report = compare::run(&options).unwrap_or_else(|error| {
                eprintln!("rdma-bench: {error}");
                std::process::exit(exit_code::OTHER);
            });
            if let Some(path) = plot {
                if let Err(error) = compare::write_svg(&report, &path) {
                    eprintln!("rdma-bench: cannot write the chart {}: {error}", path.display());
                    std::process::exit(exit_code::OTHER);
                }
            }
            if json {
                print_json(&report);
            } else {
                print!("{}", compare::render_compare(&report));
            }
        }
        Command::Index { json, rounds } => {
            let report = index::run(rounds).unwrap_or_else(|error| fail(error));
            if json {
                print_json(&report);
            } else {
                print!("{}", index::render(&report));
            }
        }
        Command::Reader { socket, volume_dir, json, rounds, seconds_per_cell } => {
            let report =
                reader::run(&socket, &volume_dir, rounds, seconds_per_cell).unwrap_or_else(|error| fail(error));
            if json {
                print_json(&report);
            } else {
                print!("{}", reader::render(&report));
            }
        }
        Command::RemoteIndex { json, volumes, needles, budget_mib, seconds_per_cell } => {
            let spec = remote_index::RemoteIndexSpec { volumes, needles, budget_mib, seconds_per_cell };
            let report = remote_index::run(spec).unwrap_or_else(|error| fail(error));
            if json {
                print_json(&report);
            } else {
                print!("{}", remote_index::render(&report));
            }
        }
        Command::Restart { json, restarts, threads } => {
            let report = restart::run(restart::RestartSpec { restarts, threads }).unwrap_or_else(|error| fail(error));
            if json {
                print_json(&report);
            } else {
                print!("{}", restart::render(&report));
            }
        }
        Command::IndexCase { structure, volumes, needles } => {
            let result = index::case_main(structure, volumes, needles).unwrap_or_else(|error| fail(error));
            print_json(&result);
        }
        Command::FloorHelper { fd, cpu } => {
            if let Err(message) = helper_main(fd, cpu) {
                eprintln!("rdma-bench floor helper: {message}");
                std::process::exit(exit_code::OTHER);
            }
        }
        Command::TcpFloor => {
            if let Err(message) = read::tcp_floor::server_main() {
                eprintln!("rdma-bench TCP floor server: {message}");
                std::process::exit(exit_code::OTHER);
            }
        }
        Command::BusyLoop { parent } => {
            let Err(message) = busy_loop_main(parent);
            eprintln!("rdma-bench contender: {message}");
            std::process::exit(exit_code::OTHER);
        }
    }
}
