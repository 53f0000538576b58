//! `ringstat`: a read-only look at a live engine's regions.
//!
//! The engine answers `ListRegions` with one summary and one memfd per
//! attached region. Each memfd is mapped read-only (a stray write faults
//! instead of corrupting a ring) with exactly the file's size, so no access
//! can fall past its end, and `RegionView::open` validates the header before
//! anything else is read. Everything else read from the region is treated
//! as garbage-capable: indices are subtracted wrapping, states and reasons
//! outside their tables are printed as numbers, nothing panics.

mod rates;
mod render;

pub use rates::{FrameRates, QueuePairRates, RateTracker, Rates, RegionRates, WatchFrame};
pub use render::render_text;

use nix::sys::stat::fstat;
use rdma_ipc::control::{self, ControlError, Request, Response};
use rdma_ipc::mapping::{Access, Mapping, MappingError};
use serde::Serialize;
use shm_layout::header::{backing, engine_state, fence_reason, region_state};
use shm_layout::queue_pair::{cq_flags, sq_flags};
use shm_layout::region::RegionView;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use sysinfo::{Pid, ProcessStatus, ProcessesToUpdate, System};

#[derive(Debug, thiserror::Error)]
pub enum RingstatError {
    #[error("cannot talk to the engine: {0}")]
    Control(#[from] ControlError),
    #[error("the engine refused: {0}")]
    Refused(String),
    #[error("the engine answered ListRegions with another kind of message")]
    UnexpectedResponse,
    #[error("the engine sent {fds} file descriptors for {regions} regions")]
    FdCount { fds: usize, regions: usize },
}

/// One look at every region of an engine.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub socket: String,
    pub engine_pid: u32,
    pub engine_generation: u64,
    /// The remote transport the engine reads and exports with (`stream`, `ucx`), if any.
    pub remote_transport: Option<String>,
    /// `CLOCK_MONOTONIC` ns when the snapshot was taken.
    pub taken_at_ns: u64,
    pub regions: Vec<RegionSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionSnapshot {
    pub region_id: u64,
    pub client_pid: u32,
    /// The name the client gave at attach.
    pub client_name: String,
    /// The process name the kernel reports for `client_pid` (sysinfo).
    pub client_process_name: Option<String>,
    /// Whether `client_pid` is a live (not zombie) process.
    pub client_alive: bool,
    pub region_size_bytes: u64,
    /// Why the region could not be inspected, if it could not.
    pub error: Option<String>,
    pub layout: Option<RegionLayout>,
    pub live: Option<LiveState>,
    pub queue_pairs: Vec<QueuePairSnapshot>,
}

/// From the validated description.
#[derive(Clone, Debug, Serialize)]
pub struct RegionLayout {
    pub hugepages: bool,
    pub backing: String,
    pub page_size_bytes: u32,
    pub queue_pair_count: u32,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub buffer_size_bytes: u64,
    pub engine_pid: u32,
    pub client_pid: u32,
}

/// The engine's live header words.
#[derive(Clone, Debug, Serialize)]
pub struct LiveState {
    pub engine_state: String,
    pub region_state: String,
    pub fence_reason: u32,
    pub fence_reason_text: String,
    pub heartbeat_ns: u64,
    /// Milliseconds since the last heartbeat (negative if the word is ahead
    /// of our clock, which only garbage can make it).
    pub heartbeat_age_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueuePairSnapshot {
    pub index: u32,
    pub sq_head: u32,
    pub sq_tail: u32,
    /// `sq_tail - sq_head` (wrapping): submitted, not yet taken by the engine.
    pub sq_in_flight: u32,
    pub sq_need_wakeup: bool,
    pub cq_head: u32,
    pub cq_tail: u32,
    /// `cq_tail - cq_head` (wrapping): posted, not yet reaped by the client.
    pub cq_in_flight: u32,
    pub cq_need_wakeup: bool,
    pub stats: QueuePairStatsSnapshot,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct QueuePairStatsSnapshot {
    pub sqes_taken: u64,
    pub cqes_posted: u64,
    pub errors: u64,
    pub invalid_entries: u64,
    pub bytes_read: u64,
    pub sleeps: u64,
    pub client_wakeups: u64,
    pub in_flight: u64,
}

/// Asks the engine at `socket` for its regions and reads each one.
pub fn take_snapshot(socket: &Path) -> Result<Snapshot, RingstatError> {
    let connection = control::connect_to(socket)?;
    control::send(&connection, &Request::ListRegions, &[])?;
    let (response, fds) = control::receive::<Response>(&connection)?;
    let (engine_pid, engine_generation, summaries, remote_transport) = match response {
        Response::Regions { engine_pid, engine_generation, regions, remote_transport } => {
            (engine_pid, engine_generation, regions, remote_transport)
        }
        Response::Refused { reason } => return Err(RingstatError::Refused(reason)),
        Response::Attached(_) | Response::Serving { .. } => return Err(RingstatError::UnexpectedResponse),
    };
    if fds.len() != summaries.len() {
        return Err(RingstatError::FdCount { fds: fds.len(), regions: summaries.len() });
    }
    let mut processes = System::new();
    let pids: Vec<Pid> = summaries.iter().map(|summary| Pid::from_u32(summary.client_pid)).collect();
    processes.refresh_processes(ProcessesToUpdate::Some(&pids), true);
    let taken_at_ns = rdma_ipc::clock::monotonic_ns();
    let regions = summaries
        .into_iter()
        .zip(fds)
        .map(|(summary, fd)| {
            let process = processes.process(Pid::from_u32(summary.client_pid));
            let mut region = RegionSnapshot {
                region_id: summary.region_id,
                client_pid: summary.client_pid,
                client_name: summary.client_name,
                client_process_name: process.map(|p| p.name().to_string_lossy().into_owned()),
                client_alive: process
                    .is_some_and(|p| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead)),
                region_size_bytes: summary.region_size_bytes,
                error: None,
                layout: None,
                live: None,
                queue_pairs: Vec::new(),
            };
            if let Err(error) = read_region(fd, taken_at_ns, &mut region) {
                region.error = Some(error);
            }
            region
        })
        .collect();
    Ok(Snapshot {
        socket: socket.display().to_string(),
        engine_pid,
        engine_generation,
        remote_transport,
        taken_at_ns,
        regions,
    })
}

/// Maps one region read-only and copies its state out.
fn read_region(fd: OwnedFd, now_ns: u64, region: &mut RegionSnapshot) -> Result<(), String> {
    let file_size_bytes =
        fstat(fd.as_raw_fd()).map_err(|error| format!("cannot stat the region's memfd: {error}"))?.st_size.max(0)
            as u64;
    let mapping = Mapping::new(&fd, file_size_bytes, Access::ReadOnly, false).map_err(|error| match error {
        MappingError::Empty => "the region's memfd is empty".to_string(),
        other => other.to_string(),
    })?;
    // SAFETY: `mapping` covers the whole file and lives until the end of
    // this function, longer than `view` and every reference taken from it;
    // the view is only used through its read accessors (no ring ends, no
    // init_header), as a read-only mapping requires.
    let (view, description) = unsafe { RegionView::open(mapping.base(), mapping.size_bytes()) }
        .map_err(|error| format!("the region header is not valid: {error}"))?;
    region.layout = Some(RegionLayout {
        hugepages: description.backing == backing::HUGETLB,
        backing: backing_name(description.backing),
        page_size_bytes: description.page_size_bytes,
        queue_pair_count: description.queue_pair_count,
        sq_entries: description.sq_entries,
        cq_entries: description.cq_entries,
        buffer_size_bytes: description.buffer_size_bytes,
        engine_pid: description.engine_pid,
        client_pid: description.client_pid,
    });
    let live = view.live();
    let heartbeat_ns = live.heartbeat_ns.load(Ordering::Acquire);
    let reason = live.fence_reason.load(Ordering::Relaxed);
    region.live = Some(LiveState {
        engine_state: engine_state_name(live.engine_state.load(Ordering::Acquire)),
        region_state: region_state_name(live.region_state.load(Ordering::Acquire)),
        fence_reason: reason,
        fence_reason_text: fence_reason::describe(reason).to_string(),
        heartbeat_ns,
        heartbeat_age_ms: (now_ns as i128 - heartbeat_ns as i128) as f64 / 1e6,
    });
    // The count was validated against the geometry by `open`, so every
    // index below is one `queue_control`/`stats` accept.
    region.queue_pairs = (0..view.geometry().queue_pair_count).map(|index| read_queue_pair(&view, index)).collect();
    Ok(())
}

fn read_queue_pair(view: &RegionView, index: u32) -> QueuePairSnapshot {
    let control = view.queue_control(index);
    let stats = view.stats(index);
    // Heads before tails: a tail read later is never behind its head, so a
    // consistent ring never shows a negative (huge) in-flight count.
    let sq_head = control.sq_head.load(Ordering::Acquire);
    let cq_head = control.cq_head.load(Ordering::Acquire);
    let sq_tail = control.sq_tail.load(Ordering::Acquire);
    let cq_tail = control.cq_tail.load(Ordering::Acquire);
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    QueuePairSnapshot {
        index,
        sq_head,
        sq_tail,
        sq_in_flight: sq_tail.wrapping_sub(sq_head),
        sq_need_wakeup: control.sq_flags.load(Ordering::Relaxed) & sq_flags::NEED_WAKEUP != 0,
        cq_head,
        cq_tail,
        cq_in_flight: cq_tail.wrapping_sub(cq_head),
        cq_need_wakeup: control.cq_flags.load(Ordering::Relaxed) & cq_flags::NEED_WAKEUP != 0,
        stats: QueuePairStatsSnapshot {
            sqes_taken: load(&stats.sqes_taken),
            cqes_posted: load(&stats.cqes_posted),
            errors: load(&stats.errors),
            invalid_entries: load(&stats.invalid_entries),
            bytes_read: load(&stats.bytes_read),
            sleeps: load(&stats.sleeps),
            client_wakeups: load(&stats.client_wakeups),
            in_flight: load(&stats.in_flight),
        },
    }
}

fn backing_name(value: u32) -> String {
    match value {
        backing::HUGETLB => "hugetlb".into(),
        backing::NORMAL_PAGES => "normal-pages".into(),
        other => format!("unknown({other})"),
    }
}

fn engine_state_name(value: u32) -> String {
    match value {
        engine_state::RUNNING => "running".into(),
        engine_state::DRAINING => "draining".into(),
        engine_state::STOPPED => "stopped".into(),
        other => format!("unknown({other})"),
    }
}

fn region_state_name(value: u32) -> String {
    match value {
        region_state::ACTIVE => "active".into(),
        region_state::FENCED => "fenced".into(),
        other => format!("unknown({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use shm_layout::geometry::Geometry;
    use shm_layout::header::RegionDescription;

    fn empty_region() -> RegionSnapshot {
        RegionSnapshot {
            region_id: 1,
            client_pid: 0,
            client_name: String::new(),
            client_process_name: None,
            client_alive: false,
            region_size_bytes: 0,
            error: None,
            layout: None,
            live: None,
            queue_pairs: Vec::new(),
        }
    }

    fn memfd_of(size_bytes: u64) -> (OwnedFd, Mapping) {
        let fd = memfd_create(c"ringstat-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, size_bytes as i64).unwrap();
        let mapping = Mapping::new(&fd, size_bytes, Access::ReadWrite, false).unwrap();
        (fd, mapping)
    }

    #[test]
    fn garbage_words_are_shown_not_trusted() {
        let geometry = Geometry::new(2, 8, 4096).unwrap();
        let (fd, mapping) = memfd_of(geometry.region_size_bytes);
        // SAFETY: the mapping is page-aligned, of the region's size, and
        // outlives the view (both dropped at the end of the test).
        let view = unsafe { RegionView::new(mapping.base(), mapping.size_bytes(), geometry) }.unwrap();
        view.init_header(&RegionDescription::new(&geometry));
        let control = view.queue_control(1);
        control.sq_head.store(10, Ordering::Relaxed);
        control.sq_tail.store(3, Ordering::Relaxed); // behind its head
        control.cq_tail.store(u32::MAX, Ordering::Relaxed);
        view.live().engine_state.store(77, Ordering::Relaxed);
        view.live().region_state.store(u32::MAX, Ordering::Relaxed);
        view.live().fence_reason.store(12345, Ordering::Relaxed);
        view.live().heartbeat_ns.store(u64::MAX, Ordering::Relaxed);
        view.stats(1).sqes_taken.store(u64::MAX, Ordering::Relaxed);
        let mut region = empty_region();
        read_region(fd, 1000, &mut region).unwrap();
        let live = region.live.clone().unwrap();
        assert_eq!(live.engine_state, "unknown(77)");
        assert_eq!(live.region_state, format!("unknown({})", u32::MAX));
        assert_eq!(live.fence_reason_text, "unknown fence reason");
        assert!(live.heartbeat_age_ms < 0.0);
        let queue_pair = &region.queue_pairs[1];
        assert_eq!(queue_pair.sq_in_flight, 3u32.wrapping_sub(10));
        assert_eq!(queue_pair.cq_in_flight, u32::MAX);
        assert_eq!(queue_pair.stats.sqes_taken, u64::MAX);
        let mut tracker = RateTracker::default();
        let snapshot = Snapshot {
            socket: "test".into(),
            engine_pid: 0,
            engine_generation: 0,
            remote_transport: Some("stream".into()),
            taken_at_ns: 0,
            regions: vec![region.clone(), region],
        };
        assert!(render_text(&snapshot, Some(&mut tracker)).contains("unknown(77)"));
        assert!(render_text(&snapshot, Some(&mut tracker)).contains("sq_head"));
        drop(mapping);
    }

    #[test]
    fn a_region_that_is_not_one_is_an_error() {
        let (fd, mapping) = memfd_of(2 << 20);
        // SAFETY: a fresh mapping of our own memfd; nothing else uses it.
        unsafe { std::ptr::write_bytes(mapping.base().as_ptr(), 0xa5, 4096) };
        let mut region = empty_region();
        let error = read_region(fd, 0, &mut region).unwrap_err();
        assert!(error.contains("header is not valid"), "{error}");
        let empty = memfd_create(c"empty", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        assert!(read_region(empty, 0, &mut empty_region()).unwrap_err().contains("empty"));
    }
}
