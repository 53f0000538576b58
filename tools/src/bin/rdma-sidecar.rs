//! rdma-sidecar: an HTTP server on a reading engine, speaking the
//! `weed mount` sidecar protocol and the volume server's read API.
//! Logic in `rdma_tools::sidecar`; settings in `rdma_tools::sidecar::config`.
//!
//! Exit codes: 0 never (it serves until killed) except for `--check-config`; 2 usage or a
//! bad configuration file; 3 the engine could not be attached; 1 anything else (cannot
//! listen, no threads).

use rdma_tools::exit_code;
use rdma_tools::sidecar::config::SidecarArgs;
use rdma_tools::sidecar::{Sidecar, SidecarError};

fn main() {
    let args = SidecarArgs::parse_with_file(std::env::args_os().collect()).and_then(|args| {
        args.validate()?;
        Ok(args)
    });
    let args = match args {
        Ok(args) => args,
        Err(error) => {
            eprintln!("rdma-sidecar: {error}");
            std::process::exit(exit_code::USAGE);
        }
    };
    if args.file.check_config {
        print!("{}", rdma_engine::config_file::effective_toml(&args));
        std::process::exit(0);
    }
    rdma_engine::logging::init(args.log_format);
    let config = args.sidecar_config();
    let sidecar = match Sidecar::start(&config) {
        Ok(sidecar) => sidecar,
        Err(error) => {
            eprintln!("rdma-sidecar: {error}");
            let code = match error {
                SidecarError::Attach { .. } => exit_code::ENGINE,
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
