//! Pieces of the reports: totals over the clients' counters, recovery times as count,
//! median and max, and the table rows.

use super::counters::{ClientSlot, Counters};
use serde::Serialize;

/// Sums over every client slot of a run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ClientTotals {
    pub reads_ok: u64,
    pub bytes_ok: u64,
    pub wrong_reads: u64,
    pub hangs: u64,
    pub read_errors: u64,
    pub session_errors: u64,
    pub attaches: u64,
    pub attach_failures: u64,
    pub detaches: u64,
    pub regions: u64,
}

impl ClientTotals {
    pub fn of(counters: &Counters, slots: impl Iterator<Item = usize>) -> ClientTotals {
        let mut totals = ClientTotals::default();
        for slot in slots.map(|index| counters.slot(index)) {
            totals.reads_ok += ClientSlot::get(&slot.reads_ok);
            totals.bytes_ok += ClientSlot::get(&slot.bytes_ok);
            totals.wrong_reads += ClientSlot::get(&slot.wrong_reads);
            totals.hangs += ClientSlot::get(&slot.hangs);
            totals.read_errors += ClientSlot::get(&slot.read_errors);
            totals.session_errors += ClientSlot::get(&slot.session_errors);
            totals.attaches += ClientSlot::get(&slot.attaches);
            totals.attach_failures += ClientSlot::get(&slot.attach_failures);
            totals.detaches += ClientSlot::get(&slot.detaches);
            totals.regions += ClientSlot::get(&slot.regions);
        }
        totals
    }
}

/// Recovery times of one kind of fault, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recoveries {
    pub count: usize,
    pub median_ms: f64,
    pub max_ms: f64,
    #[serde(skip)]
    samples_ms: Vec<f64>,
}

impl Recoveries {
    pub fn record(&mut self, milliseconds: f64) {
        self.samples_ms.push(milliseconds);
        let mut sorted = self.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        self.count = sorted.len();
        self.median_ms = sorted[sorted.len() / 2];
        self.max_ms = sorted[sorted.len() - 1];
    }
}

/// One `name  value` row of a text table.
pub fn row(name: &str, value: impl std::fmt::Display) -> String {
    format!("{name:<44} {value}\n")
}
