//! One clock for deadlines and heartbeats: `CLOCK_MONOTONIC`, which every
//! process on the host shares.

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; a zero would only make deadlines
    // look far away, never panic.
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64,
        Err(_) => 0,
    }
}
