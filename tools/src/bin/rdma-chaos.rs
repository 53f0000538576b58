//! rdma-chaos: a fault campaign and a soak against real engines, clients and UCX.
//! Logic in `rdma_tools::chaos`.
//!
//! Exit codes: 0 every target counter is zero; 1 a target counter is not (the report says
//! which); 2 usage; 3 the run could not be set up.

use clap::{Parser, Subcommand};
use rdma_engine::config::LogFormat;
use rdma_tools::chaos::client::{client_main, ClientArgs};
use rdma_tools::chaos::{campaign, soak, ChaosError};
use rdma_tools::exit_code;

#[derive(Debug, Parser)]
#[command(name = "rdma-chaos", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// SIGKILL or SIGSTOP a random client, the reading engine or the exporter at random
    /// moments while clients read a volume whose bytes are known; count wrong bytes,
    /// hangs, leaks, engine deaths and the time to recover.
    Campaign(campaign::CampaignOptions),
    /// Clients attach, read at full depth and detach continuously; sample the engines'
    /// RSS, fds and mappings.
    Soak(soak::SoakOptions),
    /// One client process of a run (started by the campaign and the soak).
    #[command(name = "__client", hide = true)]
    Client(ClientArgs),
}

fn fail(error: &ChaosError) -> ! {
    eprintln!("rdma-chaos: {error}");
    std::process::exit(match error {
        ChaosError::Usage(_) => exit_code::USAGE,
        ChaosError::Setup(_) => exit_code::ENGINE,
    })
}

/// Prints the report (JSON or table) and exits 0 when it is clean, 1 when not.
fn finish(json: bool, report: &impl serde::Serialize, table: String, clean: bool) -> ! {
    if json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
    } else {
        print!("{table}");
    }
    std::process::exit(if clean { 0 } else { exit_code::OTHER })
}

fn main() {
    let args = Args::parse();
    match args.command {
        Command::Client(client) => {
            if let Err(error) = client_main(&client) {
                fail(&error);
            }
        }
        Command::Campaign(options) => {
            rdma_engine::logging::init(LogFormat::Text);
            match campaign::run(&options) {
                Ok(report) => finish(options.run.json, &report, report.table(), report.clean()),
                Err(error) => fail(&error),
            }
        }
        Command::Soak(options) => {
            rdma_engine::logging::init(LogFormat::Text);
            match soak::run(&options) {
                Ok(report) => finish(options.run.json, &report, report.table(), report.clean()),
                Err(error) => fail(&error),
            }
        }
    }
}
