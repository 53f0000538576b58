//! The export role: maps the volumes of some directories read-only, registers them with UCX,
//! answers catalogue requests, and keeps its worker progressing so peers' gets are served.
//!
//! Runs on its own thread with its own UCX context and worker ([`spawn`]). The loop is
//! event-driven: `Worker::wait` progresses until idle, arms the event fd and sleeps on it for
//! at most [`WAIT_TIMEOUT`]; every [`ExportConfig::rescan_interval`] it picks up grown, new,
//! replaced and removed volumes. A catalogue request refreshes the volumes it names first, so a
//! reader that missed in its index learns the current lengths (a request for every volume
//! rescans, at most every 100 ms).
//!
//! The directories are a live volume server's `-dir`. Only `[collection_]N.dat` with its
//! `.idx` is a volume; a volume's `.vif` must agree with the offset width and the super block,
//! else the volume is not exported (said once). A volume a vacuum replaces is exported anew,
//! with a new generation, only as a consistent pair (no compaction commit under way, the
//! `.idx` opened first still at its path); until then the old pair, still mapped, is served.
//!
//! `exporter` holds the thread's loop (connections, catalogue answers); `volumes` finds, maps,
//! refreshes and retires the exported volumes.

mod exporter;
mod volumes;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use volume_format::index::OffsetWidth;

use self::exporter::Exporter;
use super::{page_size_bytes, REGISTRATION_PIECE_MAX_BYTES};

/// Longest sleep on the event fd: bounds how late a stop request or a rescan is noticed.
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(10);
/// How long `spawn` waits for the thread to bind and register.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Most reader connections at once; more are rejected.
pub const CONNECTIONS_MAX: usize = 256;

/// What to export and how.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Directories holding SeaweedFS volumes (`[collection_]N.dat` + `.idx`).
    pub dirs: Vec<PathBuf>,
    /// Address the UCX listener binds (port 0: any free port, see [`ExportHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Width of the `.idx` offsets (the SeaweedFS build's), announced to readers.
    pub offset_width: OffsetWidth,
    /// Registration piece size: a multiple of the page size, at most 1 GiB.
    pub piece_size_bytes: u64,
    /// Address space reserved past a `.dat`'s length for growth (no memory is used).
    pub dat_headroom_bytes: u64,
    /// The same for `.idx` files.
    pub idx_headroom_bytes: u64,
    /// How often files are checked for growth and directories for new volumes.
    pub rescan_interval: Duration,
    /// How long superseded registrations and mappings are kept for late gets.
    pub retire_grace: Duration,
    /// UCX settings (`("TLS", "tcp")`), applied on top of the `UCX_*` environment.
    pub ucx: Vec<(String, String)>,
    /// Reader IP addresses allowed to connect through the listener (`None`: any). Any
    /// connected peer can read (and write) any address of this process: UCX 1.13 does not
    /// check rkeys on software-emulated gets. This list narrows who connects through the
    /// listener; it does not cover UCX's own transport ports. See "Security" in
    /// `docs/ucx-bindings.md`.
    pub allowed_peers: Option<Vec<IpAddr>>,
    /// SeaweedFS's read key: only a catalogue request carrying a token signed with it is
    /// answered (`None`: every request is).
    pub read_key: Option<crate::rdma::token::ReadKey>,
    /// Longest the worker spins on UCX progress before it sleeps on its event fd (adaptive:
    /// `rdma_ipc::spin`; zero never spins). Software gets are served only while it runs.
    pub idle_spin: Duration,
}

impl ExportConfig {
    pub fn new(dirs: Vec<PathBuf>, listen: SocketAddr) -> ExportConfig {
        ExportConfig {
            dirs,
            listen,
            offset_width: OffsetWidth::Four,
            piece_size_bytes: REGISTRATION_PIECE_MAX_BYTES,
            dat_headroom_bytes: 8 << 30,
            idx_headroom_bytes: 256 << 20,
            rescan_interval: Duration::from_secs(1),
            retire_grace: Duration::from_secs(30),
            ucx: Vec::new(),
            allowed_peers: None,
            read_key: None,
            idle_spin: Duration::ZERO,
        }
    }

    fn validate(&self) -> Result<(), ExportError> {
        let piece = self.piece_size_bytes;
        if piece == 0 || !piece.is_multiple_of(page_size_bytes()) || piece > REGISTRATION_PIECE_MAX_BYTES {
            return Err(ExportError::Config(format!(
                "piece size {piece} must be a multiple of the page size and at most 1 GiB"
            )));
        }
        if self.dirs.is_empty() {
            return Err(ExportError::Config("no export directory given".into()));
        }
        for dir in &self.dirs {
            if !dir.is_dir() {
                return Err(ExportError::Config(format!("{} is not a directory", dir.display())));
            }
        }
        if self.allowed_peers.as_ref().is_some_and(Vec::is_empty) {
            return Err(ExportError::Config("the allowed peer list is empty: no reader could connect".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export configuration: {0}")]
    Config(String),
    #[error("UCX setup for the export role failed: {0}")]
    Ucx(#[from] ucx::Error),
    #[error("cannot start the exporter thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    SigbusGuard(#[from] crate::sigbus_guard::InstallError),
    #[error("the exporter thread did not start within {SETUP_TIMEOUT:?}")]
    SetupTimeout,
    #[error("the exporter thread failed: {0}")]
    Failed(String),
    #[error("stream transport: {0}")]
    Stream(String),
}

/// A running exporter.
#[derive(Debug)]
pub struct ExportHandle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), ExportError>>>,
}

impl ExportHandle {
    /// A handle on an exporter thread that listens at `local_addr` and stops when `stop` is set.
    pub(crate) fn new(
        local_addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: thread::JoinHandle<Result<(), ExportError>>,
    ) -> ExportHandle {
        ExportHandle { local_addr, stop, thread: Some(thread) }
    }

    /// The address the listener is bound to (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the exporter (closing its connections and registrations) and waits for it.
    pub fn join(mut self) -> Result<(), ExportError> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> Result<(), ExportError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(ExportError::Failed("panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_wait() {
            tracing::warn!(%error, "exporter ended with an error");
        }
    }
}

/// Starts the exporter thread; returns once it listens with every volume registered. It runs
/// until `shutdown` is set or the handle is joined or dropped.
pub fn spawn(config: ExportConfig, shutdown: Arc<AtomicBool>) -> Result<ExportHandle, ExportError> {
    config.validate()?;
    spawn_thread(
        "rdma-export",
        shutdown,
        move || Exporter::new(config),
        |exporter| exporter.listener.local_addr().map_err(ExportError::from),
        |mut exporter, stop, shutdown| exporter.run(stop, shutdown),
    )
}

/// Starts an export role's thread: `start` builds its state on the thread (UCX objects may not
/// cross threads), `address` says where it listens, `run` serves until `stop` or `shutdown`.
/// Returns once it listens, or with the error it met on the way.
pub(crate) fn spawn_thread<X>(
    name: &str,
    shutdown: Arc<AtomicBool>,
    start: impl FnOnce() -> Result<X, ExportError> + Send + 'static,
    address: impl FnOnce(&X) -> Result<SocketAddr, ExportError> + Send + 'static,
    run: impl FnOnce(X, &AtomicBool, &AtomicBool) -> Result<(), ExportError> + Send + 'static,
) -> Result<ExportHandle, ExportError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_sender, ready_receiver) = mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let exporter = match start() {
                Ok(exporter) => exporter,
                Err(error) => {
                    let _ = ready_sender.send(Err(error));
                    return Ok(());
                }
            };
            let _ = ready_sender.send(address(&exporter));
            run(exporter, &thread_stop, &shutdown)
        })
        .map_err(ExportError::Thread)?;
    let local_addr = match ready_receiver.recv_timeout(SETUP_TIMEOUT) {
        Ok(Ok(address)) => address,
        Ok(Err(error)) => {
            let _ = thread.join();
            return Err(error);
        }
        Err(_) => {
            stop.store(true, Ordering::Release);
            return Err(ExportError::SetupTimeout);
        }
    };
    Ok(ExportHandle::new(local_addr, stop, thread))
}
