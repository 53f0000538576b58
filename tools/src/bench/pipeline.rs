//! Timing loops shared by every measurement: back-to-back (or spaced)
//! round trips, and the book-keeping of a pipelined slice.

use super::{BenchError, SliceResult};
use crate::timing::TickClock;
use std::time::Duration;

/// Times `operation` back to back (or `gap` apart) for `slice` after `warmup`.
pub fn measure_round_trips(
    clock: &TickClock,
    warmup: Duration,
    slice: Duration,
    gap: Option<Duration>,
    mut operation: impl FnMut(u64) -> Result<(), BenchError>,
) -> Result<SliceResult, BenchError> {
    let mut result = SliceResult::default();
    let warmup_ticks = clock.ns_to_ticks(warmup.as_nanos() as u64);
    let slice_ticks = clock.ns_to_ticks(slice.as_nanos() as u64);
    let begin = clock.now();
    let mut measure_start: Option<u64> = None;
    let mut sequence = 0u64;
    loop {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let start = clock.now();
        operation(sequence)?;
        let end = clock.now();
        sequence += 1;
        match measure_start {
            Some(measure_start) => {
                result.latency_ticks.record(end - start);
                result.operations += 1;
                if end - measure_start >= slice_ticks {
                    result.elapsed_ticks = end - measure_start;
                    return Ok(result);
                }
            }
            None if end - begin >= warmup_ticks => measure_start = Some(end),
            None => {}
        }
    }
}

/// Book-keeping of a pipelined slice: submission stamps in FIFO order (a
/// ring completes in order), latency per completion, the measured window.
#[derive(Debug)]
pub struct Pipeline<'a> {
    clock: &'a TickClock,
    stamps: std::collections::VecDeque<u64>,
    pub in_flight: u32,
    begin: u64,
    warmup_ticks: u64,
    slice_ticks: u64,
    measure_start: Option<u64>,
    last_now: u64,
    result: SliceResult,
    done: bool,
}

impl<'a> Pipeline<'a> {
    pub fn new(clock: &'a TickClock, warmup: Duration, slice: Duration) -> Pipeline<'a> {
        let begin = clock.now();
        Pipeline {
            clock,
            stamps: std::collections::VecDeque::with_capacity(1024),
            in_flight: 0,
            begin,
            warmup_ticks: clock.ns_to_ticks(warmup.as_nanos() as u64),
            slice_ticks: clock.ns_to_ticks(slice.as_nanos() as u64),
            measure_start: None,
            last_now: begin,
            result: SliceResult::default(),
            done: false,
        }
    }

    #[inline]
    pub fn submitted(&mut self, stamp: u64) {
        self.stamps.push_back(stamp);
        self.in_flight += 1;
    }

    /// `count` completions arrived, oldest first; stamps them with one reading.
    #[inline]
    pub fn completed(&mut self, count: u32) {
        self.completed_bytes(count, 0);
    }

    /// As `completed`, with `bytes` delivered by them.
    #[inline]
    pub fn completed_bytes(&mut self, count: u32, bytes: u64) {
        let now = self.clock.now();
        self.last_now = now;
        let measuring = self.measure_start.is_some();
        for _ in 0..count {
            let stamp = self.stamps.pop_front().unwrap_or(now);
            if measuring {
                self.result.latency_ticks.record(now.saturating_sub(stamp));
            }
        }
        self.in_flight = self.in_flight.saturating_sub(count);
        if measuring {
            self.result.operations += count as u64;
            self.result.bytes += bytes;
        }
        self.advance(now);
    }

    /// Nothing arrived: look at the clock now and then.
    #[inline]
    pub fn idle(&mut self) {
        let now = self.clock.now();
        self.last_now = now;
        self.advance(now);
    }

    fn advance(&mut self, now: u64) {
        match self.measure_start {
            None if now - self.begin >= self.warmup_ticks => self.measure_start = Some(now),
            Some(start) if now - start >= self.slice_ticks => {
                self.result.elapsed_ticks = now - start;
                self.done = true;
            }
            _ => {}
        }
    }

    pub fn finished(&self) -> bool {
        self.done
    }

    pub fn into_result(self) -> SliceResult {
        self.result
    }
}
