//! Per-second rates between two snapshots (watch mode): SQEs taken, reads completed, errors
//! and data bytes, per queue pair and per region, from the counters the engine stores into
//! each queue pair's stats block.
//!
//! The counters are in shared memory a client can scribble on: a counter that went backwards
//! gives no rate for that queue pair rather than a huge one.

use super::{QueuePairStatsSnapshot, Snapshot};
use serde::Serialize;
use std::collections::HashMap;

/// The counters a rate is computed from.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    sqes: u64,
    completions: u64,
    errors: u64,
    bytes: u64,
}

impl Counts {
    fn of(stats: &QueuePairStatsSnapshot) -> Counts {
        Counts { sqes: stats.sqes_taken, completions: stats.cqes_posted, errors: stats.errors, bytes: stats.bytes_read }
    }

    /// `self - earlier`, or `None` when a counter went backwards.
    fn since(self, earlier: Counts) -> Option<Counts> {
        Some(Counts {
            sqes: self.sqes.checked_sub(earlier.sqes)?,
            completions: self.completions.checked_sub(earlier.completions)?,
            errors: self.errors.checked_sub(earlier.errors)?,
            bytes: self.bytes.checked_sub(earlier.bytes)?,
        })
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            sqes: self.sqes.wrapping_add(other.sqes),
            completions: self.completions.wrapping_add(other.completions),
            errors: self.errors.wrapping_add(other.errors),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

/// Per-second rates over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// SQEs the engine took off the ring.
    pub sqes_per_sec: f64,
    /// Completions without an error (reads, and NOPs).
    pub reads_per_sec: f64,
    /// Error completions.
    pub errors_per_sec: f64,
    /// Data bytes read into the client's buffers.
    pub bytes_per_sec: f64,
}

impl Rates {
    fn over(delta: Counts, seconds: f64) -> Rates {
        Rates {
            sqes_per_sec: delta.sqes as f64 / seconds,
            reads_per_sec: delta.completions.saturating_sub(delta.errors) as f64 / seconds,
            errors_per_sec: delta.errors as f64 / seconds,
            bytes_per_sec: delta.bytes as f64 / seconds,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct QueuePairRates {
    pub region_id: u64,
    pub queue_pair: u32,
    #[serde(flatten)]
    pub rates: Rates,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionRates {
    pub region_id: u64,
    /// The sum over the region's queue pairs that have a rate.
    #[serde(flatten)]
    pub rates: Rates,
}

/// Every rate of one frame. Regions and queue pairs not in the previous frame have none.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrameRates {
    /// Seconds between the previous snapshot and this one.
    pub interval_seconds: f64,
    pub regions: Vec<RegionRates>,
    pub queue_pairs: Vec<QueuePairRates>,
}

impl FrameRates {
    pub fn region(&self, region_id: u64) -> Option<&Rates> {
        self.regions.iter().find(|rates| rates.region_id == region_id).map(|rates| &rates.rates)
    }

    pub fn queue_pair(&self, region_id: u64, queue_pair: u32) -> Option<&Rates> {
        self.queue_pairs
            .iter()
            .find(|rates| rates.region_id == region_id && rates.queue_pair == queue_pair)
            .map(|rates| &rates.rates)
    }
}

/// Remembers each queue pair's counters from the previous frame.
#[derive(Debug, Default)]
pub struct RateTracker {
    previous: HashMap<(u64, u32), Counts>,
    previous_at_ns: u64,
}

impl RateTracker {
    /// The rates since the previous snapshot (`None` for the first, or when the clock did not
    /// move), then remembers this one.
    pub fn update(&mut self, snapshot: &Snapshot) -> Option<FrameRates> {
        let rates = self.rates(snapshot);
        self.previous.clear();
        for region in &snapshot.regions {
            for queue_pair in &region.queue_pairs {
                self.previous.insert((region.region_id, queue_pair.index), Counts::of(&queue_pair.stats));
            }
        }
        self.previous_at_ns = snapshot.taken_at_ns;
        rates
    }

    fn rates(&self, snapshot: &Snapshot) -> Option<FrameRates> {
        if self.previous.is_empty() && self.previous_at_ns == 0 {
            return None;
        }
        let elapsed_ns = snapshot.taken_at_ns.checked_sub(self.previous_at_ns).filter(|&ns| ns > 0)?;
        let seconds = elapsed_ns as f64 / 1e9;
        let mut frame = FrameRates { interval_seconds: seconds, ..FrameRates::default() };
        for region in &snapshot.regions {
            let mut total: Option<Counts> = None;
            for queue_pair in &region.queue_pairs {
                let Some(previous) = self.previous.get(&(region.region_id, queue_pair.index)) else { continue };
                let Some(delta) = Counts::of(&queue_pair.stats).since(*previous) else { continue };
                total = Some(total.unwrap_or_default().add(delta));
                let rates = Rates::over(delta, seconds);
                frame.queue_pairs.push(QueuePairRates {
                    region_id: region.region_id,
                    queue_pair: queue_pair.index,
                    rates,
                });
            }
            if let Some(total) = total {
                frame.regions.push(RegionRates { region_id: region.region_id, rates: Rates::over(total, seconds) });
            }
        }
        Some(frame)
    }
}

/// One frame of `ringstat --json --watch`: the snapshot and its rates, on one line.
#[derive(Debug, Serialize)]
pub struct WatchFrame<'a> {
    #[serde(flatten)]
    pub snapshot: &'a Snapshot,
    /// `null` in the first frame.
    pub rates: Option<FrameRates>,
}
