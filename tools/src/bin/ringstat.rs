//! ringstat: the ring state of a live engine's regions, read-only.
//! Logic in `rdma_tools::ringstat`.

use clap::Parser;
use rdma_tools::exit_code;
use rdma_tools::ringstat::{render_text, take_snapshot, RateTracker, WatchFrame};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Show each attached region of an engine: client, backing, states,
/// heartbeat, and per queue pair the ring indices, wake-up flags and counters;
/// with --watch, the rates per second (SQEs, reads, errors, bytes) by region and queue pair.
#[derive(Debug, Parser)]
#[command(name = "ringstat", version)]
struct Args {
    /// The engine's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Print one JSON document and exit; with --watch, one document per line and frame,
    /// with the rates since the previous frame.
    #[arg(long)]
    json: bool,
    /// Redraw until interrupted, with rates per second between frames.
    #[arg(long)]
    watch: bool,
    /// Time between frames in watch mode.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    interval_ms: u64,
}

/// `{"error": "…"}` and a newline: a frame that could not be taken, in --json --watch.
fn error_line(error: &dyn std::fmt::Display) -> String {
    format!("{}\n", serde_json::json!({ "error": error.to_string() }))
}

/// Frames until interrupted: redrawn text, or one JSON line per frame.
fn watch(args: &Args) -> ! {
    let mut tracker = RateTracker::default();
    loop {
        let frame = match take_snapshot(&args.socket) {
            Ok(snapshot) if args.json => {
                let rates = tracker.update(&snapshot);
                let frame = WatchFrame { snapshot: &snapshot, rates };
                serde_json::to_string(&frame).map_or_else(|error| error_line(&error), |line| line + "\n")
            }
            Ok(snapshot) => format!("\x1b[2J\x1b[H{}", render_text(&snapshot, Some(&mut tracker))),
            Err(error) if args.json => error_line(&error),
            Err(error) => format!("\x1b[2J\x1b[Hringstat: {error}\n(retrying)\n"),
        };
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(frame.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to show.
            std::process::exit(0);
        }
        drop(stdout);
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}

fn main() {
    let args = Args::parse();
    if args.watch {
        watch(&args);
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
