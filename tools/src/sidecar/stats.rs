//! What the sidecar counts: requests by route, reads and bytes by source,
//! errors by status and engine code, latency, requests in flight. Kept
//! twice from one `record` call: as Prometheus metrics (`/metrics`, text
//! format, `prometheus-client`) and as plain counters for `/stats` (JSON).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdma_client::ReadSource;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// Latency buckets: 10 µs doubling up to ~5 s.
const LATENCY_BUCKET_START_SECONDS: f64 = 10e-6;
const LATENCY_BUCKET_COUNT: u16 = 20;

/// One finished request, as the router saw it.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    /// `fid`, `read`, `health`, `cleanup`, `stats`, `metrics`, `other`.
    pub route: &'static str,
    pub status: u16,
    /// Which path served the needle, when one was read.
    pub source: Option<ReadSource>,
    pub body_bytes: u64,
    /// The engine's code (or the sidecar's reason) of a failure.
    pub error: Option<&'a str>,
    pub latency: Duration,
}

#[derive(Debug, Default)]
struct Plain {
    requests_by_route: BTreeMap<String, u64>,
    status_by_route: BTreeMap<String, BTreeMap<u16, u64>>,
    reads_by_source: BTreeMap<String, u64>,
    bytes_by_source: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    requests: Family<Labels, Counter>,
    reads: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Histogram,
    in_flight: Gauge,
    plain: Mutex<Plain>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let mut registry = Registry::with_prefix("rdma_sidecar");
        let requests = Family::<Labels, Counter>::default();
        let reads = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let latency = Histogram::new(exponential_buckets(LATENCY_BUCKET_START_SECONDS, 2.0, LATENCY_BUCKET_COUNT));
        let in_flight = Gauge::default();
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        registry.register("reads", "Needle reads served, by the path that served them", reads.clone());
        registry.register("bytes", "Body bytes sent for needle reads, by source", bytes.clone());
        registry.register("errors", "Failed requests by route and engine code or reason", errors.clone());
        registry.register("request_latency_seconds", "Time from request to answer", latency.clone());
        registry.register("in_flight", "Requests being served", in_flight.clone());
        Stats { registry, requests, reads, bytes, errors, latency, in_flight, plain: Mutex::new(Plain::default()) }
    }

    /// Marks one request as started; the guard marks it finished.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight { stats: self }
    }

    pub fn record(&self, outcome: &Outcome<'_>) {
        let route = outcome.route.to_string();
        let status = outcome.status.to_string();
        self.requests.get_or_create(&vec![("route".into(), route.clone()), ("status".into(), status)]).inc();
        self.latency.observe(outcome.latency.as_secs_f64());
        let source = outcome.source.map(|source| source.name().to_string());
        if let Some(source) = &source {
            self.reads.get_or_create(&vec![("source".into(), source.clone())]).inc();
            self.bytes.get_or_create(&vec![("source".into(), source.clone())]).inc_by(outcome.body_bytes);
        }
        if let Some(error) = outcome.error {
            self.errors.get_or_create(&vec![("route".into(), route.clone()), ("code".into(), error.into())]).inc();
        }
        let Ok(mut plain) = self.plain.lock() else { return };
        *plain.requests_by_route.entry(route.clone()).or_default() += 1;
        *plain.status_by_route.entry(route.clone()).or_default().entry(outcome.status).or_default() += 1;
        if let Some(source) = source {
            *plain.reads_by_source.entry(source.clone()).or_default() += 1;
            *plain.bytes_by_source.entry(source).or_default() += outcome.body_bytes;
        }
        if let Some(error) = outcome.error {
            *plain.errors.entry(format!("{route}:{error}")).or_default() += 1;
        }
    }

    /// `/stats`.
    pub fn json(&self, connected: bool) -> serde_json::Value {
        let plain = self.plain.lock().map(|plain| {
            serde_json::json!({
                "requests_by_route": plain.requests_by_route,
                "status_by_route": plain.status_by_route,
                "reads_by_source": plain.reads_by_source,
                "bytes_by_source": plain.bytes_by_source,
                "errors": plain.errors,
            })
        });
        let mut value = plain.unwrap_or_else(|_| serde_json::json!({}));
        value["in_flight"] = self.in_flight.get().into();
        value["engine_connected"] = connected.into();
        value
    }

    /// `/metrics`, Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// A request being served; dropping it ends it.
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a Stats,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.dec();
    }
}
