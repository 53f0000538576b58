//! A cheap clock for round-trip timing: the time-stamp counter on x86-64
//! (`lfence; rdtsc; lfence`, about 20–40 ns per reading on this kind of VM),
//! `Instant` elsewhere. Ticks are converted to nanoseconds with a rate
//! measured once against `Instant`.

use std::time::{Duration, Instant};

/// How long [`TickClock::calibrate`] compares ticks with `Instant`.
const CALIBRATION: Duration = Duration::from_millis(50);

/// Converts ticks to nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct TickClock {
    ticks_per_ns: f64,
    epoch: Instant,
}

impl TickClock {
    /// Measures the tick rate (sleeps [`CALIBRATION`]).
    pub fn calibrate() -> TickClock {
        let epoch = Instant::now();
        let start_ticks = raw_ticks(epoch);
        std::thread::sleep(CALIBRATION);
        let end_ticks = raw_ticks(epoch);
        let elapsed_ns = epoch.elapsed().as_nanos().max(1) as f64;
        let ticks_per_ns = end_ticks.saturating_sub(start_ticks) as f64 / elapsed_ns;
        TickClock {
            // A counter that did not move would divide by zero later; fall
            // back to 1 tick per ns (the Instant clock's unit).
            ticks_per_ns: if ticks_per_ns > 0.0 { ticks_per_ns } else { 1.0 },
            epoch,
        }
    }

    /// The current tick count, ordered with the loads and stores around it.
    #[inline(always)]
    pub fn now(&self) -> u64 {
        raw_ticks(self.epoch)
    }

    pub fn ticks_to_ns(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_ns
    }

    pub fn ns_to_ticks(&self, ns: u64) -> u64 {
        (ns as f64 * self.ticks_per_ns) as u64
    }

    /// Ticks per nanosecond (the TSC rate in GHz on x86-64).
    pub fn ticks_per_ns(&self) -> f64 {
        self.ticks_per_ns
    }

    /// Which counter the ticks come from.
    pub fn source(&self) -> &'static str {
        if cfg!(target_arch = "x86_64") {
            "rdtsc"
        } else {
            "instant"
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn raw_ticks(_epoch: Instant) -> u64 {
    use core::arch::x86_64::{_mm_lfence, _rdtsc};
    // SAFETY: lfence and rdtsc exist on every x86-64 CPU, touch no memory,
    // and have no preconditions. The fences keep the reading from drifting
    // across the loads and stores being timed.
    #[allow(unused_unsafe)]
    unsafe {
        _mm_lfence();
        let ticks = _rdtsc();
        _mm_lfence();
        ticks
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn raw_ticks(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_convert() {
        let clock = TickClock::calibrate();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        let elapsed_ns = clock.ticks_to_ns(clock.now() - start);
        assert!(elapsed_ns > 4_000_000.0, "{elapsed_ns}");
        assert!(elapsed_ns < 5_000_000_000.0, "{elapsed_ns}");
    }
}
