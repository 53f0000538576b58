//! The cross-process floors, measured in the same run as the engine:
//!
//! - **bounce**: one cache line bounced between two processes (a re-exec'd
//!   helper, pinned to the responder CPU, echoes a counter the requester
//!   writes). Nothing below it is reachable for a cross-process round trip.
//! - **futex**: the helper sleeps on a shared futex; the requester stores,
//!   wakes it (`FUTEX_WAKE`, included in the time) and spins for the echo.
//!   The floor of any round trip that has to wake a sleeping peer.
//!
//! The third floor, the ring between two threads, is in [`super::ring_floor`].

use super::pipeline::measure_round_trips;
use super::{BenchError, SliceResult};
use crate::affinity::pin_current_thread;
use crate::timing::TickClock;
use rdma_ipc::futex;
use rdma_ipc::mapping::{Access, Mapping};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The hidden subcommand the helper process runs.
pub const HELPER_SUBCOMMAND: &str = "__floor-helper";

/// Longest a requester waits for one echo before declaring the helper dead.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest the helper sleeps before re-checking its command and its parent.
const HELPER_IDLE_SLICE: Duration = Duration::from_millis(100);
/// Longest the helper waits at start-up to be told anything.
const HELPER_START_TIMEOUT: Duration = Duration::from_secs(5);

mod command {
    pub const IDLE: u32 = 0;
    pub const BOUNCE: u32 = 1;
    pub const FUTEX: u32 = 2;
    pub const EXIT: u32 = 3;
}

#[repr(C, align(128))]
struct Line {
    value: AtomicU32,
}

/// The helper's shared page: each word on its own 128-byte block.
#[repr(C)]
struct HelperPage {
    /// Written by the requester: what the helper should do.
    command: Line,
    /// Written by the requester: the value to echo (also the futex word).
    ping: Line,
    /// Written by the helper: the last value echoed.
    pong: Line,
    /// Written by the helper once it is pinned and listening.
    ready: Line,
}

const _: () = assert!(core::mem::size_of::<HelperPage>() == 512);

const PAGE_BYTES: u64 = 4096;

fn page(mapping: &Mapping) -> &HelperPage {
    // SAFETY: the mapping is page-aligned and PAGE_BYTES long, more than
    // HelperPage's 512 bytes; HelperPage is all atomics, for which the
    // zeroed memfd (and anything the peer stores) is a valid value; the
    // reference lives no longer than the mapping.
    unsafe { mapping.base().cast::<HelperPage>().as_ref() }
}

/// The requester's end: a helper process and the page shared with it.
#[derive(Debug)]
pub struct FloorHelper {
    child: Child,
    mapping: Mapping,
    next_value: u32,
}

impl FloorHelper {
    /// Re-executes this binary as the helper, pinned to `responder_cpu`.
    pub fn spawn(responder_cpu: Option<usize>) -> Result<FloorHelper, BenchError> {
        let helper_error = |what: &str, error: &dyn std::fmt::Display| BenchError::Helper(format!("{what}: {error}"));
        // Not close-on-exec: the helper inherits it under the same number.
        let memfd = nix::sys::memfd::memfd_create(c"rdma-bench-floor", nix::sys::memfd::MemFdCreateFlag::empty())
            .map_err(|error| helper_error("memfd_create", &error))?;
        nix::unistd::ftruncate(&memfd, PAGE_BYTES as i64).map_err(|error| helper_error("ftruncate", &error))?;
        let mapping =
            Mapping::new(&memfd, PAGE_BYTES, Access::ReadWrite, true).map_err(|error| helper_error("mmap", &error))?;
        let exe = std::env::current_exe().map_err(|error| helper_error("current_exe", &error))?;
        let mut command = Command::new(exe);
        command.arg(HELPER_SUBCOMMAND).arg("--fd").arg(memfd.as_raw_fd().to_string());
        if let Some(cpu) = responder_cpu {
            command.arg("--cpu").arg(cpu.to_string());
        }
        let child = command.spawn().map_err(|error| helper_error("spawn", &error))?;
        drop(memfd);
        let mut helper = FloorHelper { child, mapping, next_value: 1 };
        helper.wait_ready()?;
        Ok(helper)
    }

    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> Result<(), BenchError> {
        let start = Instant::now();
        while page(&self.mapping).ready.value.load(Ordering::Acquire) == 0 {
            if start.elapsed() > HELPER_START_TIMEOUT {
                return Err(BenchError::Helper("did not start within 5 s".into()));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Helper(format!("exited at start: {status}")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn set_command(&self, value: u32) {
        let page = page(&self.mapping);
        page.command.value.store(value, Ordering::SeqCst);
        futex::wake(&page.command.value, 1);
        // The helper may sleep on `ping` in futex mode.
        futex::wake(&page.ping.value, 1);
    }

    /// One round trip: store `ping`, optionally wake, spin for the echo.
    #[inline(always)]
    fn round_trip(&mut self, wake: bool) -> Result<(), BenchError> {
        let page = page(&self.mapping);
        let value = self.next_value;
        self.next_value = self.next_value.wrapping_add(1).max(1);
        page.ping.value.store(value, Ordering::Release);
        if wake {
            futex::wake(&page.ping.value, 1);
        }
        let mut spins = 0u32;
        let mut started: Option<Instant> = None;
        while page.pong.value.load(Ordering::Acquire) != value {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(65_536) {
                let start = *started.get_or_insert_with(Instant::now);
                if start.elapsed() > ECHO_TIMEOUT {
                    return Err(BenchError::Helper("stopped echoing".into()));
                }
            }
        }
        Ok(())
    }

    /// Cache-line bounce for `slice` after `warmup`, the helper spinning.
    pub fn bounce(&mut self, clock: &TickClock, warmup: Duration, slice: Duration) -> Result<SliceResult, BenchError> {
        self.set_command(command::BOUNCE);
        let result = measure_round_trips(clock, warmup, slice, None, |_| self.round_trip(false));
        self.set_command(command::IDLE);
        result
    }

    /// Futex sleep/wake round trips, `gap` apart so the helper (and its
    /// vCPU) is asleep each time.
    pub fn futex(&mut self, clock: &TickClock, slice: Duration, gap: Duration) -> Result<SliceResult, BenchError> {
        self.set_command(command::FUTEX);
        let result = measure_round_trips(clock, Duration::ZERO, slice, Some(gap), |_| self.round_trip(true));
        self.set_command(command::IDLE);
        result
    }
}

impl Drop for FloorHelper {
    fn drop(&mut self) {
        self.set_command(command::EXIT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Only our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helper process's main: maps the page, pins, and serves commands
/// until told to exit or its parent dies.
pub fn helper_main(fd: i32, cpu: Option<usize>) -> Result<(), String> {
    // SAFETY: the parent passed this descriptor number for the memfd it
    // created without close-on-exec; nothing else in this fresh process
    // owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mapping = Mapping::new(&memfd, PAGE_BYTES, Access::ReadWrite, true).map_err(|error| error.to_string())?;
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let parent = nix::unistd::getppid();
    if let Some(cpu) = cpu {
        pin_current_thread(cpu).map_err(|error| format!("cannot pin to CPU {cpu}: {error}"))?;
    }
    let page = page(&mapping);
    page.ready.value.store(1, Ordering::Release);
    loop {
        match page.command.value.load(Ordering::Acquire) {
            command::BOUNCE => serve_bounce(page),
            command::FUTEX => serve_futex(page),
            command::EXIT => return Ok(()),
            idle => {
                if nix::unistd::getppid() != parent {
                    return Ok(());
                }
                futex::wait(&page.command.value, idle, HELPER_IDLE_SLICE);
            }
        }
    }
}

fn serve_bounce(page: &HelperPage) {
    let mut last = page.pong.value.load(Ordering::Relaxed);
    loop {
        let value = page.ping.value.load(Ordering::Acquire);
        if value != last {
            last = value;
            page.pong.value.store(value, Ordering::Release);
        } else if page.command.value.load(Ordering::Relaxed) != command::BOUNCE {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn serve_futex(page: &HelperPage) {
    let mut last = page.pong.value.load(Ordering::Relaxed);
    loop {
        let value = page.ping.value.load(Ordering::Acquire);
        if value != last {
            last = value;
            page.pong.value.store(value, Ordering::Release);
            continue;
        }
        if page.command.value.load(Ordering::Acquire) != command::FUTEX {
            return;
        }
        // The kernel re-checks ping == value, so a store made after our
        // load returns at once instead of being slept through.
        futex::wait(&page.ping.value, value, HELPER_IDLE_SLICE);
    }
}
