//! A fixed-size log-linear histogram: recording is one index computation
//! and one add (no allocation in a timed loop), precision is 1/64 of the
//! value (about 1.6 %), and histograms of several threads or rounds merge.

/// Mantissa bits: 64 sub-buckets per power of two.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKET_COUNT: usize = 1 << SUB_BUCKET_BITS;
/// Values below 64 are exact; each power of two above gets 64 buckets.
const BUCKET_COUNT: usize = (64 - SUB_BUCKET_BITS as usize + 1) * SUB_BUCKET_COUNT;

/// Counts of values (ticks or nanoseconds; the caller knows which).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKET_COUNT]>,
    count: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("count", &self.count).field("max", &self.max).finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKET_COUNT as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    let group = (shift + 1) as usize;
    group * SUB_BUCKET_COUNT + ((value >> shift) as usize & (SUB_BUCKET_COUNT - 1))
}

/// The middle of a bucket's value range.
fn value_of(bucket: usize) -> u64 {
    if bucket < SUB_BUCKET_COUNT {
        return bucket as u64;
    }
    let group = bucket / SUB_BUCKET_COUNT;
    let mantissa = (bucket % SUB_BUCKET_COUNT) as u64;
    let shift = (group - 1) as u32;
    let low = (SUB_BUCKET_COUNT as u64 + mantissa) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { counts: Box::new([0; BUCKET_COUNT]), count: 0, max: 0 }
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `times` values equal to `value`.
    #[inline]
    pub fn record_n(&mut self, value: u64, times: u64) {
        self.counts[bucket_of(value)] += times;
        self.count += times;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.5 for the median), `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(value_of(bucket).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.max = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut previous = 0;
        for value in 1..100_000u64 {
            let bucket = bucket_of(value);
            assert!(bucket == previous || bucket == previous + 1, "{value}");
            previous = bucket;
            let back = value_of(bucket);
            assert!(back.abs_diff(value) * 64 <= value.max(64), "{value} -> {back}");
        }
        assert!(bucket_of(u64::MAX) < BUCKET_COUNT);
    }

    #[test]
    fn quantiles_of_a_uniform_run() {
        let mut histogram = Histogram::new();
        for value in 1..=1000 {
            histogram.record(value);
        }
        let median = histogram.quantile(0.5).unwrap();
        assert!((490..=510).contains(&median), "{median}");
        assert_eq!(histogram.quantile(1.0), Some(1000));
        assert_eq!(Histogram::new().quantile(0.5), None);
        let mut other = Histogram::new();
        other.record_n(5000, 1000);
        histogram.merge(&other);
        assert!(histogram.quantile(0.99).unwrap() > 4900);
    }
}
