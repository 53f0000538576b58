//! The benches' latency histograms: HdrHistogram (`hdrhistogram` crate) at 3 significant
//! digits (0.1 %), auto-resizing, so a value of any size is recorded and histograms of several
//! threads or rounds merge. This module only keeps the few calls the benches make in one place.

/// Counts of values (ticks or nanoseconds; the caller knows which).
#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram(hdrhistogram::Histogram::new(3).expect("3 significant digits are within HdrHistogram's range"))
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `times` values equal to `value`. (Not `saturating_record_n`: that clamps the
    /// value to the range the histogram has so far, where this one grows the range.)
    #[inline]
    pub fn record_n(&mut self, value: u64, times: u64) {
        self.0.record_n(value, times).expect("an auto-resizing histogram takes every u64");
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.0.add(&other.0).expect("an auto-resizing histogram takes every value of another");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The value at quantile `q` (0.5 for the median), `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q.clamp(0.0, 1.0)))
    }

    pub fn clear(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_uniform_run_and_a_merge() {
        let mut histogram = Histogram::new();
        for value in 1..=1000 {
            histogram.record(value);
        }
        assert_eq!(histogram.quantile(0.5), Some(500));
        assert_eq!(histogram.quantile(1.0), Some(1000));
        assert_eq!(histogram.count(), 1000);
        assert_eq!(Histogram::new().quantile(0.5), None);
        let mut other = Histogram::new();
        other.record_n(5_000_000_000, 1000);
        histogram.merge(&other);
        assert_eq!((other.count(), histogram.count()), (1000, 2000));
        let p99 = histogram.quantile(0.99).unwrap();
        assert!(p99.abs_diff(5_000_000_000) * 1000 <= 5_000_000_000, "{p99}");
        histogram.clear();
        assert_eq!(histogram.count(), 0);
    }
}
