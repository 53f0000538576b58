//! The processes `rdma-bench compare` measures, started in one temporary directory and
//! stopped (killed) when the [`Cluster`] is dropped, also when the run fails: a real SeaweedFS
//! master and volume server, two exporting engines on the volume server's directory (the
//! default one, stream transport; and one in the UCX opt-in mode), reading engines (local,
//! stream, UCX over tcp, UCX over shared memory) and an `rdma-sidecar` on the stream reader.

use super::CompareError;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The volume server's `-minFreeSpace`: an absolute floor, not its default of 1 % of the disk.
const VOLUME_MIN_FREE_SPACE: &str = "256MiB";
/// UCX over shared memory, with error handling so a dead peer is noticed (as in the tests).
pub const UCX_SHARED_MEMORY: &[(&str, &str)] = &[("UCX_TLS", "sm,tcp"), ("UCX_MM_ERROR_HANDLING", "y")];
pub const UCX_TCP: &[(&str, &str)] = &[("UCX_TLS", "tcp")];
/// The flags of engines in the UCX opt-in mode (no verbs device here).
const UCX_OPT_IN: [&str; 3] = ["--transport", "ucx", "--allow-ucx-software-rma"];

/// One started process, killed on drop.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Result<Service, CompareError> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|error| CompareError::Setup(format!("{name} log: {error}")))?;
        let stderr = file.try_clone().map_err(|error| CompareError::Setup(format!("{name} log: {error}")))?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|error| CompareError::Setup(format!("cannot start {name} ({}): {error}", binary.display())))?;
        Ok(Service { name, child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `ready` says yes, failing if the process exits or the time runs out.
    fn wait(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), CompareError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CompareError::Setup(format!("{} exited ({status}):\n{}", self.name, self.log_tail())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(CompareError::Setup(format!("{} was not {what} within {READY_TIMEOUT:?}:\n{}", self.name, self.log_tail())))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on loopback whose gRPC twin (port + 10000, as `weed` uses) is free too.
pub fn free_port() -> Result<u16, CompareError> {
    for _ in 0..200 {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|error| CompareError::Setup(format!("no free port: {error}")))?
            .port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err(CompareError::Setup("no free port pair (port, port + 10000) on 127.0.0.1".into()))
}

/// A GET with any status; the body read whole.
pub fn http_get(agent: &ureq::Agent, url: &str) -> Result<(u16, Vec<u8>), String> {
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(error.to_string()),
    };
    let status = response.status();
    let mut body = Vec::new();
    response.into_reader().take(1 << 31).read_to_end(&mut body).map_err(|error| error.to_string())?;
    Ok((status, body))
}

/// Every process of one run.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub master_address: String,
    pub volume_address: String,
    pub volume: Service,
    pub sidecar_address: Option<String>,
    // Drop order: clients of the engines first, SeaweedFS last.
    pub sidecar: Option<Service>,
    /// The reading engines the bench drives (local, stream, ucx_tcp, ucx_sm), kept alive here.
    pub readers: Vec<Service>,
    /// The default exporter (stream transport) and the UCX one.
    pub exporters: Vec<Service>,
    _master: Service,
}

impl Cluster {
    /// Starts a master and a volume server and waits until an assign works.
    pub fn start_seaweedfs(weed: &Path) -> Result<Cluster, CompareError> {
        let dir = tempfile::tempdir().map_err(|error| CompareError::Setup(format!("temp dir: {error}")))?;
        let (master_dir, volume_dir) = (dir.path().join("master"), dir.path().join("volume"));
        for path in [&master_dir, &volume_dir] {
            std::fs::create_dir_all(path)
                .map_err(|error| CompareError::Setup(format!("{}: {error}", path.display())))?;
        }
        let master_port = free_port()?;
        let master_args = vec![
            "master".to_string(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-port={master_port}"),
            format!("-mdir={}", master_dir.display()),
        ];
        let master = Service::spawn("weed-master", weed, &master_args, &[], dir.path())?;
        let volume_port = free_port()?;
        let volume_args = vec![
            "volume".to_string(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-port={volume_port}"),
            format!("-dir={}", volume_dir.display()),
            format!("-master=127.0.0.1:{master_port}"),
            "-max=8".into(),
            // The default is 1 % of the disk, below which no volume is created;
            // a shared disk can be that full while still holding the bench's files.
            format!("-minFreeSpace={VOLUME_MIN_FREE_SPACE}"),
        ];
        let mut volume = Service::spawn("weed-volume", weed, &volume_args, &[], dir.path())?;
        let master_address = format!("127.0.0.1:{master_port}");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
        let assign_url = format!("http://{master_address}/dir/assign");
        volume.wait("accepting uploads", || {
            http_get(&agent, &assign_url)
                .is_ok_and(|(status, body)| status == 200 && body.windows(5).any(|w| w == b"\"fid\""))
        })?;
        Ok(Cluster {
            dir,
            master_address,
            volume_address: format!("127.0.0.1:{volume_port}"),
            volume,
            sidecar_address: None,
            sidecar: None,
            readers: Vec::new(),
            exporters: Vec::new(),
            _master: master,
        })
    }

    pub fn volume_dir(&self) -> PathBuf {
        self.dir.path().join("volume")
    }

    /// Starts the two exporters on the volume server's directory and the four reading engines.
    pub fn start_engines(&mut self, engine: &Path) -> Result<(), CompareError> {
        let socket = |name: &str| self.dir.path().join(format!("{name}.sock")).display().to_string();
        let volume_dir = self.volume_dir().display().to_string();
        let exporter =
            |name: &'static str, extra: &[&str], env: &[(&str, &str)]| -> Result<(Service, u16), CompareError> {
                let port = free_port()?;
                let listen = format!("127.0.0.1:{port}");
                let mut args = vec!["--socket".to_string(), socket(name), "--export-dir".into(), volume_dir.clone()];
                args.extend(["--listen".to_string(), listen.clone()]);
                args.extend(extra.iter().map(|arg| arg.to_string()));
                let mut service = Service::spawn(name, engine, &args, env, self.dir.path())?;
                service.wait("listening", || std::net::TcpStream::connect(&listen).is_ok())?;
                Ok((service, port))
            };
        let (stream_exporter, stream_port) = exporter("exporter", &[], &[])?;
        let (ucx_exporter, ucx_port) = exporter("ucx_exporter", &UCX_OPT_IN, UCX_SHARED_MEMORY)?;
        let reader = |name: &'static str, extra: Vec<String>, env: &[(&str, &str)]| -> Result<Service, CompareError> {
            let path = socket(name);
            let mut args = vec!["--socket".to_string(), path.clone(), "--poller-cpu".into(), "0".into()];
            args.extend(extra);
            let mut service = Service::spawn(name, engine, &args, env, self.dir.path())?;
            service.wait("answering on its socket", || rdma_ipc::control::connect_to(Path::new(&path)).is_ok())?;
            Ok(service)
        };
        let through_master = |port: u16, extra: &[&str]| {
            let mut args = vec!["--master".to_string(), self.master_address.clone(), "--export-port".into()];
            args.push(port.to_string());
            args.extend(extra.iter().map(|arg| arg.to_string()));
            args
        };
        let readers = vec![
            reader("local", vec!["--volume-dir".into(), volume_dir.clone()], &[])?,
            reader("stream", through_master(stream_port, &[]), &[])?,
            reader("ucx_tcp", through_master(ucx_port, &UCX_OPT_IN), UCX_TCP)?,
            reader("ucx_sm", through_master(ucx_port, &UCX_OPT_IN), UCX_SHARED_MEMORY)?,
        ];
        self.exporters = vec![stream_exporter, ucx_exporter];
        self.readers = readers;
        Ok(())
    }

    /// The control socket of a reading engine.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// Starts `rdma-sidecar` on the stream reader (what a user gets by default), if the binary
    /// is there.
    pub fn start_sidecar(&mut self, sidecar: &Path) -> Result<(), CompareError> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let args = vec![
            "--socket".to_string(),
            self.socket("stream").display().to_string(),
            "--listen".into(),
            address.clone(),
        ];
        let mut service = Service::spawn("sidecar", sidecar, &args, &[], self.dir.path())?;
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
        let health = format!("http://{address}/health");
        service.wait("healthy", || http_get(&agent, &health).is_ok_and(|(status, _)| status == 200))?;
        self.sidecar = Some(service);
        self.sidecar_address = Some(address);
        Ok(())
    }

    /// The volume host's processes: the volume server and the exporters (the one a path does
    /// not use is idle meanwhile).
    pub fn volume_host_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.volume.pid()];
        pids.extend(self.exporters.iter().map(Service::pid));
        pids
    }
}
