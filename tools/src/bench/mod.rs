//! `rdma-bench`: engine figures measured beside the floors that bound them,
//! in the same run, in short alternating rounds.
//!
//! The VM this was built on moves its two vCPUs between a "near" (≈ 240 ns
//! cache-line round trip) and a "far" (≈ 650–760 ns) placement every few
//! seconds, so a figure measured a minute after its floor can be off by 3×.
//! Every measurement here is a [`Series`] of short slices, one per round,
//! with the engine slice next to its floor slice; a summary quotes the
//! median across rounds, and a ratio is the median of the per-round ratios
//! (each round's engine figure over the same round's floor).
//!
//! - [`nop`]: NOP round trips (`rdma-bench nop`).
//! - [`floor`]: cache-line bounce and futex wake between two processes;
//!   [`ring_floor`]: the ring code between two threads;
//!   [`bare_client`]: the engine driven without the client library.
//! - [`pipeline`]: the timing loops all of them share.
//! - [`compare`]: every read path against SeaweedFS's own HTTP GET, with a
//!   real `weed` (`rdma-bench compare`).
//! - [`contend`]: the busy-loop processes of `--contend N`.
//! - [`index`]: the needle index's memory, build and lookup time against the map it
//!   replaced (`rdma-bench index`).
//! - [`read`]: needle reads against `pread` (`--transport local`) or against
//!   a bare `ucp_get_nbx` loop from the same exporter (`--transport ucx`).

pub mod bare_client;
pub mod compare;
pub mod contend;
pub mod floor;
pub mod index;
pub mod needles;
pub mod nop;
pub mod pipeline;
pub mod read;
pub mod reader;
pub mod remote_index;
pub mod restart;
pub mod ring_floor;
mod table;

pub use table::{render_nop, render_read, render_read_ucx};

use crate::histogram::Histogram;
use crate::timing::TickClock;
use rdma_client::ClientError;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot attach to the engine: {0}")]
    Attach(ClientError),
    #[error("the engine failed during the run: {0}")]
    Engine(ClientError),
    #[error("cannot inspect the engine: {0}")]
    Inspect(#[from] crate::ringstat::RingstatError),
    #[error("the floor helper process failed: {0}")]
    Helper(String),
    #[error("{0}")]
    Volumes(String),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{count} completions carried errors (first: {first})")]
    Completions { count: u64, first: String },
    #[error("the exporter failed the floor: {0}")]
    Exporter(String),
    #[error("an index case failed: {0}")]
    IndexCase(String),
    #[error("cannot set the run up: {0}")]
    Setup(String),
}

impl BenchError {
    pub fn exit_code(&self) -> i32 {
        use crate::exit_code;
        match self {
            BenchError::Attach(_) | BenchError::Engine(_) | BenchError::Inspect(_) | BenchError::Exporter(_) => {
                exit_code::ENGINE
            }
            BenchError::Completions { .. } => exit_code::NEEDLE,
            BenchError::Helper(_)
            | BenchError::Volumes(_)
            | BenchError::Verify(_)
            | BenchError::IndexCase(_)
            | BenchError::Setup(_) => exit_code::OTHER,
        }
    }
}

/// How long and how often to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Schedule {
    pub rounds: u32,
    /// Measured time of one slice (one measurement in one round).
    pub slice_ms: u64,
    /// Unmeasured warm-up before each slice.
    pub warmup_ms: u64,
}

impl Schedule {
    /// Splits `duration_ms` of measuring over `rounds` rounds of
    /// `measurement_count` slices each; slices are at least 2 ms.
    pub fn new(duration_ms: u64, rounds: u32, measurement_count: u32) -> Schedule {
        let rounds = rounds.max(1);
        let slice_ms = (duration_ms / (rounds as u64 * measurement_count.max(1) as u64)).max(2);
        Schedule { rounds, slice_ms, warmup_ms: (slice_ms / 10).max(1) }
    }
}

/// One slice's raw result: operations completed in the measured window, the
/// window's length, and the latency of each operation in ticks.
#[derive(Clone, Debug, Default)]
pub struct SliceResult {
    pub operations: u64,
    pub bytes: u64,
    pub elapsed_ticks: u64,
    pub latency_ticks: Histogram,
}

impl SliceResult {
    fn merge_parallel(&mut self, other: &SliceResult) {
        self.operations += other.operations;
        self.bytes += other.bytes;
        self.elapsed_ticks = self.elapsed_ticks.max(other.elapsed_ticks);
        self.latency_ticks.merge(&other.latency_ticks);
    }

    fn ops_per_sec(&self, clock: &TickClock) -> f64 {
        let seconds = clock.ticks_to_ns(self.elapsed_ticks) / 1e9;
        if seconds > 0.0 {
            self.operations as f64 / seconds
        } else {
            0.0
        }
    }

    fn bytes_per_sec(&self, clock: &TickClock) -> f64 {
        let seconds = clock.ticks_to_ns(self.elapsed_ticks) / 1e9;
        if seconds > 0.0 {
            self.bytes as f64 / seconds
        } else {
            0.0
        }
    }

    fn p50_ns(&self, clock: &TickClock) -> Option<f64> {
        self.latency_ticks.quantile(0.5).map(|ticks| clock.ticks_to_ns(ticks))
    }
}

/// One measurement over all rounds.
#[derive(Debug, Default)]
pub struct Series {
    pub slices: Vec<SliceResult>,
}

/// A series summarised for people and JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Median over rounds of each slice's rate.
    pub ops_per_sec: f64,
    /// Median over rounds of each slice's byte rate (reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
    /// Median over rounds of each slice's median latency.
    pub p50_ns: Option<f64>,
    /// Over every sample of every round (tails need the samples pooled).
    pub p99_ns: Option<f64>,
    pub p999_ns: Option<f64>,
    pub max_ns: Option<f64>,
    pub samples: u64,
    /// Each round's rate, in round order (shows placement flips).
    pub ops_per_sec_by_round: Vec<f64>,
    /// Each round's median latency, in round order.
    pub p50_ns_by_round: Vec<f64>,
}

/// The median of `values` (NaN-free input), `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 })
}

impl Series {
    pub fn push(&mut self, slice: SliceResult) {
        self.slices.push(slice);
    }

    pub fn summary(&self, clock: &TickClock, with_bytes: bool) -> Summary {
        let ops: Vec<f64> = self.slices.iter().map(|s| s.ops_per_sec(clock)).collect();
        let p50s: Vec<f64> = self.slices.iter().filter_map(|s| s.p50_ns(clock)).collect();
        let bytes: Vec<f64> = self.slices.iter().map(|s| s.bytes_per_sec(clock)).collect();
        let mut pooled = Histogram::new();
        for slice in &self.slices {
            pooled.merge(&slice.latency_ticks);
        }
        let quantile = |q| pooled.quantile(q).map(|ticks| clock.ticks_to_ns(ticks));
        Summary {
            ops_per_sec: median(&ops).unwrap_or(0.0),
            bytes_per_sec: if with_bytes { median(&bytes) } else { None },
            p50_ns: median(&p50s),
            p99_ns: quantile(0.99),
            p999_ns: quantile(0.999),
            max_ns: (pooled.count() > 0).then(|| clock.ticks_to_ns(pooled.max())),
            samples: pooled.count(),
            ops_per_sec_by_round: ops.iter().map(|v| v.round()).collect(),
            p50_ns_by_round: p50s.iter().map(|v| v.round()).collect(),
        }
    }

    /// Median over rounds of (this round's p50) / (floor's p50 that round).
    pub fn p50_ratio(&self, floor: &Series, clock: &TickClock) -> Option<f64> {
        let ratios: Vec<f64> = self
            .slices
            .iter()
            .zip(&floor.slices)
            .filter_map(|(mine, theirs)| Some(mine.p50_ns(clock)? / theirs.p50_ns(clock)?))
            .collect();
        median(&ratios)
    }

    /// Median over rounds of (this round's p50) − (floor's p50 that round), in ns.
    pub fn p50_difference_ns(&self, floor: &Series, clock: &TickClock) -> Option<f64> {
        let differences: Vec<f64> = self
            .slices
            .iter()
            .zip(&floor.slices)
            .filter_map(|(mine, theirs)| Some(mine.p50_ns(clock)? - theirs.p50_ns(clock)?))
            .collect();
        median(&differences)
    }

    /// Median over rounds of (this round's ops/s) / (floor's ops/s that round).
    pub fn ops_ratio(&self, floor: &Series, clock: &TickClock) -> Option<f64> {
        let ratios: Vec<f64> = self
            .slices
            .iter()
            .zip(&floor.slices)
            .map(|(mine, theirs)| mine.ops_per_sec(clock) / theirs.ops_per_sec(clock))
            .collect();
        median(&ratios)
    }

    /// As [`Series::ops_ratio`], for byte rates.
    pub fn bytes_ratio(&self, floor: &Series, clock: &TickClock) -> Option<f64> {
        let ratios: Vec<f64> = self
            .slices
            .iter()
            .zip(&floor.slices)
            .map(|(mine, theirs)| mine.bytes_per_sec(clock) / theirs.bytes_per_sec(clock))
            .collect();
        median(&ratios)
    }
}

/// A target figure and whether this run met it (reported, never asserted).
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: &'static str,
    pub value: Option<f64>,
    pub bound: f64,
    /// "<=" or ">=".
    pub relation: &'static str,
    pub met: Option<bool>,
}

impl Target {
    pub fn at_most(what: &'static str, value: Option<f64>, bound: f64) -> Target {
        Target { what, value, bound, relation: "<=", met: value.map(|v| v <= bound) }
    }

    pub fn at_least(what: &'static str, value: Option<f64>, bound: f64) -> Target {
        Target { what, value, bound, relation: ">=", met: value.map(|v| v >= bound) }
    }
}

/// Above this share of all CPUs used by other processes during a run, the
/// figures are flagged as disturbed.
pub const INTERFERENCE_WARNING_PERCENT: f64 = 5.0;

/// The warning for a run other processes disturbed, if it was.
/// How a run went: the clock, the machine, and how quiet it was. Flattened
/// into every benchmark report.
#[derive(Clone, Debug, Serialize)]
pub struct RunConditions {
    pub clock_source: &'static str,
    pub steal_percent: f64,
    /// CPU time other processes used during the run, % of all CPUs.
    pub other_cpu_percent: f64,
    pub interference_warning: Option<String>,
    pub machine: crate::machine::MachineFacts,
    pub wall_time_ms: u64,
}

impl RunConditions {
    pub fn new(
        clock_source: &'static str,
        machine: crate::machine::MachineFacts,
        (other_cpu_percent, steal_percent): (f64, f64),
        wall: Duration,
    ) -> RunConditions {
        RunConditions {
            clock_source,
            steal_percent,
            other_cpu_percent,
            interference_warning: interference_warning(other_cpu_percent),
            machine,
            wall_time_ms: wall.as_millis() as u64,
        }
    }

    /// `R rounds × S ms slices; steal …, other processes …` for the tables.
    pub fn summary_line(&self, schedule: &Schedule) -> String {
        format!(
            "{} rounds × {} ms slices; steal {:.2}%, other processes {:.1}% of CPU",
            schedule.rounds, schedule.slice_ms, self.steal_percent, self.other_cpu_percent
        )
    }
}

pub fn interference_warning(other_cpu_percent: f64) -> Option<String> {
    (other_cpu_percent > INTERFERENCE_WARNING_PERCENT).then(|| {
        format!(
            "other processes used {other_cpu_percent:.0}% of all CPU time during the run: \
             these figures are disturbed; re-run on a quiet machine"
        )
    })
}

/// The command line as run, for the report.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn schedule_splits_the_budget() {
        let schedule = Schedule::new(12_000, 5, 12);
        assert_eq!(schedule.slice_ms, 200);
        assert_eq!(schedule.warmup_ms, 20);
        assert_eq!(Schedule::new(10, 5, 12).slice_ms, 2);
    }
}
