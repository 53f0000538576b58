//! `--supervise`: the engine runs as the child of a small parent that restarts it when it
//! dies of a signal.
//!
//! Why: UCX ends the process on some peer failures instead of failing the endpoint. Seen here
//! with UCX 1.13 over tcp: a reader killed while its gets are in flight makes the exporter
//! answer a get on an endpoint that already failed, and `ucp_request_try_send` calls
//! `ucs_fatal` (SIGABRT) from inside `ucp_get_req_handler`; mlx5 has fatal paths of its own.
//! Nothing of ours runs on that path, so the exporter cannot catch it; what it can do is come
//! back at once, so readers reconnect within a fraction of a second instead of waiting for
//! systemd's `RestartSec` or Kubernetes' crash-loop back-off (10 s doubling to 5 min).
//!
//! The parent holds no engine state: it blocks SIGTERM/SIGINT/SIGHUP/SIGCHLD, starts the same
//! binary with the same arguments (and [`SUPERVISED_CHILD_ENV`] set), passes those signals on,
//! and after a death by signal restarts it after 100 ms. Only a crash loop backs off: each
//! death within [`QUICK_DEATH`] of its start doubles the delay (up to 10 s); a death after a
//! longer life (a peer's failure hitting a serving exporter) restarts at 100 ms again. A clean
//! exit, or an exit with a code (a start-up error, which a restart would only repeat), ends the
//! parent with the same code. The child dies with its parent (`PR_SET_PDEATHSIG`), so killing
//! the parent never leaves an engine behind.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Set in the child's environment: the child runs the engine itself.
pub const SUPERVISED_CHILD_ENV: &str = "RDMA_ENGINE_SUPERVISED_CHILD";

/// First restart delay; doubled for each death in a row that came within [`QUICK_DEATH`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A death this soon after a start counts as a crash loop (the engine starts in ~10 ms).
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// How often the parent looks at its child while no signal comes (bounds every wait).
const SIGNAL_WAIT_SLICE: Duration = Duration::from_millis(200);

/// Whether this process is the supervised child (it then runs the engine).
pub fn is_supervised_child() -> bool {
    std::env::var_os(SUPERVISED_CHILD_ENV).is_some()
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        set.add(signal);
    }
    set
}

/// The restart delay after a death that came `lived` after its start; `quick_deaths` counts
/// the crash loop so far (deaths in a row within [`QUICK_DEATH`]).
fn restart_delay(quick_deaths: &mut u32, lived: Duration) -> Duration {
    if lived >= QUICK_DEATH {
        *quick_deaths = 0;
        return FIRST_RESTART_DELAY;
    }
    *quick_deaths = (*quick_deaths + 1).min(16);
    FIRST_RESTART_DELAY.saturating_mul(1 << *quick_deaths).min(MAX_RESTART_DELAY)
}

/// Waits up to `timeout` for one of the blocked signals; `None` on timeout.
fn wait_for_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let timespec = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: sigtimedwait reads the set and the timespec, both live for the call, and writes
    // no siginfo (null is allowed).
    let number = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timespec) };
    if number < 0 {
        return None;
    }
    Signal::try_from(number).ok()
}

/// Waits up to `timeout` for one of the blocked signals; returns it when it asks for a stop
/// (a SIGCHLD, or nothing, is `None`: the caller looks at its child either way).
fn wait_for_stop_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    wait_for_signal(set, timeout).filter(|signal| matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP))
}

fn spawn_child(args: &[OsString], restarts: u64) -> std::io::Result<Pid> {
    let executable = std::env::current_exe()?;
    let mut command = Command::new(executable);
    command.args(args.iter().skip(1)).env(SUPERVISED_CHILD_ENV, restarts.to_string());
    let parent = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec and calls only async-signal-safe functions
    // (sigprocmask, prctl, getppid, kill) with no allocation.
    unsafe {
        command.pre_exec(move || {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&forwarded_signals()), None)?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then die now, as it would have made us.
            if nix::unistd::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Runs the supervisor until the engine ends for good; returns the exit code.
pub fn run(args: Vec<OsString>) -> i32 {
    let signals = forwarded_signals();
    if let Err(error) = signals.thread_block() {
        tracing::error!(%error, "the supervisor cannot block signals");
        return 1;
    }
    let mut quick_deaths = 0u32;
    let mut restarts = 0u64;
    let mut stopping: Option<Signal> = None;
    loop {
        let child = match spawn_child(&args, restarts) {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(%error, "the supervisor cannot start the engine");
                return 1;
            }
        };
        let started = Instant::now();
        tracing::info!(pid = child.as_raw(), restarts, "supervisor: engine started");
        let death = loop {
            if let Some(signal) = wait_for_stop_signal(&signals, SIGNAL_WAIT_SLICE) {
                stopping = Some(signal);
                let _ = nix::sys::signal::kill(child, signal);
            }
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, signal, _)) => break signal,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "the supervisor lost its engine process");
                    return 1;
                }
            }
        };
        if let Some(asked) = stopping {
            tracing::info!(%asked, died_of = %death, "supervisor: engine stopped");
            return 128 + death as i32;
        }
        let lived = started.elapsed();
        let delay = restart_delay(&mut quick_deaths, lived);
        restarts += 1;
        tracing::warn!(
            pid = child.as_raw(),
            signal = %death,
            lived_ms = lived.as_millis() as u64,
            restart_in_ms = delay.as_millis() as u64,
            "supervisor: the engine died of a signal (UCX aborts the process on some peer failures; see docs/robustness.md); restarting it"
        );
        // Bounded: the delay, in slices, while a stop request still ends everything.
        let restart_at = Instant::now() + delay;
        while let Some(left) = restart_at.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
            if let Some(signal) = wait_for_stop_signal(&signals, left.min(SIGNAL_WAIT_SLICE)) {
                tracing::info!(%signal, "supervisor: stopped while waiting to restart the engine");
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_crash_loop_backs_off() {
        let mut quick = 0;
        let serving = Duration::from_secs(30);
        assert_eq!(restart_delay(&mut quick, serving), FIRST_RESTART_DELAY);
        let delays: Vec<u128> =
            (0..9).map(|_| restart_delay(&mut quick, Duration::from_millis(20)).as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(restart_delay(&mut quick, serving), FIRST_RESTART_DELAY);
        assert_eq!(restart_delay(&mut quick, Duration::from_millis(20)).as_millis(), 200);
    }
}
