//! `rdma-bench nop`: NOP round trips through a running engine's rings, with
//! the floors of [`super::floor`] measured in the same rounds.
//!
//! Configurations: 1 and 2 queue pairs (one client thread per queue pair)
//! × 1, 8 and 32 NOPs in flight, plus the wake-from-sleep round trip: one
//! NOP submitted after the client slept `gap` (2 ms by default, far longer
//! than the engine's idle spin of 50 µs), so the engine is asleep on its SQ
//! futex and the submit has to wake it. The client waits with the library's
//! `wait` (which spins while spinning pays: on a quiet host, always), except
//! after the wake-up submission, where it spins, so the figures are ring and
//! engine costs, not the client's own sleeps.

mod engine_loop;

use super::bare_client::BareClient;
use super::contend::Contenders;
use super::floor::FloorHelper;
use super::pipeline::measure_round_trips;
use super::ring_floor::ring_slice;
use super::{command_line, BenchError, RunConditions, Schedule, Series, SliceResult, Summary, Target};
use crate::affinity;
use crate::machine::{Interference, MachineFacts};
use crate::ringstat::take_snapshot;
use crate::timing::TickClock;
use engine_loop::{engine_slice, wake_round_trip, CompletionErrors};
use rdma_client::{AttachOptions, Client, QueuePair};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Queue depths measured.
pub const DEPTHS: [u32; 3] = [1, 8, 32];
/// Slices per round: 6 engine configs, 3 bare-client depths, bounce, 3
/// ring depths, futex, wake.
const SLICES_PER_ROUND: u32 = 15;

#[derive(Clone, Debug)]
pub struct NopOptions {
    pub socket: PathBuf,
    /// Total measured time, split over rounds and slices.
    pub duration_ms: u64,
    pub rounds: u32,
    /// Sleep before each wake-from-sleep submission.
    pub gap_us: u64,
    /// Busy-loop processes beside the contended run (0: no contended run).
    pub contend: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    /// The CPU the engine's poller is pinned to (`--poller-cpu`), if it is.
    pub poller_cpu: Option<usize>,
    /// Where the floors' responders run (the poller's CPU when known).
    pub responder_cpu: Option<usize>,
    /// Where this process's requesting threads run.
    pub requester_cpus: Vec<usize>,
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// Single-entry p50 over the cache-line bounce p50 (target <= 1.5).
    pub single_p50_vs_bounce_p50: Option<f64>,
    /// Single-entry p50 over the bare ring's depth-1 p50.
    pub single_p50_vs_ring_p50: Option<f64>,
    /// Engine ops/s over the bare ring's ops/s at the same depth, 1 queue pair.
    pub ops_vs_ring_by_depth: BTreeMap<String, Option<f64>>,
    /// Wake-from-sleep p50 over the futex round trip p50 (target <= 1.5).
    pub wake_p50_vs_futex_p50: Option<f64>,
    /// Library client ops/s over bare-ring client ops/s, same engine, same
    /// depth: what the client library costs (1.0 = nothing).
    pub library_vs_bare_client_by_depth: BTreeMap<String, Option<f64>>,
    /// Bare-ring client against the engine, over the bare ring between two
    /// threads: what the engine costs beyond the ring.
    pub bare_client_vs_ring_by_depth: BTreeMap<String, Option<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NopReport {
    pub tool: &'static str,
    pub command: String,
    /// Best batched rate (depth > 1, either queue pair count): median ops/s.
    pub ops_per_sec: f64,
    pub ops_per_sec_config: String,
    /// Single-entry round trip p50 (1 queue pair, depth 1).
    pub p50_ns: Option<f64>,
    /// Cache-line bounce p50 between two processes, same run.
    pub floor_p50_ns: Option<f64>,
    /// Bare ring ops/s at the depth of `ops_per_sec`.
    pub floor_ops_per_sec: f64,
    pub wake_p50_ns: Option<f64>,
    pub floor_wake_p50_ns: Option<f64>,
    pub ratios: Ratios,
    pub targets: Vec<Target>,
    /// Engine configurations: `qp1_depth1` … `qp2_depth32`, `wake_from_sleep`.
    pub engine: BTreeMap<String, EngineFigure>,
    /// Floors: `bounce`, `ring_depth1/8/32`, `futex`.
    pub floors: BTreeMap<String, Summary>,
    /// The engine driven by a client without the library (bare ring ends):
    /// `depth1/8/32`.
    pub bare_client: BTreeMap<String, Summary>,
    /// Engine sleeps counted on queue pair 0 during the wake slices, and the
    /// submissions made there (about one sleep per submission is expected).
    pub engine_sleeps_in_wake_slices: u64,
    pub wake_submissions: u64,
    pub schedule: Schedule,
    pub gap_us: u64,
    /// Busy-loop processes beside the contended run (0: none ran).
    pub contenders: u32,
    pub placement: Placement,
    pub ticks_per_ns: f64,
    #[serde(flatten)]
    pub conditions: RunConditions,
    pub load_average_after: [f64; 3],
}

/// One engine configuration: its quiet figures and, with `--contend N`, its
/// rate beside N busy loops (median over rounds; not for `wake_from_sleep`,
/// whose client sleeps on purpose) and that rate over the quiet one.
#[derive(Clone, Debug, Serialize)]
pub struct EngineFigure {
    #[serde(flatten)]
    pub quiet: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_ops_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_p50_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contended_ratio: Option<f64>,
}

/// Series of the contended run are named `contended_<configuration>`.
const CONTENDED_PREFIX: &str = "contended_";

/// Everything the rounds need.
struct Bench<'a> {
    clock: TickClock,
    schedule: Schedule,
    gap: Duration,
    queue_pairs: &'a mut [QueuePair; 2],
    helper: FloorHelper,
    bare: BareClient,
    placement: Placement,
    socket: PathBuf,
    region_id: u64,
    series: BTreeMap<String, Series>,
    errors: CompletionErrors,
    engine_sleeps: u64,
    wake_submissions: u64,
    /// Prepended to the engine series' names ([`CONTENDED_PREFIX`] in the contended run).
    engine_prefix: &'static str,
}

impl Bench<'_> {
    fn warmup(&self) -> Duration {
        Duration::from_millis(self.schedule.warmup_ms)
    }

    fn slice(&self) -> Duration {
        Duration::from_millis(self.schedule.slice_ms)
    }

    fn record(&mut self, name: &str, slice: SliceResult) {
        self.series.entry(name.to_string()).or_default().push(slice);
    }

    fn one_queue_pair(&mut self, depth: u32) -> Result<(), BenchError> {
        let (clock, schedule) = (self.clock, self.schedule);
        let (slice, errors) = engine_slice(&mut self.queue_pairs[0], &clock, depth, &schedule)?;
        self.errors.absorb(errors);
        self.record(&format!("{}qp1_depth{depth}", self.engine_prefix), slice);
        Ok(())
    }

    fn two_queue_pairs(&mut self, depth: u32) -> Result<(), BenchError> {
        let (clock, schedule) = (self.clock, self.schedule);
        let cpus = self.placement.requester_cpus.clone();
        let barrier = Barrier::new(2);
        let [first, second] = &mut *self.queue_pairs;
        let (one, two) = std::thread::scope(|scope| {
            let helper = scope.spawn(|| {
                let _ = affinity::allow_cpus(&cpus);
                barrier.wait();
                engine_slice(second, &clock, depth, &schedule)
            });
            barrier.wait();
            let mine = engine_slice(first, &clock, depth, &schedule);
            let theirs = helper.join().unwrap_or_else(|_| Err(BenchError::Helper("client thread panicked".into())));
            (mine, theirs)
        });
        let (mut merged, errors_one) = one?;
        let (other, errors_two) = two?;
        merged.merge_parallel(&other);
        self.errors.absorb(errors_one);
        self.errors.absorb(errors_two);
        self.record(&format!("{}qp2_depth{depth}", self.engine_prefix), merged);
        Ok(())
    }

    fn queue_pair_zero_sleeps(&self) -> Result<u64, BenchError> {
        let snapshot = take_snapshot(&self.socket)?;
        Ok(snapshot
            .regions
            .iter()
            .find(|region| region.region_id == self.region_id)
            .and_then(|region| region.queue_pairs.first())
            .map_or(0, |qp| qp.stats.sleeps))
    }

    fn wake_from_sleep(&mut self) -> Result<(), BenchError> {
        let sleeps_before = self.queue_pair_zero_sleeps()?;
        let (clock, slice, gap) = (self.clock, self.slice(), self.gap);
        let mut errors = CompletionErrors::default();
        let queue_pair = &mut self.queue_pairs[0];
        let result = measure_round_trips(&clock, Duration::ZERO, slice, Some(gap), |_| {
            wake_round_trip(queue_pair, &mut errors)
        })?;
        self.errors.absorb(errors);
        self.wake_submissions += result.operations;
        self.engine_sleeps += self.queue_pair_zero_sleeps()?.saturating_sub(sleeps_before);
        self.record("wake_from_sleep", result);
        Ok(())
    }

    fn bare_client(&mut self, depth: u32) -> Result<(), BenchError> {
        let (clock, schedule) = (self.clock, self.schedule);
        let slice = self.bare.slice(&clock, depth, &schedule)?;
        self.record(&format!("bare_depth{depth}"), slice);
        Ok(())
    }

    fn ring(&mut self, depth: u32) {
        let responder = self.placement.responder_cpu;
        let slice = ring_slice(&self.clock, depth, responder, self.warmup(), self.slice());
        self.record(&format!("ring_depth{depth}"), slice);
    }

    fn round(&mut self) -> Result<(), BenchError> {
        let (clock, warmup, slice, gap) = (self.clock, self.warmup(), self.slice(), self.gap);
        // Each engine figure right next to its floor.
        self.one_queue_pair(1)?;
        let bounce = self.helper.bounce(&clock, warmup, slice)?;
        self.record("bounce", bounce);
        self.bare_client(1)?;
        self.ring(1);
        for depth in [8, 32] {
            self.one_queue_pair(depth)?;
            self.bare_client(depth)?;
            self.ring(depth);
        }
        for depth in DEPTHS {
            self.two_queue_pairs(depth)?;
        }
        let futex = self.helper.futex(&clock, slice, gap)?;
        self.record("futex", futex);
        self.wake_from_sleep()
    }

    /// The contended run: `count` busy loops beside the engine configurations
    /// (no floors), `schedule.rounds` rounds. Nothing if `count` is 0.
    fn contended_rounds(&mut self, count: u32, interference: &mut Interference) -> Result<(), BenchError> {
        if count == 0 {
            return Ok(());
        }
        let contenders = Contenders::start(count)?;
        for pid in contenders.pids() {
            interference.add_pid(pid);
        }
        self.engine_prefix = CONTENDED_PREFIX;
        for _ in 0..self.schedule.rounds {
            for depth in DEPTHS {
                self.one_queue_pair(depth)?;
            }
            for depth in DEPTHS {
                self.two_queue_pairs(depth)?;
            }
        }
        self.engine_prefix = "";
        Ok(())
    }
}

fn placement(engine_pid: u32) -> Placement {
    let poller_cpu = affinity::engine_poller_cpu(engine_pid);
    let pair = affinity::cpu_pair(poller_cpu);
    let responder_cpu = pair.map(|(responder, _)| responder);
    let requester_cpus: Vec<usize> =
        affinity::allowed_cpus(0).into_iter().filter(|&cpu| Some(cpu) != responder_cpu).collect();
    let warning = match (poller_cpu, pair) {
        (_, None) => Some("fewer than two CPUs: nothing is pinned".to_string()),
        (None, Some(_)) => Some(
            "the engine's poller is not pinned: start rdma-engine with --poller-cpu 0 \
             for stable figures (an unpinned poller woken from sleep tends to land on \
             the client's CPU)"
                .to_string(),
        ),
        _ => None,
    };
    Placement { poller_cpu, responder_cpu, requester_cpus, warning }
}

/// Runs every configuration and floor, `options.rounds` times, interleaved.
pub fn run(options: &NopOptions) -> Result<NopReport, BenchError> {
    let wall_start = Instant::now();
    let machine = MachineFacts::collect();
    let clock = TickClock::calibrate();
    let schedule = Schedule::new(options.duration_ms, options.rounds, SLICES_PER_ROUND);
    let client = Client::attach(
        &options.socket,
        &AttachOptions {
            queue_pairs: 2,
            sq_entries: 128,
            buffer_size_bytes: 64 << 10,
            client_name: "rdma-bench nop".into(),
        },
    )
    .map_err(BenchError::Attach)?;
    let snapshot = take_snapshot(&options.socket)?;
    let placement = placement(snapshot.engine_pid);
    if let Some(&cpu) = placement.requester_cpus.first() {
        if placement.responder_cpu.is_some() {
            let _ = affinity::pin_current_thread(cpu);
        }
    }
    let mut queue_pairs = [
        client.take_queue_pair(0).map_err(BenchError::Attach)?,
        client.take_queue_pair(1).map_err(BenchError::Attach)?,
    ];
    let helper = FloorHelper::spawn(placement.responder_cpu)?;
    let bare = BareClient::attach(&options.socket, 128)?;
    let mut interference = Interference::start(&[snapshot.engine_pid, helper.pid()]);
    let mut bench = Bench {
        clock,
        schedule,
        gap: Duration::from_micros(options.gap_us),
        queue_pairs: &mut queue_pairs,
        helper,
        bare,
        placement,
        socket: options.socket.clone(),
        region_id: client.description().region_id,
        series: BTreeMap::new(),
        errors: CompletionErrors::default(),
        engine_sleeps: 0,
        wake_submissions: 0,
        engine_prefix: "",
    };
    for _ in 0..schedule.rounds {
        bench.round()?;
    }
    bench.contended_rounds(options.contend, &mut interference)?;
    if bench.errors.count > 0 {
        return Err(BenchError::Completions {
            count: bench.errors.count,
            first: bench.errors.first.take().unwrap_or_default(),
        });
    }
    let conditions = RunConditions::new(bench.clock.source(), machine, interference.finish(), wall_start.elapsed());
    Ok(report(&bench, options.contend, conditions))
}

fn report(bench: &Bench, contenders: u32, conditions: RunConditions) -> NopReport {
    let clock = &bench.clock;
    let empty = Series::default();
    let series = |name: &str| bench.series.get(name).unwrap_or(&empty);
    let summaries = |names: &[String]| -> BTreeMap<String, Summary> {
        names.iter().map(|name| (name.clone(), series(name).summary(clock, false))).collect()
    };
    let mut engine_names: Vec<String> = Vec::new();
    for queue_pairs in [1, 2] {
        for depth in DEPTHS {
            engine_names.push(format!("qp{queue_pairs}_depth{depth}"));
        }
    }
    engine_names.push("wake_from_sleep".into());
    let mut floor_names: Vec<String> = vec!["bounce".into(), "futex".into()];
    floor_names.extend(DEPTHS.iter().map(|depth| format!("ring_depth{depth}")));
    let engine: BTreeMap<String, EngineFigure> = summaries(&engine_names)
        .into_iter()
        .map(|(name, quiet)| {
            let contended = series(&format!("{CONTENDED_PREFIX}{name}"));
            let figure = if contended.slices.is_empty() {
                EngineFigure { quiet, contended_ops_per_sec: None, contended_p50_ns: None, contended_ratio: None }
            } else {
                let summary = contended.summary(clock, false);
                EngineFigure {
                    contended_ratio: (quiet.ops_per_sec > 0.0).then(|| summary.ops_per_sec / quiet.ops_per_sec),
                    contended_ops_per_sec: Some(summary.ops_per_sec),
                    contended_p50_ns: summary.p50_ns,
                    quiet,
                }
            };
            (name, figure)
        })
        .collect();
    let floors = summaries(&floor_names);
    let bare_names: Vec<String> = DEPTHS.iter().map(|depth| format!("bare_depth{depth}")).collect();
    let bare_client = summaries(&bare_names)
        .into_iter()
        .map(|(name, summary)| (name.trim_start_matches("bare_").to_string(), summary))
        .collect();
    let (best_name, best_ops) = engine
        .iter()
        .filter(|(name, _)| !name.ends_with("depth1") && name.as_str() != "wake_from_sleep")
        .map(|(name, figure)| (name.clone(), figure.quiet.ops_per_sec))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default();
    let best_depth = best_name.rsplit("depth").next().unwrap_or("32").to_string();
    let floor_ops = floors.get(&format!("ring_depth{best_depth}")).map_or(0.0, |summary| summary.ops_per_sec);
    let single = series("qp1_depth1");
    let ratios = Ratios {
        single_p50_vs_bounce_p50: single.p50_ratio(series("bounce"), clock),
        single_p50_vs_ring_p50: single.p50_ratio(series("ring_depth1"), clock),
        ops_vs_ring_by_depth: DEPTHS
            .iter()
            .map(|depth| {
                let name = format!("depth{depth}");
                let ratio = series(&format!("qp1_{name}")).ops_ratio(series(&format!("ring_{name}")), clock);
                (name, ratio)
            })
            .collect(),
        wake_p50_vs_futex_p50: series("wake_from_sleep").p50_ratio(series("futex"), clock),
        library_vs_bare_client_by_depth: DEPTHS
            .iter()
            .map(|depth| {
                let ratio =
                    series(&format!("qp1_depth{depth}")).ops_ratio(series(&format!("bare_depth{depth}")), clock);
                (format!("depth{depth}"), ratio)
            })
            .collect(),
        bare_client_vs_ring_by_depth: DEPTHS
            .iter()
            .map(|depth| {
                let ratio =
                    series(&format!("bare_depth{depth}")).ops_ratio(series(&format!("ring_depth{depth}")), clock);
                (format!("depth{depth}"), ratio)
            })
            .collect(),
    };
    let batched_ratio = series(&best_name).ops_ratio(series(&format!("ring_depth{best_depth}")), clock);
    let targets = vec![
        Target::at_most("single-entry p50 / cache-line bounce p50", ratios.single_p50_vs_bounce_p50, 1.5),
        Target::at_least("batched ops/s / bare ring ops/s", batched_ratio, 0.5),
        Target::at_least("batched NOPs per second", Some(best_ops), 10e6),
        Target::at_most("wake-from-sleep p50 / futex round trip p50", ratios.wake_p50_vs_futex_p50, 1.5),
    ];
    NopReport {
        tool: "rdma-bench nop",
        command: command_line(),
        ops_per_sec: best_ops,
        ops_per_sec_config: best_name,
        p50_ns: engine.get("qp1_depth1").and_then(|figure| figure.quiet.p50_ns),
        floor_p50_ns: floors.get("bounce").and_then(|s| s.p50_ns),
        floor_ops_per_sec: floor_ops,
        wake_p50_ns: engine.get("wake_from_sleep").and_then(|figure| figure.quiet.p50_ns),
        floor_wake_p50_ns: floors.get("futex").and_then(|s| s.p50_ns),
        ratios,
        targets,
        engine,
        floors,
        bare_client,
        engine_sleeps_in_wake_slices: bench.engine_sleeps,
        wake_submissions: bench.wake_submissions,
        schedule: bench.schedule,
        gap_us: bench.gap.as_micros() as u64,
        contenders,
        placement: bench.placement.clone(),
        ticks_per_ns: clock.ticks_per_ns(),
        conditions,
        load_average_after: {
            let load = sysinfo::System::load_average();
            [load.one, load.five, load.fifteen]
        },
    }
}
