//! The human-readable form of a [`Snapshot`], with per-second rates when a
//! previous snapshot is known (watch mode).

use super::rates::{FrameRates, RateTracker, Rates};
use super::{QueuePairSnapshot, RegionSnapshot, Snapshot};
use std::fmt::Write;

/// Renders `snapshot`; with a tracker, adds rates since its last frame and
/// remembers this one.
pub fn render_text(snapshot: &Snapshot, tracker: Option<&mut RateTracker>) -> String {
    let mut out = String::new();
    let transport = snapshot.remote_transport.as_deref().map(|name| format!(", remote transport {name}"));
    let _ = writeln!(
        out,
        "engine pid {} generation {:#x} at {}: {} region(s){}",
        snapshot.engine_pid,
        snapshot.engine_generation,
        snapshot.socket,
        snapshot.regions.len(),
        transport.unwrap_or_default()
    );
    let rates = tracker.and_then(|tracker| tracker.update(snapshot));
    if let Some(rates) = &rates {
        let _ = writeln!(out, "rates over the last {:.2} s", rates.interval_seconds);
    }
    for region in &snapshot.regions {
        render_region(&mut out, region, rates.as_ref());
    }
    out
}

/// `12 SQEs/s, 10 reads/s, 2 errors/s, 1.2 MB/s`.
fn rate_text(rates: &Rates) -> String {
    format!(
        "{:.0} SQEs/s, {:.0} reads/s, {:.0} errors/s, {:.1} MB/s",
        rates.sqes_per_sec,
        rates.reads_per_sec,
        rates.errors_per_sec,
        rates.bytes_per_sec / 1e6
    )
}

fn render_region(out: &mut String, region: &RegionSnapshot, rates: Option<&FrameRates>) {
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
    if let Some(region_rates) = rates.and_then(|rates| rates.region(region.region_id)) {
        let _ = writeln!(out, "  rate {}", rate_text(region_rates));
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
        let qp_rates = rates.and_then(|rates| rates.queue_pair(region.region_id, qp.index));
        render_queue_pair(out, qp, qp_rates);
    }
}

fn render_queue_pair(out: &mut String, qp: &QueuePairSnapshot, rates: Option<&Rates>) {
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
    let _ = write!(out, "      bytes read {}  engine in flight {}", qp.stats.bytes_read, qp.stats.in_flight);
    if let Some(rates) = rates {
        let _ = write!(out, "  rate {}", rate_text(rates));
    }
    out.push('\n');
}
