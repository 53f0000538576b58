//! The client side of the engine measurements: keep NOPs in flight through
//! `rdma-client` for one slice, and the single NOP after a sleep.

use crate::bench::pipeline::Pipeline;
use crate::bench::{BenchError, Schedule, SliceResult};
use crate::timing::TickClock;
use rdma_client::{ClientError, Operation, QueuePair};
use std::time::{Duration, Instant};

/// The bound on one wait for a completion; past it the engine counts as gone.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors seen in completions (a NOP should never fail).
#[derive(Debug, Default)]
pub(super) struct CompletionErrors {
    pub(super) count: u64,
    pub(super) first: Option<String>,
}

impl CompletionErrors {
    pub(super) fn note(&mut self, completion: &rdma_client::Completion) {
        if let Err(error) = completion.result() {
            self.count += 1;
            self.first.get_or_insert_with(|| error.to_string());
        }
    }

    pub(super) fn absorb(&mut self, other: CompletionErrors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Keeps `depth` NOPs in flight on `queue_pair` for one slice.
pub(super) fn engine_slice(
    queue_pair: &mut QueuePair,
    clock: &TickClock,
    depth: u32,
    schedule: &Schedule,
) -> Result<(SliceResult, CompletionErrors), BenchError> {
    let mut errors = CompletionErrors::default();
    let mut pipeline =
        Pipeline::new(clock, Duration::from_millis(schedule.warmup_ms), Duration::from_millis(schedule.slice_ms));
    while !pipeline.finished() {
        let wanted = depth.saturating_sub(pipeline.in_flight);
        if wanted > 0 {
            let stamp = clock.now();
            for _ in 0..wanted {
                queue_pair.prepare(Operation::Nop, 0).map_err(BenchError::Engine)?;
                pipeline.submitted(stamp);
            }
            queue_pair.submit().map_err(BenchError::Engine)?;
        }
        let mut reaped = 0u32;
        while let Some(completion) = queue_pair.reap_one().map_err(BenchError::Engine)? {
            errors.note(&completion);
            reaped += 1;
        }
        if reaped > 0 {
            pipeline.completed(reaped);
            continue;
        }
        // Nothing yet: wait as a client does (the library spins while
        // spinning pays, then sleeps).
        queue_pair.wait(1, STALL_TIMEOUT).map_err(BenchError::Engine)?;
        pipeline.idle();
    }
    drain(queue_pair, &mut errors)?;
    Ok((pipeline.into_result(), errors))
}

/// Reaps everything still in flight, within a bound.
fn drain(queue_pair: &mut QueuePair, errors: &mut CompletionErrors) -> Result<(), BenchError> {
    while queue_pair.in_flight() > 0 {
        queue_pair.wait(1, STALL_TIMEOUT).map_err(BenchError::Engine)?;
        while let Some(completion) = queue_pair.reap_one().map_err(BenchError::Engine)? {
            errors.note(&completion);
        }
    }
    Ok(())
}

/// One NOP after a sleep: submit, then spin (bounded) for its completion.
pub(super) fn wake_round_trip(queue_pair: &mut QueuePair, errors: &mut CompletionErrors) -> Result<(), BenchError> {
    queue_pair.prepare(Operation::Nop, 0).map_err(BenchError::Engine)?;
    queue_pair.submit().map_err(BenchError::Engine)?;
    let mut spins = 0u32;
    let start = Instant::now();
    loop {
        if let Some(completion) = queue_pair.reap_one().map_err(BenchError::Engine)? {
            errors.note(&completion);
            return Ok(());
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(65_536) && start.elapsed() > STALL_TIMEOUT {
            return Err(BenchError::Engine(ClientError::TimedOut {
                waited_ms: STALL_TIMEOUT.as_millis() as u64,
                wanted: 1,
                available: 0,
            }));
        }
    }
}
