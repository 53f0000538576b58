//! The export role: maps the volumes of some directories read-only, registers them with UCX,
//! answers catalogue requests, and keeps its worker progressing so peers' gets are served.
//!
//! Runs on its own thread with its own UCX context and worker ([`spawn`]). The loop is
//! event-driven: `Worker::wait` progresses until idle, arms the event fd and sleeps on it for
//! at most [`WAIT_TIMEOUT`]; every [`ExportConfig::rescan_interval`] it picks up grown, new,
//! replaced and removed volumes. A catalogue request refreshes the volumes it names first, so a
//! reader that missed in its index learns the current lengths.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ucx::{CloseMode, Context, Endpoint, EndpointId, ErrorMode, Listener, Worker, WorkerConfig};
use volume_format::index::OffsetWidth;
use volume_format::superblock::{SuperBlock, SUPER_BLOCK_SIZE_BYTES};

use super::catalogue::{
    Catalogue, CatalogueRequest, VolumeEntry, AM_CATALOGUE, AM_CATALOGUE_REQUEST, PROTOCOL_VERSION,
};
use super::mapping::{FileMap, MapError, MapSettings, Retired};
use super::{features, page_size_bytes, ucx_overrides, REGISTRATION_PIECE_MAX_BYTES};

/// Longest sleep on the event fd: bounds how late a stop request or a rescan is noticed.
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(10);
/// How long `spawn` waits for the thread to bind and register.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Most reader connections at once; more are rejected.
pub const CONNECTIONS_MAX: usize = 256;
/// How long closing the endpoints may take at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest catalogue answer (about 200 bytes per piece).
const CATALOGUE_PAYLOAD_MAX_BYTES: usize = 64 << 20;

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
    #[error("the exporter thread did not start within {SETUP_TIMEOUT:?}")]
    SetupTimeout,
    #[error("the exporter thread failed: {0}")]
    Failed(String),
}

/// A running exporter.
#[derive(Debug)]
pub struct ExportHandle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), ExportError>>>,
}

impl ExportHandle {
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
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_sender, ready_receiver) = mpsc::channel();
    let thread_stop = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("rdma-export".into())
        .spawn(move || {
            let mut exporter = match Exporter::new(config) {
                Ok(exporter) => exporter,
                Err(error) => {
                    let _ = ready_sender.send(Err(error));
                    return Ok(());
                }
            };
            let _ = ready_sender.send(exporter.listener.local_addr().map_err(ExportError::from));
            exporter.run(&thread_stop, &shutdown)
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
    Ok(ExportHandle { local_addr, stop, thread: Some(thread) })
}

/// One exported volume.
#[derive(Debug)]
struct VolumeExport {
    dat: FileMap,
    idx: FileMap,
    version: u8,
    generation: u64,
}

struct Exporter {
    config: ExportConfig,
    // Field order is drop order: connections, then registrations, then UCX itself.
    endpoints: HashMap<EndpointId, Endpoint>,
    volumes: BTreeMap<u32, VolumeExport>,
    retired: Vec<Retired>,
    listener: Listener,
    worker: Worker,
    context: Context,
    exporter_id: u64,
    last_scan: Instant,
}

impl Exporter {
    fn new(config: ExportConfig) -> Result<Exporter, ExportError> {
        // A restarted exporter binds its port again only with UCX_TCP_CM_REUSEADDR=y in the
        // environment (connections of the previous process linger in TIME_WAIT); UCX 1.13 does
        // not apply that setting through ucp_config_modify, so it cannot be forced from here.
        let context = Context::with_config(features(), &ucx_overrides(&config.ucx))?;
        let worker_config = WorkerConfig { max_in_flight: 16, am_queue_capacity: 256, am_payload_max_bytes: 64 << 10 };
        let worker = Worker::new(&context, worker_config)?;
        worker.set_am_handler(AM_CATALOGUE_REQUEST)?;
        let listener = Listener::bind(&worker, config.listen)?;
        let mut exporter = Exporter {
            config,
            endpoints: HashMap::new(),
            volumes: BTreeMap::new(),
            retired: Vec::new(),
            listener,
            worker,
            context,
            exporter_id: exporter_id(),
            last_scan: Instant::now(),
        };
        exporter.scan();
        tracing::info!(volumes = exporter.volumes.len(), "export role ready");
        Ok(exporter)
    }

    fn run(&mut self, stop: &AtomicBool, shutdown: &AtomicBool) -> Result<(), ExportError> {
        while !stop.load(Ordering::Acquire) && !shutdown.load(Ordering::Relaxed) {
            self.worker.wait(WAIT_TIMEOUT)?;
            self.accept_connections();
            while let Some(message) = self.worker.pop_am_message() {
                self.answer(message);
            }
            self.drop_failed_endpoints();
            if self.last_scan.elapsed() >= self.config.rescan_interval {
                self.scan();
            }
            let grace = self.config.retire_grace;
            self.retired.retain(|retired| retired.since.elapsed() < grace);
        }
        for (_, endpoint) in self.endpoints.drain() {
            let _ = endpoint.close_with(CloseMode::Flush, CLOSE_TIMEOUT);
        }
        Ok(())
    }

    fn accept_connections(&mut self) {
        while let Some(request) = self.listener.next_request() {
            if self.endpoints.len() >= CONNECTIONS_MAX {
                tracing::warn!(limit = CONNECTIONS_MAX, "rejecting a reader: too many connections");
                continue; // dropping the request rejects it
            }
            match Endpoint::accept(&self.worker, request, ErrorMode::Peer) {
                Ok(endpoint) => {
                    self.endpoints.insert(endpoint.id(), endpoint);
                }
                Err(error) => tracing::warn!(%error, "cannot accept a reader"),
            }
        }
    }

    fn drop_failed_endpoints(&mut self) {
        let failed: Vec<EndpointId> =
            self.endpoints.iter().filter(|(_, endpoint)| endpoint.is_failed()).map(|(id, _)| *id).collect();
        for id in failed {
            if let Some(endpoint) = self.endpoints.remove(&id) {
                let _ = endpoint.close_with(CloseMode::Force, CLOSE_TIMEOUT);
            }
        }
    }

    fn answer(&mut self, message: ucx::AmMessage) {
        let Some(endpoint_id) = message.endpoint else { return };
        let request = match CatalogueRequest::decode(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "ignoring a bad catalogue request");
                return;
            }
        };
        let complete = request.volumes.is_none();
        match &request.volumes {
            None => self.scan(),
            Some(ids) => {
                for id in ids.iter().take(super::catalogue::REQUEST_VOLUMES_MAX) {
                    self.refresh_volume(*id);
                }
            }
        }
        let wanted = |id: &u32| request.volumes.as_ref().is_none_or(|ids| ids.contains(id));
        let volumes = self
            .volumes
            .iter()
            .filter(|(id, _)| wanted(id))
            .map(|(&volume_id, volume)| VolumeEntry {
                volume_id,
                generation: volume.generation,
                version: volume.version,
                offset_size_bytes: self.config.offset_width.offset_size_bytes() as u8,
                dat: volume.dat.entry(),
                idx: volume.idx.entry(),
            })
            .collect();
        let catalogue = Catalogue {
            protocol_version: PROTOCOL_VERSION,
            request_id: request.request_id,
            exporter_id: self.exporter_id,
            complete,
            volumes,
        };
        let payload = catalogue.encode();
        if payload.len() > CATALOGUE_PAYLOAD_MAX_BYTES {
            tracing::warn!(bytes = payload.len(), "catalogue too large to send");
            return;
        }
        if let Some(endpoint) = self.endpoints.get(&endpoint_id) {
            if let Err(error) = endpoint.am_send(AM_CATALOGUE, &[], &payload) {
                tracing::debug!(%error, "cannot send a catalogue");
            }
        }
    }

    /// Picks up new, grown, replaced and removed volumes in every directory.
    fn scan(&mut self) {
        self.last_scan = Instant::now();
        let found = find_volumes(&self.config.dirs);
        let gone: Vec<u32> = self.volumes.keys().filter(|id| !found.contains_key(id)).copied().collect();
        for id in gone {
            self.retire_volume(id);
        }
        for (id, paths) in found {
            if self.volumes.contains_key(&id) {
                self.refresh_volume(id);
            } else {
                self.open_volume(id, &paths.0, &paths.1);
            }
        }
    }

    fn refresh_volume(&mut self, id: u32) {
        let Some(volume) = self.volumes.get_mut(&id) else { return };
        if !volume.dat.still_at_path() || !volume.idx.still_at_path() {
            let paths = (volume.dat_path(), volume.idx_path());
            self.retire_volume(id);
            tracing::info!(volume = id, "exported volume replaced; exporting the new files");
            self.open_volume(id, &paths.0, &paths.1);
            return;
        }
        // The .idx first: every entry it holds then points inside the .dat length read after it.
        let refreshed = volume
            .idx
            .refresh(&self.context, &mut self.retired)
            .and_then(|()| volume.dat.refresh(&self.context, &mut self.retired));
        match refreshed {
            Ok(()) => {}
            Err(MapError::Outgrown { .. }) => {
                let paths = (volume.dat_path(), volume.idx_path());
                self.retire_volume(id);
                self.open_volume(id, &paths.0, &paths.1);
            }
            Err(error) => {
                tracing::warn!(volume = id, %error, "cannot refresh an exported volume; withdrawing it");
                self.retire_volume(id);
            }
        }
    }

    fn retire_volume(&mut self, id: u32) {
        if let Some(volume) = self.volumes.remove(&id) {
            volume.dat.retire(&mut self.retired);
            volume.idx.retire(&mut self.retired);
        }
    }

    fn open_volume(&mut self, id: u32, dat_path: &Path, idx_path: &Path) {
        let dat_settings = MapSettings {
            piece_size_bytes: self.config.piece_size_bytes,
            headroom_bytes: self.config.dat_headroom_bytes,
        };
        let idx_settings = MapSettings { headroom_bytes: self.config.idx_headroom_bytes, ..dat_settings };
        // The .idx first, as in refresh_volume.
        let opened = FileMap::open(idx_path, &self.context, idx_settings)
            .and_then(|idx| Ok((FileMap::open(dat_path, &self.context, dat_settings)?, idx)));
        let (dat, idx) = match opened {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(volume = id, %error, "cannot export a volume");
                return;
            }
        };
        // A .dat still being created has no complete super block yet: try again next scan.
        let Some(super_block) = read_super_block(&dat) else {
            dat.retire(&mut self.retired);
            idx.retire(&mut self.retired);
            return;
        };
        let generation = generation(&dat, &idx, super_block.compaction_revision);
        let version = super_block.version.as_byte();
        self.volumes.insert(id, VolumeExport { dat, idx, version, generation });
    }
}

impl VolumeExport {
    fn dat_path(&self) -> PathBuf {
        self.dat.path().to_path_buf()
    }

    fn idx_path(&self) -> PathBuf {
        self.idx.path().to_path_buf()
    }
}

fn read_super_block(dat: &FileMap) -> Option<SuperBlock> {
    let fixed = dat.read_prefix(SUPER_BLOCK_SIZE_BYTES)?.to_vec();
    let extra = SuperBlock::extra_size_bytes(&fixed).ok()?;
    let whole = dat.read_prefix(SUPER_BLOCK_SIZE_BYTES + extra)?.to_vec();
    SuperBlock::parse(&whole).ok()
}

/// Changes when either file is replaced or the volume is compacted: FNV-1a of the files'
/// device and inode numbers and the compaction revision.
fn generation(dat: &FileMap, idx: &FileMap, compaction_revision: u16) -> u64 {
    let mut hasher = Fnv1a::default();
    for value in [dat.identity.0, dat.identity.1, idx.identity.0, idx.identity.1, u64::from(compaction_revision)] {
        hasher.write_u64(value);
    }
    hasher.finish()
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A random id for this exporter process (time and pid).
fn exporter_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    let mut hasher = Fnv1a::default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Volumes in `dirs`: id → (.dat, .idx). The first directory wins a duplicate id.
fn find_volumes(dirs: &[PathBuf]) -> BTreeMap<u32, (PathBuf, PathBuf)> {
    let mut found = BTreeMap::new();
    for dir in dirs {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot list an export directory");
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = volume_id_of(&path) else { continue };
            let idx = path.with_extension("idx");
            if idx.is_file() {
                found.entry(id).or_insert((path, idx));
            }
        }
    }
    found
}

/// The volume id of `[collection_]N.dat`.
pub fn volume_id_of(path: &Path) -> Option<u32> {
    if path.extension()? != "dat" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let digits = stem.rsplit('_').next()?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_follow_seaweedfs_names() {
        assert_eq!(volume_id_of(Path::new("/v/3.dat")), Some(3));
        assert_eq!(volume_id_of(Path::new("/v/pictures_17.dat")), Some(17));
        assert_eq!(volume_id_of(Path::new("/v/a_b_9.dat")), Some(9));
        assert_eq!(volume_id_of(Path::new("/v/3.idx")), None);
        assert_eq!(volume_id_of(Path::new("/v/3.cpd")), None);
        assert_eq!(volume_id_of(Path::new("/v/healthy_volume.dat")), None);
        assert_eq!(volume_id_of(Path::new("/v/_.dat")), None);
    }
}
