//! What the engine counts, and `/metrics` in the Prometheus text format
//! (`--metrics-listen HOST:PORT`).
//!
//! The data path never takes a lock for a metric: every counter is an atomic in one static
//! block, written by one thread (the poller, except the client gauges the control thread
//! keeps), with a relaxed load and store. The metrics thread reads them when scraped and
//! encodes them with `prometheus-client`. Two names are a contract other tooling relies on:
//! `seaweedfs_rdma_reads_total{source="local|rdma|http|stream"}` (every read the engine completed,
//! by the path that served it) and `seaweedfs_rdma_errors_total{code="…"}` (every error
//! completion, by its name in the code table).
//!
//! Three things are not counters of one thread, and are published off the data path instead:
//! reads in flight per queue pair are read at scrape time from the regions' shared stats blocks
//! (the control thread lists the attached regions here when one attaches or is reclaimed, so a
//! client's series go with its region); reads by volume and the catalogue generation seen per
//! exporter are snapshots the poller publishes about once a second, skipping a second when a
//! scrape holds the snapshot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use shm_layout::entry::{cqe_flags, Cqe, ErrorCode};

use crate::read::FallbackReason;
use crate::region::RegionMemory;

/// Counters kept per source value (`cqe_flags::SOURCE_MASK` + 1).
const SOURCE_SLOTS: usize = cqe_flags::SOURCE_MASK as usize + 1;
/// Read sources, by their `cqe_flags::SOURCE_*` value.
const SOURCES: [(u32, &str); 4] = [
    (cqe_flags::SOURCE_LOCAL, "local"),
    (cqe_flags::SOURCE_RDMA, "rdma"),
    (cqe_flags::SOURCE_HTTP, "http"),
    (cqe_flags::SOURCE_STREAM, "stream"),
];
/// Room for error codes -1 ..= -ERROR_SLOTS.
const ERROR_SLOTS: usize = 64;
/// Latency buckets: the upper bound of bucket `i` is 2^i µs (1 µs .. ~16 s), then +Inf.
const LATENCY_BUCKETS: usize = 25;
/// Fallback reasons, in [`fallback_index`] order.
const FALLBACK_REASONS: [&str; 4] = ["no_exporter", "peer_unavailable", "check_failed", "other"];
/// Index refresh reasons, in [`IndexRefresh`] order.
const INDEX_REFRESH_REASONS: [&str; 3] = ["opened", "appended", "replaced"];

/// Why a local volume's index was loaded or replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexRefresh {
    /// A volume found in a directory was opened and its whole `.idx` loaded.
    Opened = 0,
    /// Entries appended to a served volume's `.idx` were applied.
    Appended = 1,
    /// A volume's files were replaced (vacuum, copy) and the new pair loaded.
    Replaced = 2,
}

/// One latency histogram, written by the poller.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    const fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS + 1],
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn record(&self, latency_ns: u64) {
        let micros = latency_ns.div_ceil(1000).max(1);
        let bucket = ((u64::BITS - (micros - 1).leading_zeros()) as usize).min(LATENCY_BUCKETS);
        bump(&self.buckets[bucket], 1);
        bump(&self.sum_ns, latency_ns);
        bump(&self.count, 1);
    }
}

/// Every counter of the engine.
#[derive(Debug)]
pub struct EngineMetrics {
    reads: [AtomicU64; SOURCE_SLOTS],
    read_bytes: [AtomicU64; SOURCE_SLOTS],
    errors: [AtomicU64; ERROR_SLOTS],
    fallbacks: [AtomicU64; FALLBACK_REASONS.len()],
    latency: [LatencyHistogram; SOURCE_SLOTS],
    reads_in_flight: AtomicU64,
    lookups: AtomicU64,
    /// Written by the control thread.
    pub attached_clients: AtomicU64,
    /// Written by the poller.
    fenced_clients: AtomicU64,
    /// Regions backed by huge pages (control thread).
    pub hugepage_regions: AtomicU64,
    peers_up: AtomicU64,
    peers_down: AtomicU64,
    local_index_bytes: AtomicU64,
    remote_index_bytes: AtomicU64,
    remote_index_evictions: AtomicU64,
    /// Needles looked up by a UCX exporter for this reader (poller).
    remote_needle_lookups: AtomicU64,
    /// Local index loads by [`IndexRefresh`] (poller).
    index_refreshes: [AtomicU64; INDEX_REFRESH_REASONS.len()],
    /// The export role's catalogue generation (its thread): bumped whenever what a catalogue
    /// would list changes (a volume added, grown, replaced or withdrawn).
    export_catalogue_generation: AtomicU64,
    /// Reads and data bytes by volume, as the poller last published them (about once a
    /// second, off the data path: the poller counts in a map of its own).
    by_volume: Mutex<Vec<(u32, u64, u64)>>,
    /// The catalogue generation each exporter last announced (poller, about once a second).
    peer_generations: Mutex<Vec<(String, u64)>>,
    /// The attached regions (control thread, on attach and reclaim): their stats blocks hold
    /// each queue pair's reads in flight. Only the control thread drops these `Arc`s.
    regions: Mutex<Vec<Arc<RegionMemory>>>,
}

/// The engine's metrics (one engine per process).
pub static METRICS: EngineMetrics = EngineMetrics {
    reads: [const { AtomicU64::new(0) }; SOURCE_SLOTS],
    read_bytes: [const { AtomicU64::new(0) }; SOURCE_SLOTS],
    errors: [const { AtomicU64::new(0) }; ERROR_SLOTS],
    fallbacks: [const { AtomicU64::new(0) }; FALLBACK_REASONS.len()],
    latency: [const { LatencyHistogram::new() }; SOURCE_SLOTS],
    reads_in_flight: AtomicU64::new(0),
    lookups: AtomicU64::new(0),
    attached_clients: AtomicU64::new(0),
    fenced_clients: AtomicU64::new(0),
    hugepage_regions: AtomicU64::new(0),
    peers_up: AtomicU64::new(0),
    peers_down: AtomicU64::new(0),
    local_index_bytes: AtomicU64::new(0),
    remote_index_bytes: AtomicU64::new(0),
    remote_index_evictions: AtomicU64::new(0),
    remote_needle_lookups: AtomicU64::new(0),
    index_refreshes: [const { AtomicU64::new(0) }; INDEX_REFRESH_REASONS.len()],
    export_catalogue_generation: AtomicU64::new(0),
    by_volume: Mutex::new(Vec::new()),
    peer_generations: Mutex::new(Vec::new()),
    regions: Mutex::new(Vec::new()),
};

/// Replaces a published snapshot; skipped (until the next second) while a scrape reads it, so
/// the poller never waits for the metrics thread.
fn publish<T>(snapshot: &Mutex<Vec<T>>, rows: impl Iterator<Item = T>) {
    if let Ok(mut held) = snapshot.try_lock() {
        held.clear();
        held.extend(rows);
    }
}

/// Adds `count` to a counter only one thread writes: a relaxed load and store, no locked
/// instruction on the data path.
fn bump(counter: &AtomicU64, count: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(count), Ordering::Relaxed);
}

fn fallback_index(reason: FallbackReason) -> usize {
    match reason {
        FallbackReason::NoExporter => 0,
        FallbackReason::Failed(ErrorCode::PEER_UNAVAILABLE) => 1,
        FallbackReason::Failed(ErrorCode::CRC_MISMATCH | ErrorCode::CORRUPT_NEEDLE) => 2,
        FallbackReason::Failed(_) => 3,
    }
}

impl EngineMetrics {
    /// A completion was posted (poller): counts reads by source and errors by code.
    pub fn count_completion(&self, cqe: &Cqe) {
        match cqe.error_code() {
            Some(code) => {
                let slot = (-code.result()) as usize - 1;
                if let Some(counter) = self.errors.get(slot) {
                    bump(counter, 1);
                }
            }
            None => {
                let source = cqe.source() as usize;
                if source != cqe_flags::SOURCE_NONE as usize {
                    bump(&self.reads[source], 1);
                    bump(&self.read_bytes[source], cqe.result.max(0) as u64);
                }
            }
        }
    }

    /// A read finished on `source` after `latency_ns` (poller).
    pub fn record_latency(&self, source: u32, latency_ns: u64) {
        if let Some(histogram) = self.latency.get(source as usize) {
            histogram.record(latency_ns);
        }
    }

    pub fn count_fallback(&self, reason: FallbackReason) {
        bump(&self.fallbacks[fallback_index(reason)], 1);
    }

    /// A client was fenced off (poller).
    pub fn count_fenced(&self) {
        bump(&self.fenced_clients, 1);
    }

    pub fn set_reads_in_flight(&self, count: usize) {
        self.reads_in_flight.store(count as u64, Ordering::Relaxed);
    }

    pub fn set_lookups(&self, count: u64) {
        self.lookups.store(count, Ordering::Relaxed);
    }

    /// Reads completed by `source` (`cqe_flags::SOURCE_*`).
    pub fn reads(&self, source: u32) -> u64 {
        self.reads.get(source as usize).map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Fallbacks for `reason` (`no_exporter`, `peer_unavailable`, `check_failed`, `other`).
    pub fn fallbacks(&self, reason: &str) -> u64 {
        FALLBACK_REASONS
            .iter()
            .position(|name| *name == reason)
            .map_or(0, |index| self.fallbacks[index].load(Ordering::Relaxed))
    }

    /// UCX exporters up and not (poller, about once a second).
    pub fn set_peers(&self, up: usize, down: usize) {
        self.peers_up.store(up as u64, Ordering::Relaxed);
        self.peers_down.store(down as u64, Ordering::Relaxed);
    }

    /// Bytes the needle indexes hold: the local volumes' (local reads and the export role's
    /// own engine) and the cached remote ones (UCX reads) (poller, about once a second).
    pub fn set_index_bytes(&self, local: usize, remote: usize) {
        self.local_index_bytes.store(local as u64, Ordering::Relaxed);
        self.remote_index_bytes.store(remote as u64, Ordering::Relaxed);
    }

    /// Cached remote indexes dropped over the budget since start.
    pub fn remote_index_evictions(&self) -> u64 {
        self.remote_index_evictions.load(Ordering::Relaxed)
    }

    /// A cached remote index was dropped over the budget (poller).
    pub fn count_remote_index_eviction(&self) {
        bump(&self.remote_index_evictions, 1);
    }

    /// Needles an exporter was asked to look up since start.
    pub fn remote_needle_lookups(&self) -> u64 {
        self.remote_needle_lookups.load(Ordering::Relaxed)
    }

    /// A needle lookup was sent to an exporter (poller).
    pub fn count_remote_needle_lookup(&self) {
        bump(&self.remote_needle_lookups, 1);
    }

    /// Reads and bytes by volume (poller, about once a second).
    pub fn publish_by_volume(&self, counts: impl Iterator<Item = (u32, u64, u64)>) {
        publish(&self.by_volume, counts);
    }

    /// The catalogue generation each exporter last announced, by its address (poller, about
    /// once a second).
    pub fn publish_peer_generations(&self, generations: impl Iterator<Item = (String, u64)>) {
        publish(&self.peer_generations, generations);
    }

    /// A local volume's index was loaded or replayed (poller).
    pub fn count_index_refresh(&self, reason: IndexRefresh) {
        bump(&self.index_refreshes[reason as usize], 1);
    }

    /// The export role's catalogue generation now (its thread).
    pub fn set_export_catalogue_generation(&self, generation: u64) {
        self.export_catalogue_generation.store(generation, Ordering::Relaxed);
    }

    /// The regions attached now (control thread, whenever the set changes). The list it
    /// replaces is dropped here, on the caller's thread, after the lock is released.
    pub fn set_regions(&self, regions: impl Iterator<Item = Arc<RegionMemory>>) {
        let fresh: Vec<Arc<RegionMemory>> = regions.collect();
        let replaced = match self.regions.lock() {
            Ok(mut held) => std::mem::replace(&mut *held, fresh),
            Err(_) => fresh,
        };
        drop(replaced);
    }

    /// (client pid, region id, queue pair, reads in flight) of every attached queue pair, from
    /// the stats blocks (the poller stores `in_flight` there with every batch).
    fn queue_pairs_in_flight(&self) -> Vec<(u32, u64, u32, u64)> {
        let Ok(regions) = self.regions.lock() else { return Vec::new() };
        let mut rows = Vec::new();
        for memory in regions.iter() {
            for queue_pair in 0..memory.geometry.queue_pair_count {
                let in_flight = memory.view.stats(queue_pair).in_flight.load(Ordering::Relaxed);
                rows.push((memory.identity.client_pid, memory.identity.region_id, queue_pair, in_flight));
            }
        }
        rows
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The Prometheus text of every metric, as of now.
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("seaweedfs_rdma");
        let labels = |name: &str, value: &str| vec![(name.to_string(), value.to_string())];
        let reads = Family::<Vec<(String, String)>, Counter>::default();
        let bytes = Family::<Vec<(String, String)>, Counter>::default();
        for (source, name) in SOURCES {
            reads.get_or_create(&labels("source", name)).inc_by(self.reads(source));
            bytes
                .get_or_create(&labels("source", name))
                .inc_by(self.read_bytes[source as usize].load(Ordering::Relaxed));
        }
        registry.register("reads", "Reads the engine completed, by the path that served them", reads);
        registry.register("read_bytes", "Data bytes of completed reads, by source", bytes);
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        for code in ErrorCode::ALL {
            let slot = (-code.result()) as usize - 1;
            let count = self.errors.get(slot).map_or(0, |counter| counter.load(Ordering::Relaxed));
            errors.get_or_create(&labels("code", code.name())).inc_by(count);
        }
        registry.register("errors", "Error completions, by their name in the code table", errors);
        let fallbacks = Family::<Vec<(String, String)>, Counter>::default();
        for (index, reason) in FALLBACK_REASONS.iter().enumerate() {
            fallbacks.get_or_create(&labels("reason", reason)).inc_by(self.fallbacks[index].load(Ordering::Relaxed));
        }
        registry.register("fallbacks", "Reads sent to the volume server's HTTP, by why", fallbacks);
        let latency = SOURCES
            .iter()
            .map(|&(source, name)| (vec![("source", name)], HistogramSnapshot::of(&self.latency[source as usize])))
            .collect();
        registry.register(
            "read_latency_seconds",
            "Time from taking a read off the ring to its completion, by source",
            HistogramFamily(latency),
        );
        let gauge = |value: &AtomicU64| {
            let gauge = Gauge::<i64>::default();
            gauge.set(value.load(Ordering::Relaxed) as i64);
            gauge
        };
        registry.register("reads_in_flight", "Reads taken and not completed yet", gauge(&self.reads_in_flight));
        registry.register("attached_clients", "Clients attached now", gauge(&self.attached_clients));
        registry.register("fenced_clients", "Clients fenced off since start", gauge(&self.fenced_clients));
        registry.register("hugepage_regions", "Attached regions backed by huge pages", gauge(&self.hugepage_regions));
        registry.register("ucx_peers_up", "Exporters connected", gauge(&self.peers_up));
        registry.register("ucx_peers_down", "Exporters known and not connected", gauge(&self.peers_down));
        registry.register(
            "local_index_bytes",
            "Bytes the needle indexes of the local volumes hold (about once a second)",
            gauge(&self.local_index_bytes),
        );
        registry.register(
            "remote_index_bytes",
            "Bytes the cached indexes of remote volumes hold, UCX reads (about once a second; at most --remote-index-budget-mib)",
            gauge(&self.remote_index_bytes),
        );
        let evictions = Counter::<u64>::default();
        evictions.inc_by(self.remote_index_evictions.load(Ordering::Relaxed));
        registry.register(
            "remote_index_evictions",
            "Cached remote indexes dropped over the budget (each pulled again by its next read)",
            evictions,
        );
        let needle_lookups = Counter::<u64>::default();
        needle_lookups.inc_by(self.remote_needle_lookups.load(Ordering::Relaxed));
        registry.register(
            "remote_needle_lookups",
            "Needles looked up by a UCX exporter for reads of volumes whose index this reader does not hold",
            needle_lookups,
        );
        let volume_reads = Family::<Vec<(String, String)>, Counter>::default();
        let volume_bytes = Family::<Vec<(String, String)>, Counter>::default();
        if let Ok(by_volume) = self.by_volume.lock() {
            for &(volume_id, reads, bytes) in by_volume.iter() {
                volume_reads.get_or_create(&labels("volume", &volume_id.to_string())).inc_by(reads);
                volume_bytes.get_or_create(&labels("volume", &volume_id.to_string())).inc_by(bytes);
            }
        }
        registry.register("volume_reads", "Reads completed, by volume (published about once a second)", volume_reads);
        registry.register("volume_read_bytes", "Data bytes read, by volume (about once a second)", volume_bytes);
        let lookups = Counter::<u64>::default();
        lookups.inc_by(self.lookups());
        registry.register("master_lookups", "Volume lookups the master answered", lookups);
        self.encode_state(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

impl EngineMetrics {
    /// Index refreshes, catalogue generations and reads in flight per queue pair.
    fn encode_state(&self, registry: &mut Registry) {
        let labels = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
            pairs.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
        };
        let refreshes = Family::<Vec<(String, String)>, Counter>::default();
        for (index, reason) in INDEX_REFRESH_REASONS.iter().enumerate() {
            let count = self.index_refreshes[index].load(Ordering::Relaxed);
            refreshes.get_or_create(&labels(&[("reason", reason.to_string())])).inc_by(count);
        }
        registry.register(
            "index_refreshes",
            "Local volume indexes loaded (opened), replayed (appended entries) or reloaded (replaced files)",
            refreshes,
        );
        let generation = Gauge::<i64>::default();
        generation.set(self.export_catalogue_generation.load(Ordering::Relaxed) as i64);
        registry.register(
            "export_catalogue_generation",
            "Export role: bumped whenever its catalogue changes (a volume added, grown, replaced or withdrawn)",
            generation,
        );
        let peer_generations = Family::<Vec<(String, String)>, Gauge>::default();
        if let Ok(generations) = self.peer_generations.lock() {
            for (peer, generation) in generations.iter() {
                peer_generations.get_or_create(&labels(&[("peer", peer.clone())])).set(*generation as i64);
            }
        }
        registry.register(
            "peer_catalogue_generation",
            "Read role: the catalogue generation each exporter last announced",
            peer_generations,
        );
        let in_flight = Family::<Vec<(String, String)>, Gauge>::default();
        for (client_pid, region_id, queue_pair, count) in self.queue_pairs_in_flight() {
            let key = labels(&[
                ("client_pid", client_pid.to_string()),
                ("region", region_id.to_string()),
                ("queue_pair", queue_pair.to_string()),
            ]);
            in_flight.get_or_create(&key).set(count as i64);
        }
        registry.register(
            "queue_pair_reads_in_flight",
            "Reads taken from a queue pair's SQ and not completed yet, by client and queue pair",
            in_flight,
        );
    }
}

/// A histogram as read at scrape time.
#[derive(Debug)]
struct HistogramSnapshot {
    sum_seconds: f64,
    count: u64,
    /// (upper bound in seconds, cumulative count).
    buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    fn of(histogram: &LatencyHistogram) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = (0..=LATENCY_BUCKETS)
            .map(|index| {
                cumulative += histogram.buckets[index].load(Ordering::Relaxed);
                let bound = if index == LATENCY_BUCKETS { f64::INFINITY } else { (1u64 << index) as f64 * 1e-6 };
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            sum_seconds: histogram.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
            buckets,
        }
    }
}

/// Histograms of one name with their labels: one `# TYPE` line for all of them (a
/// sub-registry per label would repeat it, which strict parsers refuse).
#[derive(Debug)]
struct HistogramFamily(Vec<(Vec<(&'static str, &'static str)>, HistogramSnapshot)>);

impl TypedMetric for HistogramFamily {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, histogram) in &self.0 {
            histogram.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for HistogramSnapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Longest a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request read.
const REQUEST_MAX_BYTES: usize = 8 << 10;

/// Serves `GET /metrics` on `listen` from a thread of its own (one connection at a time: a
/// scraper every few seconds). Returns the bound address.
pub fn spawn_server(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let address = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Err(error) = answer(stream) {
                tracing::debug!(%error, "metrics request failed");
            }
        }
    })?;
    Ok(address)
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Bounded by REQUEST_MAX_BYTES and the read timeout.
    let (method, path) = loop {
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..count]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&request) {
            Ok(httparse::Status::Complete(_)) => {
                break (parsed.method.unwrap_or("").to_string(), parsed.path.unwrap_or("").to_string())
            }
            Ok(httparse::Status::Partial) if request.len() < REQUEST_MAX_BYTES => continue,
            _ => return respond(&mut stream, "400 Bad Request", "text/plain", "not an HTTP request\n"),
        }
    };
    if method != "GET" {
        respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET /metrics is served here\n")
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &METRICS.encode())
    } else {
        respond(&mut stream, "404 Not Found", "text/plain", "only /metrics is served here\n")
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_powers_of_two_microseconds() {
        let histogram = LatencyHistogram::new();
        for latency_ns in [500, 1_000, 1_001, 3_000, 2_000_000_000_000] {
            histogram.record(latency_ns);
        }
        let snapshot = HistogramSnapshot::of(&histogram);
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.buckets[0], (1e-6, 2), "0.5 µs and 1 µs are in the first bucket");
        assert_eq!(snapshot.buckets[1].1, 3, "1.001 µs is in (1, 2]");
        assert_eq!(snapshot.buckets[2].1, 4, "3 µs is in (2, 4]");
        assert_eq!(snapshot.buckets[LATENCY_BUCKETS], (f64::INFINITY, 5));
    }
}
