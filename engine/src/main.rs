use clap::Parser;

fn main() {
    let config = rdma_engine::config::Config::parse();
    rdma_engine::logging::init(config.log_format);
    if let Err(error) = rdma_engine::run(config) {
        tracing::error!("{error}");
        eprintln!("rdma-engine: {error}");
        std::process::exit(error.exit_code());
    }
}
