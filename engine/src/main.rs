use clap::Parser;

fn main() {
    let config = rdma_engine::config::Config::parse();
    if config.listen.is_some() && std::env::var_os("UCX_TCP_CM_REUSEADDR").is_none() {
        // An exporter restarted on the same port must be able to bind it at
        // once; UCX 1.13 reads this only from the environment. Set before any
        // thread exists.
        std::env::set_var("UCX_TCP_CM_REUSEADDR", "y");
    }
    rdma_engine::logging::init(config.log_format);
    if let Err(error) = rdma_engine::run(config) {
        tracing::error!("{error}");
        eprintln!("rdma-engine: {error}");
        std::process::exit(error.exit_code());
    }
}
