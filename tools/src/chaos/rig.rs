//! The processes of a run, in one temporary directory: an exporting engine on the known
//! volume, a reading engine peered with it over UCX (tcp or sm, on loopback), and the
//! client processes. Engines are restarted as systemd would after a kill; everything is
//! killed when the [`Rig`] is dropped, also when the run fails.

use super::client::ClientArgs;
use super::counters::{Counters, MAX_CLIENTS};
use super::{known, ChaosError, RunOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long an engine may take to answer on its socket (or listen) after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of an engine's log a report of its death carries (a panic with its backtrace).
const LOG_TAIL_LINES: usize = 60;
/// How often readiness and exits are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reader,
    Exporter,
}

/// An engine process with what it takes to start it again.
#[derive(Debug)]
pub struct EngineProcess {
    pub role: Role,
    child: Child,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    ready: Ready,
    /// Set when the campaign killed it: the exit that follows is not a death to count.
    pub killed_on_purpose: bool,
}

/// What says an engine is up.
#[derive(Clone, Debug)]
enum Ready {
    Socket(PathBuf),
    Listening(String),
}

impl Ready {
    fn is_ready(&self) -> bool {
        match self {
            Ready::Socket(path) => rdma_ipc::control::connect_to(path).is_ok(),
            Ready::Listening(address) => std::net::TcpStream::connect(address).is_ok(),
        }
    }
}

impl EngineProcess {
    fn start(
        role: Role,
        binary: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: &Path,
        ready: Ready,
    ) -> Result<EngineProcess, ChaosError> {
        let log = dir.join(format!("{role:?}.log").to_lowercase());
        let child = spawn_engine(binary, &args, &env, &log)?;
        let mut engine =
            EngineProcess { role, child, binary: binary.into(), args, env, log, ready, killed_on_purpose: false };
        engine.wait_ready()?;
        Ok(engine)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> Result<(), ChaosError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.ready.is_ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ChaosError::Setup(format!("the {:?} engine exited at start ({status})", self.role)));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Err(ChaosError::Setup(format!("the {:?} engine was not up within {READY_TIMEOUT:?}", self.role)))
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self) {
        self.killed_on_purpose = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same arguments (after a kill or a death).
    pub fn restart(&mut self) -> Result<(), ChaosError> {
        self.child = spawn_engine(&self.binary, &self.args, &self.env, &self.log)?;
        self.killed_on_purpose = false;
        self.wait_ready()
    }

    /// The last lines of its log, for a report of a death.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child gets SIGKILL when the campaign dies, however it dies (a killed campaign used to
/// leave its engines running, holding their ports). The signal follows the thread that
/// spawned the child: every engine and client is spawned by the campaign's main thread,
/// which lives as long as the campaign.
fn dies_with_campaign(command: &mut Command) -> &mut Command {
    let campaign = std::process::id();
    // SAFETY: runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid, kill, getpid), with no allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The campaign may have died before the prctl: then die now.
            if libc::getppid() as u32 != campaign {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        })
    }
}

fn spawn_engine(binary: &Path, args: &[String], env: &[(String, String)], log: &Path) -> Result<Child, ChaosError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| ChaosError::Setup(format!("engine log {}: {error}", log.display())))?;
    dies_with_campaign(&mut Command::new(binary))
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|error| ChaosError::Setup(format!("cannot start {}: {error}", binary.display())))
}

/// A client process and its slot.
#[derive(Debug)]
pub struct ClientProcess {
    pub slot: usize,
    child: Child,
}

impl ClientProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process of one run.
#[derive(Debug)]
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub counters: Counters,
    counters_fd: OwnedFd,
    client_template: ClientArgs,
    options: RunOptions,
    // Drop order: clients first, then the reader, then the exporter.
    pub clients: Vec<ClientProcess>,
    pub reader: EngineProcess,
    pub exporter: EngineProcess,
}

impl Rig {
    /// Generates the known volume and starts the exporter, the reader and the clients.
    pub fn start(options: &RunOptions, reads_per_attachment: u64) -> Result<Rig, ChaosError> {
        if options.clients == 0 || options.clients > MAX_CLIENTS {
            return Err(ChaosError::Usage(format!("--clients must be 1 to {MAX_CLIENTS}, not {}", options.clients)));
        }
        let mut dir = tempfile::Builder::new()
            .prefix("rdma-chaos-")
            .tempdir()
            .map_err(|error| ChaosError::Setup(format!("temp dir: {error}")))?;
        if options.keep_dir {
            dir.disable_cleanup(true);
            eprintln!("rdma-chaos: the run's directory is {}", dir.path().display());
        }
        let volume_dir = dir.path().join("volume");
        std::fs::create_dir_all(&volume_dir).map_err(|error| ChaosError::Setup(format!("volume dir: {error}")))?;
        known::generate(&volume_dir, options.seed)?;
        let mut env: Vec<(String, String)> =
            options.transport.ucx_env().iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        env.extend(options.engine_env.iter().cloned());
        let listen = format!("127.0.0.1:{}", free_port()?);
        let socket = |name: &str| dir.path().join(format!("{name}.sock")).display().to_string();
        let mut export_args: Vec<String> = vec![
            "--socket".into(),
            socket("exporter"),
            "--export-dir".into(),
            volume_dir.display().to_string(),
            "--listen".into(),
            listen.clone(),
        ];
        export_args.extend(options.transport.engine_args().iter().map(|arg| arg.to_string()));
        export_args.extend(options.exporter_args.iter().cloned());
        let exporter = EngineProcess::start(
            Role::Exporter,
            &options.engine,
            export_args,
            env.clone(),
            dir.path(),
            Ready::Listening(listen.clone()),
        )?;
        let reader_socket = PathBuf::from(socket("reader"));
        let mut reader_args = vec![
            "--socket".into(),
            reader_socket.display().to_string(),
            "--peer".into(),
            listen,
            "--no-http-fallback".into(),
        ];
        reader_args.extend(options.transport.engine_args().iter().map(|arg| arg.to_string()));
        reader_args.extend(options.reader_args.iter().cloned());
        let reader = EngineProcess::start(
            Role::Reader,
            &options.engine,
            reader_args,
            env,
            dir.path(),
            Ready::Socket(reader_socket.clone()),
        )?;
        let (counters, counters_fd) = Counters::create()?;
        let client_template = ClientArgs {
            socket: reader_socket,
            volume_dir,
            slot: 0,
            counters_fd: counters_fd.as_raw_fd(),
            depth: options.depth,
            deadline_ms: options.deadline_ms,
            hang_margin_ms: options.hang_margin_ms,
            seed: options.seed,
            reads_per_attachment,
            flip_expected: options.flip_expected,
            api: options.client_api,
        };
        let mut rig = Rig {
            dir,
            counters,
            counters_fd,
            client_template,
            options: options.clone(),
            clients: Vec::new(),
            reader,
            exporter,
        };
        for slot in 0..options.clients {
            let client = rig.spawn_client(slot)?;
            rig.clients.push(client);
        }
        Ok(rig)
    }

    fn spawn_client(&self, slot: usize) -> Result<ClientProcess, ChaosError> {
        let args = &self.client_template;
        let exe = std::env::current_exe().map_err(|error| ChaosError::Setup(format!("current_exe: {error}")))?;
        // A client's seed differs per slot and per start, so restarted clients read other needles.
        let seed = args.seed
            ^ (slot as u64) << 32
            ^ self.counters.slot(slot).attaches.load(std::sync::atomic::Ordering::Relaxed);
        let mut command = Command::new(exe);
        dies_with_campaign(&mut command)
            .arg(super::CLIENT_SUBCOMMAND)
            .arg("--socket")
            .arg(&args.socket)
            .arg("--volume-dir")
            .arg(&args.volume_dir)
            .args(["--slot", &slot.to_string()])
            .args(["--counters-fd", &self.counters_fd.as_raw_fd().to_string()])
            .args(["--depth", &args.depth.to_string()])
            .args(["--deadline-ms", &args.deadline_ms.to_string()])
            .args(["--hang-margin-ms", &args.hang_margin_ms.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--reads-per-attachment", &args.reads_per_attachment.to_string()])
            .args(["--api", if args.api == super::ClientApi::Reader { "reader" } else { "rings" }])
            .envs(self.options.transport.ucx_env().iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if args.flip_expected {
            command.arg("--flip-expected");
        }
        let child = command.spawn().map_err(|error| ChaosError::Setup(format!("cannot start a client: {error}")))?;
        Ok(ClientProcess { slot, child })
    }

    /// SIGKILLs client `index`, clears its `attached` word and starts it again.
    pub fn kill_and_restart_client(&mut self, index: usize) -> Result<(), ChaosError> {
        let slot = self.clients[index].slot;
        self.clients[index].kill();
        self.counters.slot(slot).attached.store(0, std::sync::atomic::Ordering::Relaxed);
        self.clients[index] = self.spawn_client(slot)?;
        Ok(())
    }

    /// Restarts a client that exited by itself; returns its exit status if it did.
    pub fn restart_exited_client(&mut self, index: usize) -> Result<Option<ExitStatus>, ChaosError> {
        let Some(status) = self.clients[index].exited() else { return Ok(None) };
        let slot = self.clients[index].slot;
        self.counters.slot(slot).attached.store(0, std::sync::atomic::Ordering::Relaxed);
        self.clients[index] = self.spawn_client(slot)?;
        Ok(Some(status))
    }

    /// Kills every client (the end of a run); their regions must then be reclaimed.
    pub fn kill_clients(&mut self) {
        for client in &mut self.clients {
            client.kill();
            self.counters.slot(client.slot).attached.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Cuts up to `cut_bytes` off the end of the volume's `.dat` (never into its super block),
    /// waits `held`, and writes the same bytes back: what the exporter sees when SeaweedFS
    /// rolls back a failed append and then appends again.
    pub fn truncate_volume(&self, cut_bytes: u64, held: Duration) -> Result<(), ChaosError> {
        let path = self.client_template.volume_dir.join(format!("{}.dat", known::VOLUME_ID));
        let failed =
            |what: &str, error: std::io::Error| ChaosError::Setup(format!("cannot {what} {}: {error}", path.display()));
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|error| failed("open", error))?;
        let length = file.metadata().map_err(|error| failed("stat", error))?.len();
        let keep =
            length.saturating_sub(cut_bytes).max(volume_format::superblock::SUPER_BLOCK_SIZE_BYTES as u64).min(length);
        let mut tail = vec![0u8; (length - keep) as usize];
        file.read_exact_at(&mut tail, keep).map_err(|error| failed("read", error))?;
        file.set_len(keep).map_err(|error| failed("truncate", error))?;
        std::thread::sleep(held);
        file.write_all_at(&tail, keep).map_err(|error| failed("restore", error))
    }

    pub fn engine(&mut self, role: Role) -> &mut EngineProcess {
        match role {
            Role::Reader => &mut self.reader,
            Role::Exporter => &mut self.exporter,
        }
    }

    /// Clients that say they hold an attachment.
    pub fn attached_clients(&self) -> u64 {
        self.clients
            .iter()
            .map(|client| self.counters.slot(client.slot).attached.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

/// A TCP port that was free on loopback a moment ago.
fn free_port() -> Result<u16, ChaosError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| ChaosError::Setup(format!("no free port: {error}")))
}
