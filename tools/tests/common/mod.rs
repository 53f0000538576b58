//! Helpers for the tools' tests: a real `rdma-engine` process (through the
//! integration tests' own helpers), scratch directories, bounded runs.
//! Every wait here is bounded.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A scratch directory, removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "rdma-tools-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub use integration_tests::Engine;

/// An engine, serving `volume_dir` if given (the engine process and its
/// helpers are the integration tests' own).
pub fn start_engine(volume_dir: Option<&Path>) -> Engine {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(dir) = volume_dir {
        args.extend(["--volume-dir".into(), dir.into()]);
    }
    start_engine_with(&args, &[])
}

/// An engine with these arguments (besides `--socket`) and environment
/// variables (e.g. `UCX_TLS`).
pub fn start_engine_with(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Engine {
    let options = integration_tests::EngineOptions {
        args: args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect(),
        env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
        prefix: Vec::new(),
    };
    Engine::start_with(tempfile::tempdir().expect("temp dir"), options)
}

/// A TCP port nobody listens on now (it may be taken again by the time it is used).
pub fn free_port() -> u16 {
    integration_tests::free_port("127.0.0.1")
}

/// Runs a binary to completion, killing it after `timeout`. Output is
/// drained while it runs (a full pipe would otherwise stall the child).
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    use std::io::Read;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!("{command:?} did not finish within {timeout:?}; stderr: {}", String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}
