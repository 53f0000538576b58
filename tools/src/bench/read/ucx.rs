//! `rdma-bench read --transport ucx|stream`: needles read through a reading
//! engine (`rdma-engine --peer`) that gets them from an exporter, beside a
//! floor in alternating short slices: over UCX a bare `ucp_get_nbx` loop from
//! the same exporter's `.dat` ([`get_floor`]); over the stream transport a
//! bare TCP request/response loop between two processes ([`tcp_floor`]).
//!
//! Stream targets (reported, never asserted): engine ≥ 0.8× the bare TCP
//! loop's bytes per second at every size and depth.
//!
//! Both sides must use the same UCX transport: the floor's connection is
//! made in this process with this process's `UCX_*` environment, the
//! engine's with the reader's. The report shows both environments (read
//! from `/proc`) and warns when they differ.
//!
//! Targets (reported, never asserted): engine ≥ 0.9× the bare bandwidth at
//! 64 KiB and 1 MiB; engine 4 KiB depth-1 p50 within 1 µs of the bare p50.
//!
//! [`get_floor`]: super::get_floor
//! [`tcp_floor`]: super::tcp_floor

use super::engine::EngineReads;
use super::get_floor::GetFloor;
use super::tcp_floor::TcpFloor;
use super::{contended_rounds, EngineVsFloor};
use super::{needles_of_every_size, NeedleRef, ReadOptions, SeriesMap, Transport, Verified};
use super::{Cases, DEPTH_MAX, NEEDLES_PER_SIZE};
use crate::affinity;
use crate::bench::{command_line, BenchError, RunConditions, Schedule, Target};
use crate::machine::{tcp_listener_pid, ucx_environment_of, Interference, MachineFacts, Watched};
use crate::ringstat::take_snapshot;
use crate::timing::TickClock;
use rdma_client::ReadSource;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Engine bandwidth over bare bandwidth, at least, at 64 KiB and above.
pub const BANDWIDTH_RATIO_TARGET: f64 = 0.9;
/// Engine p50 minus bare p50 at 4 KiB, depth 1, at most.
pub const P50_DELTA_TARGET_NS: f64 = 1000.0;
/// Stream transport: engine bytes per second over the bare TCP loop's, at least, everywhere.
pub const STREAM_RATIO_TARGET: f64 = 0.8;

#[derive(Clone, Debug)]
pub struct UcxReadOptions {
    /// `socket` is the reading engine's.
    pub read: ReadOptions,
    /// The exporter's `--listen` address (the reader's `--peer`).
    pub peer: SocketAddr,
    /// `Ucx` or `Stream`: which transport the reader uses, and so which floor.
    pub transport: Transport,
}

/// The floor a remote run measures beside the engine.
enum Floor {
    Get(Box<GetFloor>),
    Tcp(TcpFloor),
}

impl Floor {
    fn slice(
        &mut self,
        clock: &TickClock,
        schedule: &Schedule,
        volume_id: u32,
        size: u64,
        depth: u32,
    ) -> Result<crate::bench::SliceResult, BenchError> {
        match self {
            Floor::Get(floor) => floor.slice(clock, schedule, volume_id, size, depth),
            Floor::Tcp(floor) => floor.slice(clock, schedule, size, depth),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct UcxReadResult {
    /// The floor here is the bare get loop's gets/s, bytes/s and latencies.
    #[serde(flatten)]
    pub comparison: EngineVsFloor,
    /// Engine p50 minus floor p50, median of per-round differences.
    pub p50_delta_ns: Option<f64>,
}

/// The `UCX_*` environment of each process in the measurement.
#[derive(Clone, Debug, Serialize)]
pub struct UcxEnvironment {
    pub bench: BTreeMap<String, String>,
    pub reader: Option<BTreeMap<String, String>>,
    /// `None` when the exporter's process was not found (another user's,
    /// or another host's).
    pub exporter: Option<BTreeMap<String, String>>,
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UcxReadReport {
    pub tool: &'static str,
    pub command: String,
    pub transport: Transport,
    pub peer: String,
    pub volume_dir: String,
    pub results: Vec<UcxReadResult>,
    pub targets: Vec<Target>,
    pub floor_method: String,
    /// One read per size through the reader, compared byte for byte with the file.
    pub verified: Vec<Verified>,
    pub needles_per_size: usize,
    pub schedule: Schedule,
    pub reader_pid: u32,
    pub exporter_pid: Option<u32>,
    pub poller_cpu: Option<usize>,
    pub ucx_environment: UcxEnvironment,
    /// Busy-loop processes beside the contended run (0: none ran).
    pub contenders: u32,
    #[serde(flatten)]
    pub conditions: RunConditions,
}

fn ucx_environment(reader_pid: u32, exporter_pid: Option<u32>) -> UcxEnvironment {
    let bench: BTreeMap<String, String> = std::env::vars().filter(|(name, _)| name.starts_with("UCX_")).collect();
    // `/proc/<pid>/environ` is the environment the engine started with: add the defaults it
    // sets for itself at start, as this bench did for its own.
    let as_run = |mut environment: BTreeMap<String, String>| {
        for (name, value) in rdma_engine::rdma::UCX_ENVIRONMENT_DEFAULTS {
            environment.entry(name.to_string()).or_insert_with(|| value.to_string());
        }
        environment
    };
    let reader = ucx_environment_of(reader_pid).map(as_run);
    let exporter = exporter_pid.and_then(ucx_environment_of).map(as_run);
    let differs = |other: &Option<BTreeMap<String, String>>| other.as_ref().is_some_and(|other| *other != bench);
    let warning = (differs(&reader) || differs(&exporter)).then(|| {
        "the bench, the reader and the exporter run with different UCX_* settings: the floor may \
         not use the engine's transport; start all three with the same UCX_TLS"
            .to_string()
    });
    UcxEnvironment { bench, reader, exporter, warning }
}

/// Verifies one read per size through the reader, which must have served
/// it over `source` (a reader with the volumes of its own would measure `pread`).
fn verify_all(
    engine: &mut EngineReads,
    needles: &BTreeMap<u64, Vec<NeedleRef>>,
    cases: &Cases,
    source: ReadSource,
) -> Result<Vec<Verified>, BenchError> {
    let mut verified = Vec::new();
    for (size, _) in cases.sizes() {
        let read = engine.verify(size, &needles[&size][0])?;
        if read.source != source.name() {
            return Err(BenchError::Verify(format!(
                "{}: the reader served it from `{}`, not `{}`; start the reader with --peer only (and the                  same --transport as the exporter)",
                read.file_id,
                read.source,
                source.name()
            )));
        }
        verified.push(read);
    }
    Ok(verified)
}

/// Finds the needles, connects the floor, verifies one read per size
/// through the reader, then measures engine and floor in alternating slices.
pub fn run(options: &UcxReadOptions) -> Result<UcxReadReport, BenchError> {
    let wall_start = Instant::now();
    let machine = MachineFacts::collect();
    let read = &options.read;
    let cases = &read.cases;
    let needles = needles_of_every_size(&read.volume_dir, cases)?;
    let size_max_bytes = cases.sizes().map(|(size, _)| size).max().unwrap_or(0) as usize;
    let stream = options.transport == Transport::Stream;
    let mut floor = match stream {
        true => Floor::Tcp(TcpFloor::start(size_max_bytes)?),
        false => Floor::Get(Box::new(GetFloor::connect(options.peer, size_max_bytes, DEPTH_MAX as usize)?)),
    };
    let client_name = if stream { "rdma-bench read --transport stream" } else { "rdma-bench read --transport ucx" };
    let mut engine = EngineReads::attach(&read.socket, &needles, DEPTH_MAX, client_name)?;
    let snapshot = take_snapshot(&read.socket)?;
    let reader_pid = snapshot.engine_pid;
    let exporter_pid = tcp_listener_pid(options.peer.port()).filter(|&pid| pid != reader_pid);
    let poller_cpu = affinity::engine_poller_cpu(reader_pid);
    if let Some((_, requester)) = poller_cpu.and_then(|cpu| affinity::cpu_pair(Some(cpu))) {
        let _ = affinity::pin_current_thread(requester);
    }
    let ucx_environment = ucx_environment(reader_pid, exporter_pid);
    let mut own_pids = vec![reader_pid];
    own_pids.extend(exporter_pid);
    let mut interference = Interference::start(&own_pids);
    let clock = TickClock::calibrate();
    let schedule = Schedule::new(read.duration_ms, read.rounds, (cases.count() * 2) as u32);
    let source = if stream { ReadSource::Stream } else { ReadSource::Rdma };
    let verified = verify_all(&mut engine, &needles, cases, source)?;
    let mut watched = vec![("reader", reader_pid)];
    watched.extend(exporter_pid.map(|pid| ("exporter", pid)));
    if let Floor::Tcp(floor) = &floor {
        watched.push(("tcp floor server", floor.pid()));
    }
    let mut series = SeriesMap::new(Watched::new(&watched));
    for _ in 0..schedule.rounds {
        for (size, _) in cases.sizes() {
            let list = &needles[&size];
            let volume_id = list[0].file_id.volume_id;
            for depth in cases.depths() {
                series.measure("engine", size, depth, || engine.slice(&clock, &schedule, size, list, depth))?;
                series.measure("floor", size, depth, || floor.slice(&clock, &schedule, volume_id, size, depth))?;
            }
        }
    }
    let contend = (read.contend, cases);
    contended_rounds(&mut engine, &needles, (&clock, &schedule), contend, &mut series, &mut interference)?;
    engine.check_errors()?;
    let results = ucx_results(&series, &clock, cases);
    let targets = if stream { stream_targets(&results) } else { targets(&results) };
    let conditions = RunConditions::new(clock.source(), machine, interference.finish(), wall_start.elapsed());
    Ok(UcxReadReport {
        tool: "rdma-bench read",
        command: command_line(),
        transport: options.transport,
        peer: options.peer.to_string(),
        volume_dir: read.volume_dir.display().to_string(),
        results,
        targets,
        floor_method: if stream { TCP_FLOOR_METHOD } else { GET_FLOOR_METHOD }.into(),
        verified,
        needles_per_size: NEEDLES_PER_SIZE,
        schedule,
        reader_pid,
        exporter_pid,
        poller_cpu,
        ucx_environment,
        contenders: read.contend,
        conditions,
    })
}

const GET_FLOOR_METHOD: &str = "floor: ucx::floor::bare_get_loop in the bench process, over its own UCX \
     connection to the same exporter (the bench's UCX_* environment), getting size-byte pieces of the \
     same exported .dat, walked in steps, depth at a time, into one registered buffer; no ring, no \
     needle check. Engine bytes are needle data bytes (the engine gets the whole record, a few bytes more)";
const TCP_FLOOR_METHOD: &str = "floor: a bare TCP request/response loop between the bench and a server process \
     of its own over loopback (16-byte request, 40-byte header + size bytes from memory), depth requests \
     in flight on one connection; no index, file, check or ring. Engine bytes are needle data bytes";

/// The stream transport's targets, by size and depth: at least 0.8x the bare TCP loop's bytes.
const STREAM_TARGETS: [(u64, u32, &str); 6] = [
    (4096, 1, "4KiB depth 1: engine / bare TCP bytes per second"),
    (4096, 32, "4KiB depth 32: engine / bare TCP bytes per second"),
    (65536, 1, "64KiB depth 1: engine / bare TCP bytes per second"),
    (65536, 32, "64KiB depth 32: engine / bare TCP bytes per second"),
    (1 << 20, 1, "1MiB depth 1: engine / bare TCP bytes per second"),
    (1 << 20, 32, "1MiB depth 32: engine / bare TCP bytes per second"),
];

fn stream_targets(results: &[UcxReadResult]) -> Vec<Target> {
    let ratio = |size: u64, depth: u32| {
        results
            .iter()
            .find(|result| result.comparison.size_bytes == size && result.comparison.depth == depth)
            .and_then(|result| result.comparison.bytes_ratio)
    };
    STREAM_TARGETS
        .iter()
        .map(|&(size, depth, what)| Target::at_least(what, ratio(size, depth), STREAM_RATIO_TARGET))
        .collect()
}

fn ucx_results(series: &SeriesMap, clock: &TickClock, cases: &Cases) -> Vec<UcxReadResult> {
    let mut out = Vec::with_capacity(cases.count());
    for (size, label) in cases.sizes() {
        for depth in cases.depths() {
            let engine = series.get("engine", size, depth);
            let floor = series.get("floor", size, depth);
            out.push(UcxReadResult {
                comparison: EngineVsFloor::new((size, label), depth, series, clock),
                p50_delta_ns: engine.p50_difference_ns(floor, clock),
            });
        }
    }
    out
}

/// The targets, for the configurations they name.
fn targets(results: &[UcxReadResult]) -> Vec<Target> {
    let find =
        |size: u64, depth: u32| results.iter().find(|r| r.comparison.size_bytes == size && r.comparison.depth == depth);
    let bytes_ratio = |size, depth| find(size, depth).and_then(|r| r.comparison.bytes_ratio);
    let bandwidth = |what, size, depth| Target::at_least(what, bytes_ratio(size, depth), BANDWIDTH_RATIO_TARGET);
    vec![
        bandwidth("64KiB depth 1: engine / bare bytes per second", 65536, 1),
        bandwidth("64KiB depth 32: engine / bare bytes per second", 65536, 32),
        bandwidth("1MiB depth 1: engine / bare bytes per second", 1 << 20, 1),
        bandwidth("1MiB depth 32: engine / bare bytes per second", 1 << 20, 32),
        Target::at_most(
            "4KiB depth 1: engine p50 - bare p50 (ns)",
            find(4096, 1).and_then(|r| r.p50_delta_ns),
            P50_DELTA_TARGET_NS,
        ),
    ]
}
