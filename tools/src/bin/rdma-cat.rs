//! rdma-cat: write one needle's data (or a byte range of it) to stdout,
//! read through the engine. Logic in `rdma_tools::cat`.
//!
//! Exit codes: 0 ok; 2 usage; 3 engine unreachable, refused or silent;
//! 4 the engine's error for the needle; 1 writing stdout failed.

use clap::Parser;
use rdma_tools::cat::{self, CatRequest};
use rdma_tools::exit_code;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use volume_format::file_id::FileId;

/// Print a needle's data as the volume server's HTTP GET serves it to a
/// client that does not accept gzip; one line on stderr says how it went.
#[derive(Debug, Parser)]
#[command(name = "rdma-cat", version)]
struct Args {
    /// The engine's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// SeaweedFS file id, e.g. 3,01637037d6 (a .ext suffix is ignored).
    fid: String,
    /// First byte of the range (of the decompressed data for a gzipped needle).
    #[arg(long)]
    offset: Option<u64>,
    /// Bytes of the range (clipped at the end of the data); default: to the end.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    size: Option<u64>,
    /// Give up after this long.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
}

fn main() {
    let args = Args::parse();
    let file_id = match FileId::parse_url_path(&args.fid) {
        Ok(file_id) => file_id,
        Err(error) => {
            eprintln!("rdma-cat: {error}");
            std::process::exit(exit_code::USAGE);
        }
    };
    let range = match (args.offset, args.size) {
        (None, None) => None,
        (offset, size) => Some((offset.unwrap_or(0), size)),
    };
    let request = CatRequest { socket: args.socket, file_id, range, timeout: Duration::from_millis(args.timeout_ms) };
    let output = match cat::run(&request) {
        Ok(output) => output,
        Err(error) => {
            eprintln!("rdma-cat: {}: {error}", args.fid);
            std::process::exit(cat::exit_code(&error));
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(&output.data).and_then(|()| stdout.flush()) {
        eprintln!("rdma-cat: {}: cannot write stdout: {error}", args.fid);
        std::process::exit(exit_code::OTHER);
    }
    eprintln!(
        "rdma-cat: {} source={} bytes={} latency_us={:.1} attach_us={:.1} reads={} gzipped={}",
        args.fid,
        output.source.name(),
        output.data.len(),
        output.latency.as_secs_f64() * 1e6,
        output.attach.as_secs_f64() * 1e6,
        output.read_count,
        output.gzipped
    );
}
