//! A client without the client library: attaches over the control socket
//! itself and drives the region's queue pair 0 with the bare
//! `shm_layout::ring` ends (push, publish, check NEED_WAKEUP, pop, release
//! once per pass). Measured beside the library client at the same depth, it
//! splits the engine's cost from the library's: same engine, same rings,
//! no slot table, no per-entry release, no `Operation` encoding.

use super::pipeline::Pipeline;
use super::{BenchError, Schedule, SliceResult};
use crate::timing::TickClock;
use rdma_client::ClientError;
use rdma_ipc::control::{self, AttachRequest, ControlError, Request, Response};
use rdma_ipc::futex;
use rdma_ipc::mapping::{Access, Mapping};
use shm_layout::entry::{Cqe, Sqe};
use shm_layout::queue_pair::sq_flags;
use shm_layout::region::RegionView;
use shm_layout::ring::{Consumer, Producer, SharedSlots};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

/// One attached region, queue pair 0 driven directly.
pub struct BareClient {
    // Field order is drop order: the ring ends point into `mapping`, and
    // the socket's EOF tells the engine to reclaim the region, so the
    // mapping goes before the socket and the rings before both.
    sq: Producer<Sqe, SharedSlots<Sqe>>,
    cq: Consumer<Cqe, SharedSlots<Cqe>>,
    view: RegionView,
    _mapping: Mapping,
    _socket: OwnedFd,
    next_user_data: u64,
}

impl std::fmt::Debug for BareClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareClient").finish_non_exhaustive()
    }
}

fn attach_error(error: ControlError) -> BenchError {
    BenchError::Attach(ClientError::Control(error))
}

impl BareClient {
    pub fn attach(socket_path: &Path, sq_entries: u32) -> Result<BareClient, BenchError> {
        let socket = control::connect_to(socket_path).map_err(attach_error)?;
        let request = Request::Attach(AttachRequest {
            layout_version: shm_layout::LAYOUT_VERSION,
            queue_pairs: 1,
            sq_entries,
            buffer_size_bytes: 4096,
            client_name: "rdma-bench bare client".into(),
        });
        control::send(&socket, &request, &[]).map_err(attach_error)?;
        let (response, mut fds) = control::receive::<Response>(&socket).map_err(attach_error)?;
        let reply = match response {
            Response::Attached(reply) => reply,
            Response::Refused { reason } => return Err(BenchError::Attach(ClientError::Refused(reason))),
            Response::Regions { .. } | Response::Serving { .. } => {
                return Err(BenchError::Attach(ClientError::UnexpectedResponse))
            }
        };
        if fds.len() != 1 {
            return Err(attach_error(ControlError::FdCount { found: fds.len(), expected: 1 }));
        }
        let mapping = Mapping::new(fds.remove(0), reply.region_size_bytes, Access::ReadWrite, true)
            .map_err(|error| BenchError::Attach(ClientError::Mapping(error)))?;
        // SAFETY: the mapping is page-aligned and of the size mapped; it is
        // stored in the returned value, which drops the rings and the view
        // before it.
        let (view, _) = unsafe { RegionView::open(mapping.base(), mapping.size_bytes()) }
            .map_err(|error| BenchError::Attach(ClientError::BadRegion(error.to_string())))?;
        control::confirm_mapped(&socket, reply.region_id).map_err(attach_error)?;
        // SAFETY: this process attached the region itself and nothing else
        // here drives queue pair 0; the rings live in the struct that owns
        // the mapping, declared before it (dropped first).
        let (sq, cq) = unsafe { view.client_rings(0) };
        Ok(BareClient { sq, cq, view, _mapping: mapping, _socket: socket, next_user_data: 0 })
    }

    /// Keeps `depth` NOPs in flight for one slice.
    pub fn slice(&mut self, clock: &TickClock, depth: u32, schedule: &Schedule) -> Result<SliceResult, BenchError> {
        let mut pipeline =
            Pipeline::new(clock, Duration::from_millis(schedule.warmup_ms), Duration::from_millis(schedule.slice_ms));
        let control = self.view.queue_control(0);
        let mut idle_spins = 0u32;
        while !pipeline.finished() {
            let wanted = depth.saturating_sub(pipeline.in_flight);
            if wanted > 0 {
                let stamp = clock.now();
                for _ in 0..wanted {
                    if self.sq.push(Sqe::nop(self.next_user_data)).is_err() {
                        break;
                    }
                    self.next_user_data += 1;
                    pipeline.submitted(stamp);
                }
                self.sq.publish();
                if self.sq.consumer_needs_wakeup(&control.sq_flags, sq_flags::NEED_WAKEUP) {
                    futex::wake(&control.sq_tail, 1);
                }
            }
            let mut reaped = 0u32;
            loop {
                match self.cq.pop() {
                    Ok(Some(cqe)) if cqe.result == 0 => reaped += 1,
                    Ok(Some(cqe)) => {
                        return Err(BenchError::Completions { count: 1, first: format!("NOP result {}", cqe.result) })
                    }
                    Ok(None) => break,
                    Err(error) => return Err(BenchError::Engine(ClientError::EngineProtocol(error.to_string()))),
                }
            }
            if reaped > 0 {
                self.cq.release();
                pipeline.completed(reaped);
                idle_spins = 0;
                continue;
            }
            std::hint::spin_loop();
            pipeline.idle();
            idle_spins = idle_spins.wrapping_add(1);
            // Far more empty polls than a NOP round trip takes: the engine
            // is gone or stuck. Bounded: give up rather than spin forever.
            if idle_spins >= 1 << 26 {
                return Err(BenchError::Engine(ClientError::EngineGone));
            }
        }
        self.drain(&mut pipeline).map(|()| pipeline.into_result())
    }

    /// Reaps what is still in flight (bounded).
    fn drain(&mut self, pipeline: &mut Pipeline) -> Result<(), BenchError> {
        let start = std::time::Instant::now();
        while pipeline.in_flight > 0 {
            match self.cq.pop() {
                Ok(Some(_)) => pipeline.in_flight -= 1,
                Ok(None) if start.elapsed() > Duration::from_secs(2) => {
                    return Err(BenchError::Engine(ClientError::EngineGone))
                }
                Ok(None) => std::hint::spin_loop(),
                Err(error) => return Err(BenchError::Engine(ClientError::EngineProtocol(error.to_string()))),
            }
        }
        self.cq.release();
        Ok(())
    }
}
