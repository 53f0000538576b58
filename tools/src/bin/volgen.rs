//! volgen: write a synthetic SeaweedFS volume (`.dat` + `.idx`) with seeded
//! random needles. All logic is in `volume_format::generate`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use volume_format::generate::{generate_volume, GenerateError, GenerateSpec, SizePlan};
use volume_format::index::OffsetWidth;

/// Write DIR/[COLLECTION_]N.dat and .idx with COUNT needles of random data.
#[derive(Debug, Parser)]
#[command(name = "volgen", version)]
#[command(group(ArgGroup::new("sizing").required(true).args(["size", "sizes", "size_range"])))]
struct Args {
    /// Directory to write the volume files into.
    #[arg(long)]
    dir: PathBuf,
    /// Volume id (file name and file ids).
    #[arg(long)]
    volume_id: u32,
    /// Number of needles (ids 1..=COUNT).
    #[arg(long)]
    count: u64,
    /// Every needle's data size in bytes.
    #[arg(long)]
    size: Option<u32>,
    /// Comma-separated data sizes, used in turn.
    #[arg(long)]
    sizes: Option<String>,
    /// Random data sizes MIN..MAX (both inclusive).
    #[arg(long)]
    size_range: Option<String>,
    /// Seed for data, cookies and random sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Collection name (file name prefix).
    #[arg(long)]
    collection: Option<String>,
    /// Offset width of .idx entries: 4, or 5 for a 5BytesOffset weed build.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    offset_bytes: u8,
    /// Write the file ids here, one per line.
    #[arg(long)]
    fids_out: Option<PathBuf>,
    /// Replace existing volume files.
    #[arg(long)]
    force: bool,
}

fn size_plan(args: &Args) -> Result<SizePlan, GenerateError> {
    match (&args.size, &args.sizes, &args.size_range) {
        (Some(size), _, _) => SizePlan::fixed(*size),
        (_, Some(list), _) => SizePlan::parse_list(list),
        (_, _, Some(range)) => SizePlan::parse_range(range),
        (None, None, None) => unreachable!("clap requires one of --size, --sizes, --size-range"),
    }
}

fn run(args: &Args) -> Result<(), String> {
    let sizes = size_plan(args).map_err(|error| error.to_string())?;
    let offset_width = OffsetWidth::from_offset_size_bytes(args.offset_bytes).unwrap_or_default();
    let spec = GenerateSpec {
        dir: args.dir.clone(),
        volume_id: args.volume_id,
        count: args.count,
        sizes,
        seed: args.seed,
        collection: args.collection.clone(),
        offset_width,
        overwrite: args.force,
    };
    let mut fids_out = match &args.fids_out {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(|error| format!("cannot create {}: {error}", path.display()))?,
        )),
        None => None,
    };
    let summary = generate_volume(&spec, &mut |file_id| match fids_out.as_mut() {
        Some(out) => writeln!(out, "{file_id}"),
        None => Ok(()),
    })
    .map_err(|error| error.to_string())?;
    if let Some(out) = fids_out.as_mut() {
        out.flush().map_err(|error| format!("cannot write file ids: {error}"))?;
    }
    eprintln!(
        "volgen: wrote {} needles ({} data bytes) to {} ({} bytes) and {}",
        summary.write.needle_count,
        summary.data_bytes,
        summary.write.dat_path.display(),
        summary.write.dat_size_bytes,
        summary.write.idx_path.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("volgen: {message}");
            ExitCode::FAILURE
        }
    }
}
