//! Helpers for the tools' tests: a real `rdma-engine` process (built once
//! per test run, next to the tools' own binaries) and scratch directories.
//! Every wait here is bounded.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long an engine gets to create its socket.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an engine gets to exit after SIGTERM before SIGKILL.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory cargo put this package's binaries in (`target/<profile>`).
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ringstat")).parent().expect("a binary lives in a directory").to_path_buf()
}

/// The engine binary: `$RDMA_ENGINE_BIN` if set, else `rdma-engine` built
/// (once per test run) into the same target directory and profile as the
/// tools, so the test runs against the engine of this checkout.
pub fn engine_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("RDMA_ENGINE_BIN") {
            return PathBuf::from(path);
        }
        let profile_dir = profile_dir();
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build
            .current_dir(workspace)
            .args(["build", "-p", "rdma-engine", "--bin", "rdma-engine"])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building rdma-engine failed");
        let binary = profile_dir.join("rdma-engine");
        assert!(binary.exists(), "{} missing after the build", binary.display());
        binary
    })
}

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

/// A running engine; SIGTERM (then SIGKILL) on drop.
pub struct Engine {
    child: Child,
    pub socket: PathBuf,
    _scratch: Scratch,
}

impl Engine {
    pub fn start(volume_dir: Option<&Path>) -> Engine {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(dir) = volume_dir {
            args.extend(["--volume-dir".into(), dir.into()]);
        }
        Engine::start_with(&args, &[])
    }

    /// An engine with these arguments (besides `--socket`) and environment
    /// variables (e.g. `UCX_TLS`).
    pub fn start_with(args: &[std::ffi::OsString], env: &[(&str, &str)]) -> Engine {
        let scratch = Scratch::new("engine");
        let socket = scratch.path.join("engine.sock");
        let mut command = Command::new(engine_binary());
        command.arg("--socket").arg(&socket).args(args).stdout(Stdio::null()).stderr(Stdio::null());
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn rdma-engine");
        let start = Instant::now();
        while rdma_ipc::control::connect_to(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("rdma-engine exited at start: {status}");
            }
            assert!(
                start.elapsed() < ENGINE_START_TIMEOUT,
                "rdma-engine did not listen within {ENGINE_START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Engine { child, socket, _scratch: scratch }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < ENGINE_STOP_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nobody listens on now (it may be taken again by the time it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
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
