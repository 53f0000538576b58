//! `--contend N`: N busy-loop processes beside the engine and the bench, for
//! the contended run that follows the quiet one in the same invocation.
//!
//! Each contender is this binary re-executed with a hidden subcommand: a
//! child of the bench, unpinned (the scheduler places it as it would any
//! CPU-bound neighbour of a volume server), that spins until it is killed.
//! [`Contenders`] kills and reaps them when dropped (end of run, error,
//! unwinding panic); a contender also asks the kernel to kill it when the
//! bench dies any other way (`PR_SET_PDEATHSIG`, which covers ctrl-c and
//! `kill -9` of the bench).

use super::BenchError;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The hidden subcommand a contender runs.
pub const BUSY_LOOP_SUBCOMMAND: &str = "__busy-loop";

/// The most contenders one run may start (`--contend`'s bound).
pub const CONTENDERS_MAX: u32 = 64;

/// What a contender writes once it is about to spin.
const READY_LINE: &str = "spinning";

/// Busy-loop child processes, killed when dropped.
#[derive(Debug)]
pub struct Contenders {
    children: Vec<Child>,
}

impl Contenders {
    /// Starts `count` contenders and returns once every one of them spins.
    pub fn start(count: u32) -> Result<Contenders, BenchError> {
        let error =
            |what: &str, error: &dyn std::fmt::Display| BenchError::Helper(format!("contender {what}: {error}"));
        let exe = std::env::current_exe().map_err(|e| error("current_exe", &e))?;
        let mut contenders = Contenders { children: Vec::with_capacity(count as usize) };
        for _ in 0..count.min(CONTENDERS_MAX) {
            let child = Command::new(&exe)
                .arg(BUSY_LOOP_SUBCOMMAND)
                .arg("--parent")
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| error("spawn", &e))?;
            // Pushed before waiting, so a failure below still kills it.
            contenders.children.push(child);
        }
        for child in &mut contenders.children {
            let stdout = child.stdout.take().ok_or_else(|| error("stdout", &"not piped"))?;
            let mut line = String::new();
            // Bounded: the child writes one line, or exits (end of file).
            BufReader::new(stdout).read_line(&mut line).map_err(|e| error("start", &e))?;
            if line.trim_end() != READY_LINE {
                return Err(error("start", &"exited before it began to spin"));
            }
        }
        Ok(contenders)
    }

    /// The contenders' process ids (their CPU time is the run's, not interference).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Contenders {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Only our own children, each by its pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A contender's main: dies with its parent, says it is ready, spins.
pub fn busy_loop_main(parent: u32) -> Result<std::convert::Infallible, String> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(format!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error()));
    }
    // The parent may have died before the flag was set: then nobody kills us.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err("the bench exited before its contender started".into());
    }
    println!("{READY_LINE}");
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}
