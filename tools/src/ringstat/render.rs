//! The human-readable form of a [`Snapshot`], with per-second rates when a
//! previous snapshot is known (watch mode).

use super::{QueuePairSnapshot, RegionSnapshot, Snapshot};
use std::collections::HashMap;
use std::fmt::Write;

/// Remembers each queue pair's counters from the previous frame.
#[derive(Debug, Default)]
pub struct RateTracker {
    previous: HashMap<(u64, u32), (u64, u64, u64)>,
    previous_at_ns: u64,
}

/// Per-second rates of one queue pair since the previous frame.
#[derive(Clone, Copy, Debug)]
struct Rates {
    sqes_per_sec: f64,
    bytes_per_sec: f64,
}

impl RateTracker {
    fn rates(&self, snapshot: &Snapshot, region_id: u64, qp: &QueuePairSnapshot) -> Option<Rates> {
        let (sqes, bytes, _) = *self.previous.get(&(region_id, qp.index))?;
        let seconds = snapshot.taken_at_ns.checked_sub(self.previous_at_ns)? as f64 / 1e9;
        if seconds <= 0.0 {
            return None;
        }
        Some(Rates {
            sqes_per_sec: qp.stats.sqes_taken.wrapping_sub(sqes) as f64 / seconds,
            bytes_per_sec: qp.stats.bytes_read.wrapping_sub(bytes) as f64 / seconds,
        })
    }

    fn remember(&mut self, snapshot: &Snapshot) {
        self.previous.clear();
        for region in &snapshot.regions {
            for qp in &region.queue_pairs {
                self.previous
                    .insert((region.region_id, qp.index), (qp.stats.sqes_taken, qp.stats.bytes_read, qp.stats.sleeps));
            }
        }
        self.previous_at_ns = snapshot.taken_at_ns;
    }
}

/// Renders `snapshot`; with a tracker, adds rates since its last frame and
/// remembers this one.
pub fn render_text(snapshot: &Snapshot, tracker: Option<&mut RateTracker>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "engine pid {} generation {:#x} at {}: {} region(s)",
        snapshot.engine_pid,
        snapshot.engine_generation,
        snapshot.socket,
        snapshot.regions.len()
    );
    let tracker_ref = tracker.as_deref();
    for region in &snapshot.regions {
        render_region(&mut out, snapshot, region, tracker_ref);
    }
    if let Some(tracker) = tracker {
        tracker.remember(snapshot);
    }
    out
}

fn render_region(out: &mut String, snapshot: &Snapshot, region: &RegionSnapshot, tracker: Option<&RateTracker>) {
    let process = match (&region.client_process_name, region.client_alive) {
        (Some(name), true) => format!("{name}, alive"),
        (Some(name), false) => format!("{name}, not alive"),
        (None, _) => "no such process".to_string(),
    };
    let _ = writeln!(
        out,
        "\nregion {}  client pid {} \"{}\" ({})  {} MiB",
        region.region_id,
        region.client_pid,
        region.client_name,
        process,
        region.region_size_bytes >> 20
    );
    if let Some(error) = &region.error {
        let _ = writeln!(out, "  cannot inspect: {error}");
    }
    if let Some(layout) = &region.layout {
        let _ = writeln!(
            out,
            "  backing {} (hugepages: {}, page {} B)  {} queue pair(s) × {} SQ / {} CQ entries  buffer {} KiB",
            layout.backing,
            if layout.hugepages { "yes" } else { "no" },
            layout.page_size_bytes,
            layout.queue_pair_count,
            layout.sq_entries,
            layout.cq_entries,
            layout.buffer_size_bytes >> 10
        );
    }
    if let Some(live) = &region.live {
        let fence =
            if live.region_state == "fenced" { format!(" ({})", live.fence_reason_text) } else { String::new() };
        let _ = writeln!(
            out,
            "  engine {}  region {}{}  heartbeat {:.1} ms ago",
            live.engine_state, live.region_state, fence, live.heartbeat_age_ms
        );
    }
    if !region.queue_pairs.is_empty() {
        let _ = writeln!(
            out,
            "  {:>3} {:>10} {:>10} {:>6} {:>4} {:>10} {:>10} {:>6} {:>4} {:>12} {:>12} {:>8} {:>8} {:>9} {:>9}",
            "qp",
            "sq_head",
            "sq_tail",
            "sq_fl",
            "sqW",
            "cq_head",
            "cq_tail",
            "cq_fl",
            "cqW",
            "sqes",
            "cqes",
            "errors",
            "invalid",
            "sleeps",
            "wakeups"
        );
    }
    for qp in &region.queue_pairs {
        render_queue_pair(out, snapshot, region.region_id, qp, tracker);
    }
}

fn render_queue_pair(
    out: &mut String,
    snapshot: &Snapshot,
    region_id: u64,
    qp: &QueuePairSnapshot,
    tracker: Option<&RateTracker>,
) {
    let flag = |set: bool| if set { "W" } else { "-" };
    let _ = writeln!(
        out,
        "  {:>3} {:>10} {:>10} {:>6} {:>4} {:>10} {:>10} {:>6} {:>4} {:>12} {:>12} {:>8} {:>8} {:>9} {:>9}",
        qp.index,
        qp.sq_head,
        qp.sq_tail,
        qp.sq_in_flight,
        flag(qp.sq_need_wakeup),
        qp.cq_head,
        qp.cq_tail,
        qp.cq_in_flight,
        flag(qp.cq_need_wakeup),
        qp.stats.sqes_taken,
        qp.stats.cqes_posted,
        qp.stats.errors,
        qp.stats.invalid_entries,
        qp.stats.sleeps,
        qp.stats.client_wakeups
    );
    let rates = tracker.and_then(|tracker| tracker.rates(snapshot, region_id, qp));
    let _ = write!(out, "      bytes read {}  engine in flight {}", qp.stats.bytes_read, qp.stats.in_flight);
    if let Some(rates) = rates {
        let _ = write!(out, "  rate {:.0} SQEs/s, {:.1} MB/s", rates.sqes_per_sec, rates.bytes_per_sec / 1e6);
    }
    out.push('\n');
}
