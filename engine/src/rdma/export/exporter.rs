//! The exporter thread's state and loop: accept connections (checked against the allowed
//! peers), answer catalogue requests and needle lookups, drop failed endpoints, rescan now
//! and then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ucx::{CloseMode, ConnRequest, Context, Endpoint, EndpointId, ErrorMode, Listener, Worker, WorkerConfig};

use super::volumes::{Fnv1a, VolumeExport};
use super::{ExportConfig, ExportError, CONNECTIONS_MAX, WAIT_TIMEOUT};
use crate::rdma::catalogue::{
    Catalogue, CatalogueRequest, VolumeEntry, AM_CATALOGUE, AM_CATALOGUE_REQUEST, PROTOCOL_VERSION, REQUEST_VOLUMES_MAX,
};
use crate::rdma::lookup::{LookupRequest, LookupStatus, AM_LOOKUP, AM_LOOKUP_REQUEST};
use crate::rdma::mapping::Retired;
use crate::rdma::{features, ucx_overrides};
use crate::read::local::{LocalVolumes, Refusals};
use crate::sigbus_guard;
use rdma_ipc::spin::SpinPolicy;
use shm_layout::entry::ErrorCode;

/// How long closing the endpoints may take at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Least time between two directory scans that whole-catalogue requests cause.
const REQUEST_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Reasons a token is refused ([`crate::rdma::token::TokenError`] variants).
const TOKEN_REFUSALS: usize = 4;
const _: () = assert!(crate::rdma::token::TokenError::Expired as usize + 1 == TOKEN_REFUSALS, "Expired is the last");
/// Largest catalogue answer (about 200 bytes per piece).
const CATALOGUE_PAYLOAD_MAX_BYTES: usize = 64 << 20;
/// Messages waiting to be answered at most (past it UCX's arrivals are dropped and counted:
/// a reader whose lookup is dropped asks again). Room for a few readers' lookups at depth.
const AM_INBOX_CAPACITY: usize = 4096;

/// Everything the exporter thread owns; `volumes` (in `volumes.rs`) and `spawn` reach into it.
pub(super) struct Exporter {
    pub(super) config: ExportConfig,
    // Field order is drop order: connections, then registrations, then UCX itself.
    endpoints: HashMap<EndpointId, Endpoint>,
    /// Where each reader connected from (for the log).
    peer_addresses: HashMap<EndpointId, String>,
    pub(super) volumes: BTreeMap<u32, VolumeExport>,
    /// The same volumes' compact indexes, for needle lookups (`read::local`'s, the stream
    /// exporter's too): a reader asks where a needle lies instead of pulling the `.idx`.
    pub(super) lookups: LocalVolumes,
    /// Endpoints whose catalogue request carried a valid read token (kept only with a read
    /// key): only they are answered lookups.
    admitted: HashSet<EndpointId>,
    pub(super) retired: Vec<Retired>,
    pub(super) listener: Listener,
    worker: Worker,
    pub(super) context: Context,
    exporter_id: u64,
    pub(super) last_scan: Instant,
    /// Connection requests refused by `allowed_peers` (logged at powers of two).
    refused_peers: u64,
    /// Catalogue requests refused for their token, by why (each logged at powers of two).
    refused_tokens: [u64; TOKEN_REFUSALS],
    /// Volumes seen and not exported, so each is said once.
    pub(super) refusals: Refusals,
    /// Bumped whenever [`Exporter::catalogue_fingerprint`] changes; sent with every catalogue.
    catalogue_generation: u64,
    catalogue_fingerprint: u64,
}

impl Exporter {
    pub(super) fn new(config: ExportConfig) -> Result<Exporter, ExportError> {
        // A restarted exporter binds its port again only with UCX_TCP_CM_REUSEADDR=y in the
        // environment (connections of the previous process linger in TIME_WAIT); UCX 1.13 does
        // not apply that setting through ucp_config_modify, so it cannot be forced from here.
        let context = Context::with_config(features(), &ucx_overrides(&config.ucx))?;
        let lookups = LocalVolumes::load_quietly(&config.dirs, config.offset_width).map_err(|(dir, error)| {
            ExportError::Config(format!("cannot read export directory {}: {error}", dir.display()))
        })?;
        let worker_config =
            WorkerConfig { max_in_flight: 16, am_queue_capacity: AM_INBOX_CAPACITY, am_payload_max_bytes: 64 << 10 };
        let worker = Worker::new(&context, worker_config)?;
        // After UCX's own SIGBUS handler (faults that are not past a file's end go to it).
        sigbus_guard::install()?;
        worker.set_am_handler(AM_CATALOGUE_REQUEST)?;
        worker.set_am_handler(AM_LOOKUP_REQUEST)?;
        let listener = Listener::bind(&worker, config.listen)?;
        let mut exporter = Exporter {
            config,
            endpoints: HashMap::new(),
            peer_addresses: HashMap::new(),
            volumes: BTreeMap::new(),
            lookups,
            admitted: HashSet::new(),
            retired: Vec::new(),
            listener,
            worker,
            context,
            exporter_id: exporter_id(),
            last_scan: Instant::now(),
            refused_peers: 0,
            refused_tokens: [0; TOKEN_REFUSALS],
            refusals: Refusals::default(),
            catalogue_generation: 0,
            catalogue_fingerprint: 0,
        };
        exporter.scan();
        tracing::info!(volumes = exporter.volumes.len(), "export role ready");
        exporter.warn_about_exposure();
        Ok(exporter)
    }

    pub(super) fn run(&mut self, stop: &AtomicBool, shutdown: &AtomicBool) -> Result<(), ExportError> {
        let mut spin = SpinPolicy::new(self.config.idle_spin);
        while !stop.load(Ordering::Acquire) && !shutdown.load(Ordering::Relaxed) {
            self.spin_then_wait(&mut spin)?;
            self.accept_connections();
            // Bounded by the inbox's capacity.
            while let Some(message) = self.worker.pop_am_message() {
                match message.id {
                    AM_LOOKUP_REQUEST => self.answer_lookup(message),
                    _ => self.answer(message),
                }
            }
            self.drop_failed_endpoints();
            let zeroed_pages = sigbus_guard::take_zeroed_pages();
            if zeroed_pages > 0 {
                tracing::warn!(zeroed_pages, "gets touched pages past the end of an exported file that shrank; they read zeros, and the volumes are refreshed now");
                self.scan();
            } else if self.last_scan.elapsed() >= self.config.rescan_interval {
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

    /// Progresses UCX while spinning pays (a reader's next get comes within the window), then
    /// sleeps on the worker's event fd.
    fn spin_then_wait(&mut self, policy: &mut SpinPolicy) -> Result<(), ExportError> {
        let now_ns = rdma_ipc::clock::monotonic_ns;
        let mut spin = policy.begin(now_ns(), 0);
        // Bounded by the spin window (at most --idle-spin-us).
        while policy.keep_spinning(&mut spin, now_ns(), 0) {
            if self.worker.progress() > 0 {
                policy.won(Some(&spin), now_ns());
                return Ok(());
            }
        }
        let slept_from = now_ns();
        self.worker.wait(WAIT_TIMEOUT)?;
        policy.slept(&spin, now_ns().saturating_sub(slept_from));
        Ok(())
    }

    fn accept_connections(&mut self) {
        while let Some(request) = self.listener.next_request() {
            if self.endpoints.len() >= CONNECTIONS_MAX {
                tracing::warn!(limit = CONNECTIONS_MAX, "rejecting a reader: too many connections");
                continue; // dropping the request rejects it
            }
            if !self.admits(&request) {
                continue; // rejected, as above
            }
            let address =
                request.remote_addr().map_or_else(|_| "an unknown address".to_string(), |address| address.to_string());
            match Endpoint::accept(&self.worker, request, ErrorMode::Peer) {
                Ok(endpoint) => {
                    self.peer_addresses.insert(endpoint.id(), address);
                    self.endpoints.insert(endpoint.id(), endpoint);
                }
                Err(error) => tracing::warn!(%error, "cannot accept a reader"),
            }
        }
    }

    /// Says at start what the operator must confine (see "Security" in `docs/ucx-bindings.md`):
    /// any connected peer can read and write this process's memory, and UCX's transports
    /// listen on every network device unless `NET_DEVICES` names some.
    fn warn_about_exposure(&self) {
        let devices_named = std::env::var_os("UCX_NET_DEVICES").is_some()
            || self.config.ucx.iter().any(|(name, _)| name == "NET_DEVICES");
        if !devices_named {
            tracing::warn!(
                "UCX_NET_DEVICES is not set: UCX also accepts connections on every network device, whatever --listen says"
            );
        }
        if self.config.allowed_peers.is_none() {
            tracing::warn!("no allowed peer list: any host that can connect can read and write this process's memory");
        }
    }

    /// Whether `allowed_peers` lets the requester in. A refusal is logged at powers of two
    /// only: a peer can trigger it at will.
    fn admits(&mut self, request: &ConnRequest) -> bool {
        let Some(allowed) = &self.config.allowed_peers else { return true };
        let address = request.remote_addr();
        if let Ok(address) = &address {
            let ip = address.ip().to_canonical();
            if allowed.iter().any(|allowed| allowed.to_canonical() == ip) {
                return true;
            }
        }
        self.refused_peers += 1;
        if self.refused_peers.is_power_of_two() {
            match address {
                Ok(address) => {
                    tracing::warn!(peer = %address, refused = self.refused_peers, "refusing a reader not in the allowed peers")
                }
                Err(error) => {
                    tracing::warn!(%error, refused = self.refused_peers, "refusing a reader whose address is unknown")
                }
            }
        }
        false
    }

    /// Whether a catalogue request's token lets its reader in (always, without a read key).
    /// A refused reader is disconnected before any catalogue or rkey leaves; the refusal is
    /// logged at powers of two of each reason (a peer can trigger it at will), naming the peer.
    fn token_admits(&mut self, endpoint_id: EndpointId, token: Option<&str>) -> bool {
        let Some(key) = &self.config.read_key else { return true };
        let Err(error) = key.verify(token, std::time::SystemTime::now()) else {
            self.admitted.insert(endpoint_id);
            return true;
        };
        self.admitted.remove(&endpoint_id);
        let refused = &mut self.refused_tokens[error as usize];
        *refused += 1;
        let peer = self.peer_addresses.remove(&endpoint_id).unwrap_or_else(|| "an unknown address".into());
        if refused.is_power_of_two() {
            tracing::warn!(%peer, %error, refused = *refused, "refusing a reader without a valid read token");
        }
        if let Some(endpoint) = self.endpoints.remove(&endpoint_id) {
            let _ = endpoint.close_with(CloseMode::Force, CLOSE_TIMEOUT);
        }
        false
    }

    /// Sends an answer on a reader's endpoint, if it is still connected; a failed send is
    /// the endpoint's failure, dropped with it.
    fn send(&self, endpoint_id: EndpointId, id: u16, payload: &[u8]) {
        if let Some(endpoint) = self.endpoints.get(&endpoint_id) {
            if let Err(error) = endpoint.am_send(id, &[], payload) {
                tracing::debug!(%error, message = id, "cannot send an answer");
            }
        }
    }

    fn drop_failed_endpoints(&mut self) {
        let failed: Vec<EndpointId> =
            self.endpoints.iter().filter(|(_, endpoint)| endpoint.is_failed()).map(|(id, _)| *id).collect();
        for id in failed {
            self.peer_addresses.remove(&id);
            self.admitted.remove(&id);
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
        if !self.token_admits(endpoint_id, request.token.as_deref()) {
            return;
        }
        let complete = request.volumes.is_none();
        match &request.volumes {
            // Every reader asks for everything about once a second: one scan serves them all.
            None if self.last_scan.elapsed() < REQUEST_SCAN_INTERVAL => {}
            None => self.scan(),
            Some(ids) => {
                for id in ids.iter().take(REQUEST_VOLUMES_MAX) {
                    self.refresh_volume(*id);
                }
            }
        }
        self.note_catalogue_changes();
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
            generation: self.catalogue_generation,
            complete,
            volumes,
        };
        let payload = catalogue.encode();
        if payload.len() > CATALOGUE_PAYLOAD_MAX_BYTES {
            tracing::warn!(bytes = payload.len(), "catalogue too large to send");
            return;
        }
        self.send(endpoint_id, AM_CATALOGUE, &payload);
    }
}

impl Exporter {
    /// Answers a reader's needle lookup from the compact index. Refused for a connection
    /// that has not shown a valid read token (when there is a read key); a bad message is
    /// ignored (the reader's lookup times out, as for a lost one).
    fn answer_lookup(&mut self, message: ucx::AmMessage) {
        let Some(endpoint_id) = message.endpoint else { return };
        let request = match LookupRequest::decode(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "ignoring a bad lookup request");
                return;
            }
        };
        let answer = if self.config.read_key.is_some() && !self.admitted.contains(&endpoint_id) {
            request.answer(LookupStatus::Refused)
        } else {
            self.look_up(&request)
        };
        self.send(endpoint_id, AM_LOOKUP, &answer.encode());
    }

    /// Where the needle lies in the exported `.dat`. The index is of the file the export
    /// mapped, or the answer says the volume was replaced (a vacuum between the two opens):
    /// an offset into other files than the reader's rkeys address is never given.
    fn look_up(&mut self, request: &LookupRequest) -> crate::rdma::lookup::LookupAnswer {
        let Some(export) = self.volumes.get(&request.volume_id) else {
            return request.answer(LookupStatus::NoSuchVolume);
        };
        match self.lookups.locate_shared(request.volume_id, request.needle_id, Instant::now()) {
            Ok((location, _, _)) => {
                // The located volume is the one served now (the lookup just refreshed it).
                if self.lookups.dat_identity(request.volume_id) != Some(export.dat.identity) {
                    return request.answer(LookupStatus::Replaced);
                }
                crate::rdma::lookup::LookupAnswer {
                    generation: export.generation,
                    offset_bytes: location.offset_bytes,
                    size: location.size,
                    ..request.answer(LookupStatus::Found)
                }
            }
            Err((ErrorCode::NO_SUCH_NEEDLE, _)) => request.answer(LookupStatus::NoSuchNeedle),
            Err((ErrorCode::DELETED, _)) => request.answer(LookupStatus::Deleted),
            // Exported, and not (yet) in the lookup index, or unreadable there: the reader
            // asks for the catalogue again and then once more.
            Err(_) => request.answer(LookupStatus::Replaced),
        }
    }

    /// Bumps the catalogue generation when what a catalogue lists changed since the last look,
    /// and publishes it to the metrics. Called after every scan and before every answer.
    pub(super) fn note_catalogue_changes(&mut self) {
        let fingerprint = self.catalogue_fingerprint();
        if fingerprint != self.catalogue_fingerprint || self.catalogue_generation == 0 {
            self.catalogue_fingerprint = fingerprint;
            self.catalogue_generation += 1;
            crate::metrics::METRICS.set_export_catalogue_generation(self.catalogue_generation);
        }
    }

    /// FNV-1a of every exported volume's id, generation, version and file lengths.
    fn catalogue_fingerprint(&self) -> u64 {
        let mut hasher = Fnv1a::default();
        for (&id, volume) in &self.volumes {
            hasher.write_u32(id);
            hasher.write_u64(volume.generation);
            hasher.write_u8(volume.version);
            hasher.write_u64(volume.dat.length_bytes);
            hasher.write_u64(volume.idx.length_bytes);
        }
        hasher.finish()
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
