use clap::Parser;

fn main() {
    let args = match rdma_engine::config_file::merge_config_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("rdma-engine: {error}");
            std::process::exit(2);
        }
    };
    let config = rdma_engine::config::Config::parse_from(args);
    if config.file.check_config {
        match config.validate() {
            Ok(()) => {
                print!("{}", rdma_engine::config_file::effective_toml(&config));
                std::process::exit(0);
            }
            Err(error) => {
                eprintln!("rdma-engine: {error}");
                std::process::exit(2);
            }
        }
    }
    if config.supervise && !rdma_engine::supervise::is_supervised_child() {
        // The child parses the same command line (and config file) again.
        rdma_engine::logging::init(config.log_format);
        std::process::exit(rdma_engine::supervise::run(std::env::args_os().collect()));
    }
    if config.listen.is_some() && std::env::var_os("UCX_TCP_CM_REUSEADDR").is_none() {
        // An exporter restarted on the same port must be able to bind it at
        // once; UCX 1.13 reads this only from the environment. Set before any
        // thread exists.
        std::env::set_var("UCX_TCP_CM_REUSEADDR", "y");
    }
    rdma_engine::rdma::set_ucx_environment_defaults();
    rdma_engine::logging::init(config.log_format);
    if let Err(error) = rdma_engine::run(config) {
        tracing::error!("{error}");
        eprintln!("rdma-engine: {error}");
        std::process::exit(error.exit_code());
    }
}
