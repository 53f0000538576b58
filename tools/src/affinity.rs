//! CPU placement: pinning the calling thread, and finding where a running
//! engine's poller is pinned (so a benchmark can put its client elsewhere).
//!
//! On a 2-vCPU VM two spinning sides must sit on different CPUs, and when
//! one side sleeps on a futex the woken side must not land on the waker's
//! CPU (the planning probe saw p99 grow from ~80 µs to ~1.9 ms unpinned).

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Pins the calling thread to `cpu`. Fails if the CPU is not allowed.
pub fn pin_current_thread(cpu: usize) -> Result<(), nix::Error> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Lets the calling thread run on every CPU in `cpus`.
pub fn allow_cpus(cpus: &[usize]) -> Result<(), nix::Error> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// The CPUs a thread (0 = the caller) may run on.
pub fn allowed_cpus(thread_id: i32) -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(thread_id)) {
        Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The one CPU the engine's `poller` thread is pinned to, if it is pinned
/// to exactly one (`rdma-engine --poller-cpu N`). Looks the thread up by
/// name in `/proc/<engine_pid>/task`.
pub fn engine_poller_cpu(engine_pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{engine_pid}/task")).ok()?;
    // Bounded: an engine has a handful of threads; look at no more than 256.
    for task in tasks.flatten().take(256) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "poller" {
            continue;
        }
        let thread_id: i32 = task.file_name().to_str()?.parse().ok()?;
        let cpus = allowed_cpus(thread_id);
        return (cpus.len() == 1).then(|| cpus[0]);
    }
    None
}

/// Two different CPUs this process may use, preferring to keep `avoid` for
/// someone else: `(responder, requester)`. `None` on a single-CPU machine.
pub fn cpu_pair(avoid: Option<usize>) -> Option<(usize, usize)> {
    let cpus = allowed_cpus(0);
    match avoid {
        Some(taken) => {
            let other = cpus.iter().copied().find(|&cpu| cpu != taken)?;
            Some((taken, other))
        }
        None if cpus.len() >= 2 => Some((cpus[0], cpus[1])),
        None => None,
    }
}
