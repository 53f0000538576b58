//! The engine side of `rdma-bench read`, the same for every transport: a
//! client attached to the engine's socket, buffers for each size, one read
//! per size verified byte for byte, and pipelined slices of reads.

use super::{BenchError, NeedleRef, Schedule, SliceResult, READ_TIMEOUT};
use crate::bench::pipeline::Pipeline;
use crate::timing::TickClock;
use rdma_client::{AttachOptions, Buffer, Client, CompletionError, ErrorCode, Operation, QueuePair};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One read per size, compared with the file.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub file_id: String,
    pub data_size_bytes: u64,
    /// Where the engine says the bytes came from (`local`, `rdma`).
    pub source: &'static str,
}

/// Buffers of one size, recycled as completions hand them back.
#[derive(Debug)]
struct BufferPool {
    free: Vec<Buffer>,
}

/// A client of the engine with `depth_max` buffers per size.
#[derive(Debug)]
pub(super) struct EngineReads {
    client: Client,
    queue_pair: QueuePair,
    pools: BTreeMap<u64, BufferPool>,
    error_count: u64,
    first_error: Option<String>,
}

fn read_operation(needle: &NeedleRef, buffer: Buffer) -> Operation {
    Operation::ReadNeedle {
        volume_id: needle.file_id.volume_id,
        needle_id: needle.file_id.needle_id,
        cookie: needle.file_id.cookie,
        buffer,
    }
}

/// A buffer that holds the largest record of `needles`, in whole pages.
fn buffer_length(needles: &[NeedleRef]) -> u32 {
    let largest = needles.iter().map(|n| n.record_size_bytes).max().unwrap_or(4096);
    (largest.div_ceil(4096) * 4096).min(u32::MAX as u64) as u32
}

impl EngineReads {
    /// Attaches to the engine at `socket` with one queue pair and `depth_max`
    /// buffers for each size of `needles`.
    pub(super) fn attach(
        socket: &Path,
        needles: &BTreeMap<u64, Vec<NeedleRef>>,
        depth_max: u32,
        client_name: &str,
    ) -> Result<EngineReads, BenchError> {
        let area_bytes: u64 =
            needles.values().map(|list| buffer_length(list) as u64 * depth_max as u64).sum::<u64>() + (1 << 20);
        let client = Client::attach(
            socket,
            &AttachOptions {
                queue_pairs: 1,
                sq_entries: 64,
                buffer_size_bytes: area_bytes,
                client_name: client_name.into(),
            },
        )
        .map_err(BenchError::Attach)?;
        let queue_pair = client.take_queue_pair(0).map_err(BenchError::Attach)?;
        let mut pools = BTreeMap::new();
        for (size, list) in needles {
            let length = buffer_length(list);
            let free = (0..depth_max)
                .map(|_| client.allocate(length))
                .collect::<Result<Vec<_>, _>>()
                .map_err(BenchError::Attach)?;
            pools.insert(*size, BufferPool { free });
        }
        Ok(EngineReads { client, queue_pair, pools, error_count: 0, first_error: None })
    }

    /// Reads `needle` (of data size `size`) once and compares the bytes with the file.
    pub(super) fn verify(&mut self, size: u64, needle: &NeedleRef) -> Result<Verified, BenchError> {
        let expected = needle.expected_data().map_err(BenchError::Verify)?;
        let pool = self.pools.get_mut(&size).expect("a pool per size");
        let buffer = pool.free.pop().expect("a pool holds depth_max ≥ 1 buffers");
        self.queue_pair
            .prepare(read_operation(needle, buffer), 0)
            .and_then(|()| self.queue_pair.submit())
            .and_then(|()| self.queue_pair.wait(1, READ_TIMEOUT))
            .map_err(BenchError::Engine)?;
        let completion = self
            .queue_pair
            .reap_one()
            .map_err(BenchError::Engine)?
            .ok_or_else(|| BenchError::Verify("no completion after wait".into()))?;
        let result = completion.result();
        let source = completion.source().name();
        let data = completion
            .data_range()
            .and_then(|range| {
                let buffer = completion.buffer.as_ref()?;
                self.client.bytes(buffer).get(range).map(<[u8]>::to_vec)
            })
            .unwrap_or_default();
        if let Some(buffer) = completion.buffer {
            pool.free.push(buffer);
        }
        match result {
            Ok(_) if data == expected => {
                Ok(Verified { file_id: needle.file_id.to_string(), data_size_bytes: expected.len() as u64, source })
            }
            Ok(_) => Err(BenchError::Verify(format!(
                "{}: the engine delivered {} bytes that differ from the file's {} data bytes",
                needle.file_id,
                data.len(),
                expected.len()
            ))),
            Err(CompletionError::Engine { code: ErrorCode::BUFFER_TOO_SMALL, needed_bytes }) => {
                Err(BenchError::Verify(format!(
                    "{}: the engine needs a {needed_bytes}-byte buffer for a {}-byte record",
                    needle.file_id, needle.record_size_bytes
                )))
            }
            Err(error) => Err(BenchError::Verify(format!("{}: {error}", needle.file_id))),
        }
    }

    /// Keeps `depth` reads of `needles` (cycled) in flight for one slice.
    /// Latency is stamped per submission batch and per reaped batch, oldest
    /// stamp first (the [`Pipeline`]'s FIFO book-keeping).
    pub(super) fn slice(
        &mut self,
        clock: &TickClock,
        schedule: &Schedule,
        size: u64,
        needles: &[NeedleRef],
        depth: u32,
    ) -> Result<SliceResult, BenchError> {
        let pool = self.pools.get_mut(&size).expect("a pool per size");
        let mut pipeline =
            Pipeline::new(clock, Duration::from_millis(schedule.warmup_ms), Duration::from_millis(schedule.slice_ms));
        let mut next = 0usize;
        while !pipeline.finished() {
            let wanted = depth.saturating_sub(pipeline.in_flight);
            if wanted > 0 {
                let stamp = clock.now();
                for _ in 0..wanted {
                    let Some(buffer) = pool.free.pop() else { break };
                    let needle = &needles[next % needles.len()];
                    next += 1;
                    self.queue_pair.prepare(read_operation(needle, buffer), 0).map_err(BenchError::Engine)?;
                    pipeline.submitted(stamp);
                }
                self.queue_pair.submit().map_err(BenchError::Engine)?;
            }
            let (mut reaped, mut bytes) = (0u32, 0u64);
            while let Some(completion) = self.queue_pair.reap_one().map_err(BenchError::Engine)? {
                match completion.result() {
                    Ok(count) => bytes += count,
                    Err(error) => {
                        self.error_count += 1;
                        self.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
                if let Some(buffer) = completion.buffer {
                    pool.free.push(buffer);
                }
                reaped += 1;
            }
            if reaped > 0 {
                pipeline.completed_bytes(reaped, bytes);
                continue;
            }
            // Nothing yet: wait as a client does (the library spins while
            // spinning pays, then sleeps), so a busy host is measured as a
            // client would see it.
            self.queue_pair.wait(1, READ_TIMEOUT).map_err(BenchError::Engine)?;
            pipeline.idle();
        }
        // Bounded: every wait is bounded and each read completes once.
        while self.queue_pair.in_flight() > 0 {
            self.queue_pair.wait(1, READ_TIMEOUT).map_err(BenchError::Engine)?;
            while let Some(completion) = self.queue_pair.reap_one().map_err(BenchError::Engine)? {
                if let Some(buffer) = completion.buffer {
                    pool.free.push(buffer);
                }
            }
        }
        Ok(pipeline.into_result())
    }

    /// `Err` if any read of any slice completed with an error.
    pub(super) fn check_errors(&mut self) -> Result<(), BenchError> {
        if self.error_count == 0 {
            return Ok(());
        }
        Err(BenchError::Completions { count: self.error_count, first: self.first_error.take().unwrap_or_default() })
    }
}
