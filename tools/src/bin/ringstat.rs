//! ringstat: the ring state of a live engine's regions, read-only.
//! Logic in `rdma_tools::ringstat`.

use clap::Parser;
use rdma_tools::exit_code;
use rdma_tools::ringstat::{render_text, take_snapshot, RateTracker};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Show each attached region of an engine: client, backing, states,
/// heartbeat, and per queue pair the ring indices, wake-up flags and counters.
#[derive(Debug, Parser)]
#[command(name = "ringstat", version)]
struct Args {
    /// The engine's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Print one JSON document and exit.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw until interrupted, with rates between frames.
    #[arg(long)]
    watch: bool,
    /// Time between frames in watch mode.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    interval_ms: u64,
}

fn main() {
    let args = Args::parse();
    if args.watch {
        let mut tracker = RateTracker::default();
        loop {
            match take_snapshot(&args.socket) {
                Ok(snapshot) => {
                    let text = render_text(&snapshot, Some(&mut tracker));
                    print!("\x1b[2J\x1b[H{text}");
                }
                Err(error) => print!("\x1b[2J\x1b[Hringstat: {error}\n(retrying)\n"),
            }
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
    }
    let snapshot = match take_snapshot(&args.socket) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("ringstat: {error}");
            std::process::exit(exit_code::ENGINE);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&snapshot) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("ringstat: cannot encode the snapshot: {error}");
                std::process::exit(exit_code::OTHER);
            }
        }
    } else {
        print!("{}", render_text(&snapshot, None));
    }
}
