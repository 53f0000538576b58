//! `rdma-bench read`: needle reads through the engine's rings at 4 KiB,
//! 64 KiB and 1 MiB of data and queue depths 1 and 32, beside a floor
//! measured in the same rounds.
//!
//! - `--transport local`: the engine reads its own volumes; the floors are
//!   `pread` of the same records ([`pread`]); [`run`].
//! - `--transport ucx`: a reading engine gets the records from an exporter
//!   over UCX; the floor is a bare `ucp_get_nbx` loop from the same
//!   exporter's `.dat` over the same transport ([`get_floor`]); [`ucx::run`].
//! - `--transport stream`: a reading engine gets them from an exporter over
//!   the stream transport; the floor is a bare TCP request/response loop
//!   between two processes over the same loopback ([`tcp_floor`]); [`ucx::run`]
//!   too (the remote runs differ only in their floor).
//!
//! The engine side is the same for both ([`engine`]).

mod engine;
mod get_floor;
mod pread;
pub mod tcp_floor;
pub mod ucx;

use self::engine::EngineReads;
pub use self::engine::Verified;
use self::pread::{floor_slice, floor_threads, FloorWork};
use super::contend::Contenders;
use super::needles::{find_needles, NeedleRef};
use super::{command_line, BenchError, RunConditions, Schedule, Series, SliceResult, Summary};
use crate::affinity;
use crate::machine::{Interference, MachineFacts, Watched, WatchedSpan};
use crate::ringstat::take_snapshot;
use crate::timing::TickClock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Data sizes measured, with their labels.
pub const SIZES: [(u64, &str); 3] = [(4096, "4KiB"), (65536, "64KiB"), (1 << 20, "1MiB")];
/// The sizes and depths one run measures: every one of [`SIZES`] × [`DEPTHS`]
/// unless `--sizes` or `--depths` narrow it (to look at one case closely).
#[derive(Clone, Debug)]
pub struct Cases {
    sizes: Vec<(u64, &'static str)>,
    depths: Vec<u32>,
}

impl Cases {
    /// Every size and depth.
    pub fn all() -> Self {
        Cases { sizes: SIZES.to_vec(), depths: DEPTHS.to_vec() }
    }

    /// The sizes named by their labels (`4KiB`, ...) and the depths given, each in the
    /// order of [`SIZES`] and [`DEPTHS`]; an empty list means all of them.
    pub fn select(size_labels: &[String], depths: &[u32]) -> Result<Self, String> {
        if let Some(label) = size_labels.iter().find(|label| !SIZES.iter().any(|(_, known)| known == label)) {
            return Err(format!("size {label:?} is not measured; the sizes are {:?}", SIZES.map(|(_, l)| l)));
        }
        if let Some(depth) = depths.iter().find(|depth| !DEPTHS.contains(depth)) {
            return Err(format!("depth {depth} is not measured; the depths are {DEPTHS:?}"));
        }
        let all = Cases::all();
        Ok(Cases {
            sizes: all
                .sizes
                .into_iter()
                .filter(|(_, label)| size_labels.is_empty() || size_labels.iter().any(|l| l == label))
                .collect(),
            depths: all.depths.into_iter().filter(|depth| depths.is_empty() || depths.contains(depth)).collect(),
        })
    }

    /// Sizes in bytes, with their labels.
    pub fn sizes(&self) -> impl Iterator<Item = (u64, &'static str)> + '_ {
        self.sizes.iter().copied()
    }

    pub fn depths(&self) -> impl Iterator<Item = u32> + '_ {
        self.depths.iter().copied()
    }

    /// How many size × depth cases there are.
    fn count(&self) -> usize {
        self.sizes.len() * self.depths.len()
    }
}

/// Queue depths measured.
pub const DEPTHS: [u32; 2] = [1, 32];
/// The largest of [`DEPTHS`]: buffers kept per size.
const DEPTH_MAX: u32 = 32;
const _: () = assert!(DEPTHS[0] <= DEPTH_MAX && DEPTHS[1] <= DEPTH_MAX);
/// Needles of each size cycled through.
const NEEDLES_PER_SIZE: usize = 64;
/// Bound on waiting for one completion.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Local,
    Ucx,
    Stream,
}

/// What both transports take.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// The control socket of the engine that serves the reads.
    pub socket: PathBuf,
    /// The volumes (.dat + .idx) the reads name; for ucx, the exporter's.
    pub volume_dir: PathBuf,
    pub duration_ms: u64,
    pub rounds: u32,
    /// Busy-loop processes beside the contended run (0: no contended run).
    pub contend: u32,
    pub cases: Cases,
}

/// One size and depth: the engine's figures beside its floor's, and their
/// ratios. Shared by the local and the UCX reports (flattened into both).
#[derive(Clone, Debug, Serialize)]
pub struct EngineVsFloor {
    pub size_bytes: u64,
    pub size_label: &'static str,
    pub depth: u32,
    pub reads_per_sec: f64,
    pub bytes_per_sec: Option<f64>,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    pub floor_reads_per_sec: f64,
    pub floor_bytes_per_sec: Option<f64>,
    pub floor_p50_ns: Option<f64>,
    pub floor_p99_ns: Option<f64>,
    /// Engine reads/s over floor reads/s (median of per-round ratios).
    pub reads_ratio: Option<f64>,
    pub bytes_ratio: Option<f64>,
    /// Engine p50 over floor p50 (median of per-round ratios).
    pub p50_ratio: Option<f64>,
    pub engine: Summary,
    pub floor: Summary,
    /// With `--contend N`: the engine's reads/s beside N busy loops (median
    /// over rounds), its p50, and that rate over the quiet `reads_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_reads_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_ratio: Option<f64>,
    /// What the processes did while the engine read (bench = the client,
    /// engine or reader and exporter) and while the floor ran: where a gap
    /// between the two goes.
    pub engine_costs: Vec<ProcessCost>,
    pub floor_costs: Vec<ProcessCost>,
}

/// What one process spent during a series' slices (warm-ups included), per
/// second and per read: a process that waits for a CPU, or sleeps and is
/// woken once per read, is where a latency gap goes.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCost {
    pub process: &'static str,
    /// CPU time over wall time, in % of one CPU.
    pub cpu_percent: f64,
    /// Time runnable but waiting for a CPU, in % of wall time.
    pub waiting_for_cpu_percent: f64,
    /// Reads (or floor operations) are counted at the series' median rate.
    pub cpu_ns_per_read: f64,
    pub sleeps_per_read: f64,
    pub preemptions_per_read: f64,
}

fn process_costs(span: Option<&WatchedSpan>, reads_per_sec: f64) -> Vec<ProcessCost> {
    let Some(span) = span.filter(|span| span.wall_ns > 0) else { return Vec::new() };
    let wall_ns = span.wall_ns as f64;
    let reads = (reads_per_sec * wall_ns / 1e9).max(1.0);
    span.by_process
        .iter()
        .map(|(process, times)| ProcessCost {
            process,
            cpu_percent: times.cpu_ns as f64 * 100.0 / wall_ns,
            waiting_for_cpu_percent: times.waiting_for_cpu_ns as f64 * 100.0 / wall_ns,
            cpu_ns_per_read: times.cpu_ns as f64 / reads,
            sleeps_per_read: times.sleeps as f64 / reads,
            preemptions_per_read: times.preemptions as f64 / reads,
        })
        .collect()
}

impl EngineVsFloor {
    /// The `engine` and `floor` series of `series` at this size and depth
    /// (and `contended`, if it ran).
    fn new(
        (size_bytes, size_label): (u64, &'static str),
        depth: u32,
        series: &SeriesMap,
        clock: &TickClock,
    ) -> EngineVsFloor {
        let (engine, floor) = (series.get("engine", size_bytes, depth), series.get("floor", size_bytes, depth));
        let engine_summary = engine.summary(clock, true);
        let floor_summary = floor.summary(clock, true);
        EngineVsFloor {
            size_bytes,
            size_label,
            depth,
            reads_per_sec: engine_summary.ops_per_sec,
            bytes_per_sec: engine_summary.bytes_per_sec,
            p50_ns: engine_summary.p50_ns,
            p99_ns: engine_summary.p99_ns,
            floor_reads_per_sec: floor_summary.ops_per_sec,
            floor_bytes_per_sec: floor_summary.bytes_per_sec,
            floor_p50_ns: floor_summary.p50_ns,
            floor_p99_ns: floor_summary.p99_ns,
            reads_ratio: engine.ops_ratio(floor, clock),
            bytes_ratio: engine.bytes_ratio(floor, clock),
            p50_ratio: engine.p50_ratio(floor, clock),
            engine_costs: process_costs(series.span("engine", size_bytes, depth), engine_summary.ops_per_sec),
            floor_costs: process_costs(series.span("floor", size_bytes, depth), floor_summary.ops_per_sec),
            engine: engine_summary,
            floor: floor_summary,
            contended_reads_per_sec: None,
            contended_p50_ns: None,
            contended_ratio: None,
        }
        .with_contended(series.get("contended", size_bytes, depth), clock)
    }

    /// Adds the contended run's figures (none if it did not run).
    fn with_contended(mut self, contended: &Series, clock: &TickClock) -> EngineVsFloor {
        if contended.slices.is_empty() {
            return self;
        }
        let summary = contended.summary(clock, true);
        self.contended_reads_per_sec = Some(summary.ops_per_sec);
        self.contended_p50_ns = summary.p50_ns;
        self.contended_ratio = (self.reads_per_sec > 0.0).then(|| summary.ops_per_sec / self.reads_per_sec);
        self
    }
}

/// The contended run: starts `count` busy loops, reads every size and depth
/// through the engine for `schedule.rounds` rounds (series `contended`),
/// stops the loops. Nothing if `count` is 0.
fn contended_rounds(
    engine: &mut EngineReads,
    needles: &BTreeMap<u64, Vec<NeedleRef>>,
    (clock, schedule): (&TickClock, &Schedule),
    (count, cases): (u32, &Cases),
    series: &mut SeriesMap,
    interference: &mut Interference,
) -> Result<(), BenchError> {
    if count == 0 {
        return Ok(());
    }
    let contenders = Contenders::start(count)?;
    for pid in contenders.pids() {
        interference.add_pid(pid);
    }
    for _ in 0..schedule.rounds {
        for (size, _) in cases.sizes() {
            for depth in cases.depths() {
                series.measure("contended", size, depth, || {
                    engine.slice(clock, schedule, size, &needles[&size], depth)
                })?;
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct ReadResult {
    #[serde(flatten)]
    pub comparison: EngineVsFloor,
    pub floor_threads: usize,
    /// One thread, pread + CRC-32C: the engine's necessary work.
    pub checked_floor_reads_per_sec: f64,
    pub checked_floor_p50_ns: Option<f64>,
    pub reads_ratio_vs_checked: Option<f64>,
    pub p50_ratio_vs_checked: Option<f64>,
    pub checked_floor: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReadReport {
    pub tool: &'static str,
    pub command: String,
    pub transport: Transport,
    pub volume_dir: String,
    pub results: Vec<ReadResult>,
    pub floor_method: String,
    /// One read per size, compared byte for byte with the file.
    pub verified: Vec<Verified>,
    pub needles_per_size: usize,
    pub schedule: Schedule,
    pub poller_cpu: Option<usize>,
    /// Busy-loop processes beside the contended run (0: none ran).
    pub contenders: u32,
    #[serde(flatten)]
    pub conditions: RunConditions,
}

fn missing_sizes_message(dir: &Path, missing: &[u64]) -> String {
    format!(
        "no needle with {missing:?} data bytes in the volumes of {}; generate some with: \
         volgen --dir {} --volume-id 1 --count 192 --sizes 4096,65536,1048576",
        dir.display(),
        dir.display()
    )
}

/// Up to [`NEEDLES_PER_SIZE`] needles of every size of `cases` from the
/// volumes of `dir`; an error naming the `volgen` command if a size is missing.
fn needles_of_every_size(dir: &Path, cases: &Cases) -> Result<BTreeMap<u64, Vec<NeedleRef>>, BenchError> {
    let sizes: Vec<u64> = cases.sizes().map(|(size, _)| size).collect();
    let needles = find_needles(dir, &sizes, NEEDLES_PER_SIZE).map_err(BenchError::Volumes)?;
    let missing: Vec<u64> = needles.iter().filter(|(_, list)| list.is_empty()).map(|(size, _)| *size).collect();
    if !missing.is_empty() {
        return Err(BenchError::Volumes(missing_sizes_message(dir, &missing)));
    }
    Ok(needles)
}

/// Series of one run, by name (`engine_4096_1`, `floor_4096_1`, ...), and
/// what the watched processes did during each.
#[derive(Debug)]
struct SeriesMap {
    series: BTreeMap<String, Series>,
    spans: BTreeMap<String, WatchedSpan>,
    watched: Watched,
}

impl SeriesMap {
    fn new(watched: Watched) -> SeriesMap {
        SeriesMap { series: BTreeMap::new(), spans: BTreeMap::new(), watched }
    }

    /// Runs one slice of series `kind` and records it with what the watched processes did.
    fn measure(
        &mut self,
        kind: &str,
        size: u64,
        depth: u32,
        slice: impl FnOnce() -> Result<SliceResult, BenchError>,
    ) -> Result<(), BenchError> {
        let key = format!("{kind}_{size}_{depth}");
        let result = self.watched.during(self.spans.entry(key.clone()).or_default(), slice)?;
        self.series.entry(key).or_default().push(result);
        Ok(())
    }

    fn get(&self, kind: &str, size: u64, depth: u32) -> &Series {
        static EMPTY: Series = Series { slices: Vec::new() };
        self.series.get(&format!("{kind}_{size}_{depth}")).unwrap_or(&EMPTY)
    }

    fn span(&self, kind: &str, size: u64, depth: u32) -> Option<&WatchedSpan> {
        self.spans.get(&format!("{kind}_{size}_{depth}"))
    }
}

/// `--transport local`: finds the needles, verifies one read per size, then
/// measures the engine beside `pread` and `pread` + CRC.
pub fn run(options: &ReadOptions) -> Result<ReadReport, BenchError> {
    let wall_start = Instant::now();
    let machine = MachineFacts::collect();
    let cases = &options.cases;
    let needles = needles_of_every_size(&options.volume_dir, cases)?;
    let mut engine = EngineReads::attach(&options.socket, &needles, DEPTH_MAX, "rdma-bench read")?;
    let all_cpus = affinity::allowed_cpus(0);
    let snapshot = take_snapshot(&options.socket)?;
    let poller_cpu = affinity::engine_poller_cpu(snapshot.engine_pid);
    if let Some((_, requester)) = poller_cpu.and_then(|cpu| affinity::cpu_pair(Some(cpu))) {
        let _ = affinity::pin_current_thread(requester);
    }
    let mut interference = Interference::start(&[snapshot.engine_pid]);
    let measurement_count = (cases.count() * 3) as u32;
    let clock = TickClock::calibrate();
    let schedule = Schedule::new(options.duration_ms, options.rounds, measurement_count);
    let verified =
        cases.sizes().map(|(size, _)| engine.verify(size, &needles[&size][0])).collect::<Result<Vec<_>, _>>()?;
    let mut series = SeriesMap::new(Watched::new(&[("engine", snapshot.engine_pid)]));
    for _ in 0..schedule.rounds {
        for (size, _) in cases.sizes() {
            let list = &needles[&size];
            for depth in cases.depths() {
                series.measure("engine", size, depth, || engine.slice(&clock, &schedule, size, list, depth))?;
                let threads = floor_threads(depth, all_cpus.len());
                series.measure("floor", size, depth, || {
                    floor_slice(&clock, &schedule, list, depth, threads, &all_cpus, FloorWork::Pread)
                })?;
                series.measure("checked", size, depth, || {
                    floor_slice(&clock, &schedule, list, depth, 1, &all_cpus, FloorWork::PreadCrc)
                })?;
            }
        }
    }
    let contend = (options.contend, cases);
    contended_rounds(&mut engine, &needles, (&clock, &schedule), contend, &mut series, &mut interference)?;
    engine.check_errors()?;
    let results = local_results(&series, &clock, all_cpus.len(), cases);
    let conditions = RunConditions::new(clock.source(), machine, interference.finish(), wall_start.elapsed());
    Ok(ReadReport {
        tool: "rdma-bench read",
        command: command_line(),
        transport: Transport::Local,
        volume_dir: options.volume_dir.display().to_string(),
        results,
        floor_method: format!(
            "floor: pread of the same whole records into heap buffers (as many buffers \
             as reads in flight, in rotation); depth 1 = 1 thread, depth 32 = {} threads \
             reading sequentially (pread is synchronous). checked floor: 1 thread, pread \
             + CRC-32C of the data, the work a validated read cannot skip",
            floor_threads(32, all_cpus.len())
        ),
        verified,
        needles_per_size: NEEDLES_PER_SIZE,
        schedule,
        poller_cpu,
        contenders: options.contend,
        conditions,
    })
}

fn local_results(series: &SeriesMap, clock: &TickClock, cpu_count: usize, cases: &Cases) -> Vec<ReadResult> {
    let mut out = Vec::new();
    for (size, label) in cases.sizes() {
        for depth in cases.depths() {
            let engine = series.get("engine", size, depth);
            let checked = series.get("checked", size, depth);
            let checked_summary = checked.summary(clock, true);
            out.push(ReadResult {
                comparison: EngineVsFloor::new((size, label), depth, series, clock),
                floor_threads: floor_threads(depth, cpu_count),
                checked_floor_reads_per_sec: checked_summary.ops_per_sec,
                checked_floor_p50_ns: checked_summary.p50_ns,
                reads_ratio_vs_checked: engine.ops_ratio(checked, clock),
                p50_ratio_vs_checked: engine.p50_ratio(checked, clock),
                checked_floor: checked_summary,
            });
        }
    }
    out
}
