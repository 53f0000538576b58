//! The engine daemon. Its read role serves local clients through
//! shared-memory rings; the binary (`rdma-engine`) is a thin wrapper over
//! [`run`].
//!
//! Threads: the control thread (this crate's [`control`]) owns the socket and
//! region lifecycles; the poller ([`poller`]) owns the data path.

pub mod allocator;
pub mod config;
pub mod config_file;
pub mod control;
pub mod execute;
pub mod logging;
pub mod metrics;
pub mod poller;
pub mod rdma;
pub mod read;
pub mod region;
pub mod security;
pub mod sigbus_guard;
pub mod startup;
pub mod stream;
pub mod supervise;
pub mod transport;

use config::{Config, ConfigError};
use poller::{Poller, PollerLink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use volume_format::index::OffsetWidth;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("another engine is already serving {0}")]
    SocketInUse(String),
    #[error("cannot prepare the control socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error(transparent)]
    Control(#[from] rdma_ipc::control::ControlError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the poller thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Read(#[from] read::ReadSetupError),
    #[error("cannot start the export role: {0}")]
    Export(#[from] rdma::export::ExportError),
    #[error("the poller thread ended before it started serving")]
    PollerDied,
    #[error("--security-toml: {0}")]
    Security(#[from] security::SecurityError),
    #[error(transparent)]
    Transport(#[from] transport::ChoiceError),
}

impl EngineError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Config(_) | EngineError::Security(_) | EngineError::Transport(_) => 2,
            EngineError::SocketInUse(_) | EngineError::Socket { .. } | EngineError::Control(_) => 3,
            EngineError::Read(_) | EngineError::Export(_) => 4,
            EngineError::Signals(_) | EngineError::Thread(_) | EngineError::PollerDied => 5,
        }
    }
}

/// Removes a stale socket file left by a dead engine; refuses if a live
/// engine still answers on it.
fn prepare_socket_path(config: &Config) -> Result<(), EngineError> {
    let path = &config.socket;
    if !path.exists() {
        return Ok(());
    }
    if rdma_ipc::control::connect_to(path).is_ok() {
        return Err(EngineError::SocketInUse(path.display().to_string()));
    }
    std::fs::remove_file(path).map_err(|source| EngineError::Socket { path: path.display().to_string(), source })
}

fn bind_control_socket(config: &Config) -> Result<std::os::fd::OwnedFd, EngineError> {
    prepare_socket_path(config)?;
    // The socket file is created 0600 (umask during bind): only the engine's
    // uid (and root) can connect; peer credentials are checked as well.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = rdma_ipc::control::listen_on(&config.socket, 64);
    nix::sys::stat::umask(previous);
    Ok(listener?)
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_err() || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err() {
        tracing::warn!(cpu, "cannot pin the poller; it runs unpinned");
    }
}

/// Starts the export role when `--export-dir`/`--listen` are given.
fn start_exporter(
    config: &Config,
    shutdown: &Arc<AtomicBool>,
) -> Result<Option<rdma::export::ExportHandle>, EngineError> {
    let Some(listen) = config.listen else { return Ok(None) };
    let width = if config.offset_bytes == 5 { OffsetWidth::Five } else { OffsetWidth::Four };
    let security = config.security_toml.as_deref().map(security::SecurityToml::load).transpose()?;
    let allowed_peers = (!config.allow_peer.is_empty()).then(|| config.allow_peer.clone());
    if config.transport != transport::TransportKind::Ucx {
        let tls = security.as_ref().and_then(|security| security.volume_tls.as_ref().map(|files| (security, files)));
        let tls = tls
            .map(|(security, files)| {
                stream::tls::server_config(files).map_err(|message| security::SecurityError::Tls {
                    path: security.path.display().to_string(),
                    message,
                })
            })
            .transpose()?;
        let stream_config = stream::export::StreamExportConfig {
            offset_width: width,
            read_key: security.and_then(|security| security.read_key),
            tls,
            allowed_peers,
            ..stream::export::StreamExportConfig::new(config.export_dir.clone(), listen)
        };
        let handle = stream::export::spawn(stream_config, shutdown.clone())?;
        tracing::info!(listen = %handle.local_addr(), transport = "stream", "export role serving");
        return Ok(Some(handle));
    }
    let read_key = security.as_ref().map(security::SecurityToml::read_key_for_ucx).transpose()?;
    let export_config = rdma::export::ExportConfig {
        offset_width: width,
        read_key,
        allowed_peers,
        idle_spin: std::time::Duration::from_micros(config.idle_spin_us),
        ..rdma::export::ExportConfig::new(config.export_dir.clone(), listen)
    };
    let handle = rdma::export::spawn(export_config, shutdown.clone())?;
    tracing::info!(listen = %handle.local_addr(), transport = "ucx", "export role serving");
    Ok(Some(handle))
}

/// Starts the poller thread. Its read transports are started on it (UCX
/// objects stay on one thread); the second value says whether they did.
fn spawn_poller(
    config: &Config,
    link: Arc<PollerLink>,
    read_setup: Option<read::ReadSetup>,
) -> Result<(std::thread::JoinHandle<()>, Result<(), EngineError>), EngineError> {
    let max_regions = config.max_clients as usize;
    let idle_spin = Duration::from_micros(config.idle_spin_us);
    let heartbeat = Duration::from_millis(config.heartbeat_ms);
    let poller_cpu = config.poller_cpu;
    let (started_sender, started_receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("poller".into())
        .spawn(move || {
            if let Some(cpu) = poller_cpu {
                pin_to_cpu(cpu);
            }
            // SAFETY: sched_getcpu has no arguments and no memory effects.
            let running_on = unsafe { libc::sched_getcpu() };
            tracing::info!(pinned = ?poller_cpu, running_on, "start-up report: poller CPU");
            let doorbell = link.clone();
            let wake: read::http::Waker = Arc::new(move || doorbell.ring_doorbell());
            let reads = match read_setup.map(|setup| setup.start(wake)).transpose() {
                Ok(reads) => reads,
                Err(error) => {
                    let _ = started_sender.send(Err(EngineError::Read(error)));
                    return;
                }
            };
            let _ = started_sender.send(Ok(()));
            Poller::new(link, execute::Executor::new(reads), idle_spin, heartbeat, max_regions).run()
        })
        .map_err(EngineError::Thread)?;
    let started = started_receiver.recv().unwrap_or(Err(EngineError::PollerDied));
    Ok((thread, started))
}

/// Decides the remote transport (`--transport`; one log line with the reason) and, with UCX,
/// keeps UCX to the `--listen` device. Call before any thread exists (it may set UCX's
/// environment).
fn choose_transport(config: &mut Config) -> Result<(), EngineError> {
    let remote_role = config.listen.is_some() || !config.peer.is_empty() || config.export_port.is_some();
    if !remote_role {
        config.transport = transport::TransportKind::Stream;
        return Ok(());
    }
    let devices = transport::verbs_devices(std::path::Path::new(transport::INFINIBAND_CLASS));
    let choice = transport::choose(
        config.transport,
        config.allow_ucx_software_rma,
        &devices,
        transport::probe_read_only_registration,
    )?;
    config.transport = choice.kind;
    match choice.kind {
        transport::TransportKind::Ucx => {
            let devices = transport::restrict_ucx_devices(config.listen);
            tracing::info!(transport = "ucx", why = %choice.why, %devices, "start-up report: remote transport");
        }
        _ => tracing::info!(transport = "stream", why = %choice.why, "start-up report: remote transport"),
    }
    Ok(())
}

/// Runs the engine until SIGTERM or SIGINT, then drains and returns.
pub fn run(mut config: Config) -> Result<(), EngineError> {
    allocator::keep_large_allocations_mapped();
    config.validate()?;
    choose_transport(&mut config)?;
    if !rdma_ipc::futex::waitv_supported() {
        tracing::warn!(
            "futex_waitv is not available (Linux 5.16+; this kernel answers ENOSYS): the poller sleeps on its \
             doorbell in slices of 1 ms instead of on every SQ tail, so an idle engine wakes 1000 times a second"
        );
    }
    startup::report(&config);
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone()).map_err(EngineError::Signals)?;
    }
    let read_setup = read::ReadSetup::from_config(&config)?;
    let exporter = start_exporter(&config, &shutdown)?;
    let listener = bind_control_socket(&config)?;
    if let Some(listen) = config.metrics_listen {
        let address = metrics::spawn_server(listen)
            .map_err(|source| EngineError::Socket { path: format!("metrics listener {listen}"), source })?;
        tracing::info!(%address, "metrics served at /metrics");
    }
    let engine_generation = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map(|now| now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 48);
    let max_regions = config.max_clients as usize;
    let link = Arc::new(PollerLink::new(max_regions));
    let (poller_thread, started) = spawn_poller(&config, link.clone(), read_setup)?;
    started?;
    tracing::info!(socket = %config.socket.display(), engine_generation, "engine serving");
    let mut server = control::ControlServer::new(listener, config.clone(), link.clone(), engine_generation);
    server.run(&shutdown);
    tracing::info!("shutdown requested; draining");
    link.shutdown.store(true, Ordering::Release);
    link.ring_doorbell();
    let _ = poller_thread.join();
    server.reclaim_released();
    if let Some(exporter) = exporter {
        if let Err(error) = exporter.join() {
            tracing::warn!(%error, "export role ended with an error");
        }
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("engine stopped");
    Ok(())
}
