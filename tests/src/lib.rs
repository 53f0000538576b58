//! Helpers shared by the multi-process tests: start a real `rdma-engine`
//! process, attach raw (below the client library, to write hostile entries),
//! find fixtures.

pub mod config_files;
pub mod hostile;
pub mod seaweedfs;

use rdma_ipc::control::{self, AttachRequest, Request, Response};
use rdma_ipc::mapping::{Access, Mapping};
use shm_layout::header::RegionDescription;
use shm_layout::region::RegionView;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding this profile's binaries (target/debug or target/release).
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Path of a workspace binary (`rdma-engine`, or one of `rdma-tools`), built once per test
/// run if it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = binary_dir().join(name);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|done| done == name) {
        let package = if name == "rdma-engine" { "rdma-engine" } else { "rdma-tools" };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--bin", name, "-p", package]);
        if binary_dir().ends_with("release") {
            command.arg("--release");
        }
        let status = command.status().unwrap_or_else(|error| panic!("run cargo build for {name}: {error}"));
        assert!(status.success(), "building the workspace binary {name} failed");
        built.push(name.to_string());
    }
    assert!(path.exists(), "binary {} is missing", path.display());
    path
}

/// Whether `RDMA_TESTS_ALLOW_SKIP` (a comma-separated list) names `part` as skipped on purpose.
pub fn skip_allowed(part: &str) -> bool {
    std::env::var("RDMA_TESTS_ALLOW_SKIP").is_ok_and(|list| list.split(',').any(|name| name.trim() == part))
}

/// A real part a test needs cannot run here. The test fails, unless `RDMA_TESTS_ALLOW_SKIP`
/// names `part`: then the skip is said on stderr and written to the file
/// `RDMA_TESTS_SKIP_LOG` names (`deploy/test.sh` prints that list at the end).
pub fn skip_or_fail(part: &str, reason: &str) {
    if !skip_allowed(part) {
        panic!("{reason} (set RDMA_TESTS_ALLOW_SKIP={part} to skip this on purpose)");
    }
    eprintln!("SKIPPED ({part}): {reason}");
    if let Some(path) = std::env::var_os("RDMA_TESTS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{part}: {reason}");
        }
    }
}

/// Stops process `pid` (SIGSTOP) and waits (bounded) until every one of its threads is
/// stopped: `kill` returns before a running thread has noticed the signal, so a test that
/// sends a request right after it could still be answered.
pub fn stop_process(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        tasks.filter_map(Result::ok).all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_stopped() {
        assert!(Instant::now() < deadline, "process {pid} did not stop within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes `pid` started (its main thread's children), from `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

/// Whether process `pid` exists and has not exited: a zombie is dead, only its parent's
/// wait is missing.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The SeaweedFS fixtures kept in the repository.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../volume-format/tests/fixtures").join(name)
}

/// A running engine process, killed on drop.
#[derive(Debug)]
pub struct Engine {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    options: EngineOptions,
}

/// How to start an engine beyond its socket.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A command the engine runs under, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub prefix: Vec<String>,
}

impl Engine {
    /// Starts `rdma-engine --socket <tmp>/engine.sock <extra>` and waits
    /// (bounded) until its socket answers.
    pub fn start(extra: &[&str]) -> Engine {
        let dir = tempfile::tempdir().expect("temp dir");
        Engine::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Engine {
        Engine::start_with(
            dir,
            EngineOptions { args: extra.iter().map(|a| a.to_string()).collect(), ..Default::default() },
        )
    }

    /// Starts an engine in a new temporary directory with `args` and the
    /// environment variables `env`.
    pub fn start_with_env(args: &[String], env: &[(&str, &str)]) -> Engine {
        let options = EngineOptions {
            args: args.to_vec(),
            env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            prefix: Vec::new(),
        };
        Engine::start_with(tempfile::tempdir().expect("temp dir"), options)
    }

    /// Starts an engine with environment variables and an optional command
    /// prefix (for example `ip netns exec NAME`).
    pub fn start_with(dir: tempfile::TempDir, options: EngineOptions) -> Engine {
        let socket = dir.path().join("engine.sock");
        let log = dir.path().join("engine.log");
        let child = spawn_engine(&socket, &log, &options);
        let engine = Engine { child, socket, dir, log, options };
        engine.wait_ready();
        engine
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if control::connect_to(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("engine did not answer on {} within 20 s; log:\n{}", self.socket.display(), self.log_text());
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Everything the engine logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the engine's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Restarts the engine on the same socket with the same options.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_engine(&self.socket, &self.log, &self.options);
        self.wait_ready();
    }

    /// Attached regions as the engine lists them.
    pub fn region_count(&self) -> usize {
        let connection = control::connect_to(&self.socket).expect("connect");
        control::send(&connection, &Request::ListRegions, &[]).expect("send");
        match control::receive::<Response>(&connection).expect("receive").0 {
            Response::Regions { regions, .. } => regions.len(),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Waits (bounded) until the engine lists `count` regions.
    pub fn wait_for_region_count(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.region_count() == count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// memfds the engine process still has open.
    pub fn open_region_memfds(&self) -> usize {
        let fd_dir = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(fd_dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().contains("rdma-region"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn spawn_engine(socket: &Path, log: &Path, options: &EngineOptions) -> Child {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("engine log file");
    let engine = workspace_binary("rdma-engine");
    let mut command = match options.prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&engine);
            command
        }
        None => Command::new(&engine),
    };
    command.arg("--socket").arg(socket).args(&options.args);
    // An engine given a UCX transport list is a test of UCX's code path, which on a host
    // without a verbs device is the opt-in mode (docs/security.md); the default engines run
    // the stream transport.
    let ucx_wanted = options.env.iter().any(|(name, _)| name == "UCX_TLS");
    if ucx_wanted && !options.args.iter().any(|arg| arg == "--transport") {
        command.args(["--transport", "ucx", "--allow-ucx-software-rma"]);
    }
    command
        .envs(options.env.iter().map(|(name, value)| (name, value)))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start rdma-engine")
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An attachment below the client library: the test writes raw entries and
/// indices, as a hostile or buggy client could.
#[derive(Debug)]
pub struct RawAttachment {
    pub socket: OwnedFd,
    pub mapping: Mapping,
    pub view: RegionView,
    pub description: RegionDescription,
}

/// Attaches with a raw request; `Err` carries the refusal's reason.
pub fn raw_attach(socket_path: &Path, request: AttachRequest) -> Result<RawAttachment, String> {
    let socket = control::connect_to(socket_path).map_err(|e| e.to_string())?;
    control::send(&socket, &Request::Attach(request), &[]).map_err(|e| e.to_string())?;
    let (response, mut fds) = control::receive::<Response>(&socket).map_err(|e| e.to_string())?;
    let reply = match response {
        Response::Attached(reply) => reply,
        Response::Refused { reason } => return Err(reason),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let mapping =
        Mapping::new(fds.remove(0), reply.region_size_bytes, Access::ReadWrite, false).map_err(|e| e.to_string())?;
    // SAFETY: the mapping lives in the returned RawAttachment beside the view.
    let (view, description) =
        unsafe { RegionView::open(mapping.base(), mapping.size_bytes()) }.map_err(|e| e.to_string())?;
    control::confirm_mapped(&socket, reply.region_id).map_err(|e| e.to_string())?;
    Ok(RawAttachment { socket, mapping, view, description })
}

/// A valid attach request.
pub fn attach_request(queue_pairs: u32, sq_entries: u32, buffer_size_bytes: u64) -> AttachRequest {
    AttachRequest {
        layout_version: shm_layout::LAYOUT_VERSION,
        queue_pairs,
        sq_entries,
        buffer_size_bytes,
        client_name: "integration-test".into(),
    }
}

/// Writes a SeaweedFS `security.toml` named `name` in `dir` whose `[jwt.signing.read]` key is
/// `key` (and a write key beside it, as SeaweedFS's own files have); returns its path.
pub fn security_toml(dir: &Path, name: &str, key: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("[jwt.signing]\nkey = \"write\"\n[jwt.signing.read]\nkey = \"{key}\"\n"))
        .expect("write security.toml");
    path.display().to_string()
}

/// Mutual TLS files as a SeaweedFS operator has them (PEM): a CA, and the volume servers' and
/// the clients' certificates and keys, signed by it.
#[derive(Clone, Debug)]
pub struct TlsCertificates {
    pub ca: PathBuf,
    pub volume_cert: PathBuf,
    pub volume_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a CA named `name` and its two certificates in `dir`. They name hosts (`volume01`,
/// `client01`, as common name and DNS name), never the addresses dialled, as operators'
/// certificates do.
pub fn tls_certificates(dir: &Path, name: &str) -> TlsCertificates {
    let ca_key = rcgen::KeyPair::generate().expect("generate a key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca_params.self_signed(&ca_key).expect("sign the CA");
    let write = |file: &str, text: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).expect("write a PEM file");
        path
    };
    let leaf = |host: &str| {
        let key = rcgen::KeyPair::generate().expect("generate a key");
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, host);
        let certificate = params.signed_by(&key, &ca, &ca_key).expect("sign a certificate");
        (write(&format!("{host}.pem"), certificate.pem()), write(&format!("{host}.key"), key.serialize_pem()))
    };
    let (volume_cert, volume_key) = leaf("volume01");
    let (client_cert, client_key) = leaf("client01");
    TlsCertificates { ca: write("ca.pem", ca.pem()), volume_cert, volume_key, client_cert, client_key }
}

/// Writes a `security.toml` named `name` in `dir` with `certificates` (`[grpc] ca`,
/// `[grpc.volume]`, `[grpc.client]`), the read key if given, and SeaweedFS's name lists:
/// `allowed.0` as `[grpc.volume] allowed_commonNames` (the readers an exporter admits),
/// `allowed.1` as `[grpc] allowed_server_commonNames` (the exporters a reader reads from);
/// empty lists admit every certificate of the CA. Returns its path.
pub fn security_toml_with_tls(
    dir: &Path,
    name: &str,
    certificates: &TlsCertificates,
    key: Option<&str>,
    allowed: (&str, &str),
) -> String {
    let path = dir.join(name);
    let mut text = String::new();
    if let Some(key) = key {
        text.push_str(&format!("[jwt.signing.read]\nkey = \"{key}\"\n"));
    }
    text.push_str(&format!(
        "[grpc]\nca = \"{}\"\nallowed_server_commonNames = \"{}\"\n[grpc.volume]\ncert = \"{}\"\nkey = \"{}\"\nallowed_commonNames = \"{}\"\n[grpc.client]\ncert = \"{}\"\nkey = \"{}\"\n",
        certificates.ca.display(),
        allowed.1,
        certificates.volume_cert.display(),
        certificates.volume_key.display(),
        allowed.0,
        certificates.client_cert.display(),
        certificates.client_key.display()
    ));
    std::fs::write(&path, text).expect("write security.toml");
    path.display().to_string()
}

/// A TCP port that was free a moment ago on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts a `test-client` (the binary path comes from the test's
/// `env!("CARGO_BIN_EXE_test-client")`) and waits until it says it attached.
/// Returns the child and the rest of its output.
pub fn spawn_attached_client(
    binary: &str,
    args: &[&std::ffi::OsStr],
) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut child = Command::new(binary).args(args).stdout(Stdio::piped()).spawn().expect("start test-client");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("test-client output");
    assert_eq!(line.trim(), "attached", "test-client did not attach");
    (child, stdout)
}

/// Volume `volume_id` of `dir` (`<id>.dat` + `<id>.idx`, 4-byte offsets).
pub fn open_volume(dir: &Path, volume_id: u32) -> volume_format::volume::LocalVolume {
    let base = dir.join(volume_id.to_string());
    volume_format::volume::LocalVolume::open(
        &base.with_extension("dat"),
        &base.with_extension("idx"),
        volume_format::index::OffsetWidth::Four,
    )
    .expect("open volume")
}

/// Every live needle of a volume as (needle id, cookie), by id.
pub fn live_needles(volume: &volume_format::volume::LocalVolume) -> Vec<(u64, u32)> {
    let mut ids: Vec<u64> = volume.index().iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.into_iter().map(|id| (id, cookie_of(volume, id))).collect()
}

/// The cookie a needle's record carries.
pub fn cookie_of(volume: &volume_format::volume::LocalVolume, needle_id: u64) -> u32 {
    let record = volume.read_record(&volume.locate(needle_id).expect("live needle")).expect("read record");
    u32::from_be_bytes(record[0..4].try_into().expect("4 bytes"))
}

/// Reads one whole needle into a new buffer of `buffer_bytes` and waits for it.
pub fn read_needle(
    client: &rdma_client::Client,
    queue_pair: &mut rdma_client::QueuePair,
    (volume_id, needle_id, cookie): (u32, u64, u32),
    buffer_bytes: u32,
) -> rdma_client::Completion {
    let buffer = client.allocate(buffer_bytes).expect("buffer");
    let operation = rdma_client::Operation::ReadNeedle { volume_id, needle_id, cookie, buffer };
    queue_pair.prepare(operation, needle_id).expect("prepare");
    queue_pair.submit().expect("submit");
    queue_pair.wait(1, Duration::from_secs(20)).expect("wait");
    queue_pair.reap_one().expect("reap").expect("one completion")
}
