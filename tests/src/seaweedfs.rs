//! A real SeaweedFS for the tests: a `weed master` and a `weed volume`
//! server on loopback, each with its own temporary directory and ports,
//! started and waited for, and killed on drop (also when a test panics).
//!
//! The binary comes from `WEED_BINARY`, else from `deploy/install-seaweedfs.sh`
//! (which reuses its cached build). A test that cannot have it fails, unless
//! `RDMA_TESTS_ALLOW_SKIP` names `weed` (a comma-separated list): then it prints
//! that it skipped and why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Starts of a master and a volume server tried before a test fails (each on new ports).
const START_ATTEMPTS: u32 = 3;
/// How long a master and a volume server may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one HTTP request of the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The volume server's `-minFreeSpace`. Its default is 1 % of the disk: below
/// that it reports no free volume slots and every assign fails with "no free
/// volumes left". The test machines share a large disk whose free space comes
/// and goes with other tenants (seen below 1 % on a CI machine), while the
/// tests write a few MiB, so the tests ask for an absolute floor instead.
pub const WEED_MIN_FREE_SPACE: &str = "64MiB";

/// The `weed` binary, or `None` when `RDMA_TESTS_ALLOW_SKIP` names `weed` (said
/// on stderr). Panics when it is needed and cannot be had.
pub fn weed_binary() -> Option<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if crate::skip_allowed("weed") {
        crate::skip_or_fail("weed", "this test needs a real SeaweedFS");
        return None;
    }
    let found = BINARY.get_or_init(find_weed);
    match found {
        Ok(path) => Some(path.clone()),
        Err(reason) => panic!("{reason} (set RDMA_TESTS_ALLOW_SKIP=weed to skip the SeaweedFS tests on purpose)"),
    }
}

fn find_weed() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("WEED_BINARY") {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("WEED_BINARY={} is not a file", path.display())) };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/install-seaweedfs.sh");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(line) if output.status.success() && Path::new(line.trim()).is_file() => Ok(PathBuf::from(line.trim())),
        _ => Err(format!("{} did not give a weed binary ({})", script.display(), output.status)),
    }
}

/// A port free on loopback whose gRPC twin (port + 10000) is free too.
///
/// Both are taken below the kernel's ephemeral range (`ip_local_port_range`), where no
/// outgoing connection's local port can land between this check and weed's bind: a port
/// from `free_port` (an ephemeral one) was once taken that way by the time weed bound it
/// (`bind: address already in use`, the volume server down, no assign for 60 s).
fn free_weed_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(10_000).max(10_001));
    let now_ns = std::time::UNIX_EPOCH.elapsed().map_or(1, |since| since.as_nanos() as u64);
    let mut state = ((u64::from(std::process::id()) << 32) ^ now_ns) | 1;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = low + (state % u64::from(high - low)) as u16;
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) below {ephemeral_low} on 127.0.0.1");
}

/// How much the file system under `path` has free, for failure messages: the
/// volume server stops taking volumes below [`WEED_MIN_FREE_SPACE`].
fn disk_free_report(path: &Path) -> String {
    match nix::sys::statvfs::statvfs(path) {
        Ok(stats) => {
            let free = stats.blocks_available() * stats.fragment_size();
            format!("{} MiB free under {}, the volume server needs {WEED_MIN_FREE_SPACE}", free >> 20, path.display())
        }
        Err(error) => format!("free space under {} unknown: {error}", path.display()),
    }
}

/// How to start the volume server.
#[derive(Clone, Debug)]
pub struct WeedOptions {
    /// Most volumes the volume server holds (`-max`).
    pub max_volumes: u32,
    /// `-index=leveldb` instead of the default in-memory index.
    pub leveldb_index: bool,
    /// Volume size limit given to the master, in MiB.
    pub volume_size_limit_mib: u32,
}

impl Default for WeedOptions {
    fn default() -> WeedOptions {
        WeedOptions { max_volumes: 8, leveldb_index: false, volume_size_limit_mib: 1024 }
    }
}

/// A response as the harness saw it: status, headers (lower-case names), body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// A file as uploaded.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub fid: String,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A running master and volume server, killed on drop.
#[derive(Debug)]
pub struct SeaweedFs {
    pub master_port: u16,
    pub volume_port: u16,
    pub dir: tempfile::TempDir,
    master: Child,
    volume: Child,
    agent: ureq::Agent,
}

impl SeaweedFs {
    /// Starts a master and a volume server, or `None` when the environment
    /// skips SeaweedFS on purpose.
    pub fn start(options: WeedOptions) -> Option<SeaweedFs> {
        let weed = weed_binary()?;
        // Bounded: a few attempts, each with new ports.
        for attempt in 1..=START_ATTEMPTS {
            let mut seaweedfs = SeaweedFs::spawn(&weed, &options);
            match seaweedfs.wait_ready() {
                Ok(()) => return Some(seaweedfs),
                // Another process took a port between the check and weed's bind (two tests
                // picking at once): weed exits at once; try other ports.
                Err(report) if attempt < START_ATTEMPTS && seaweedfs.a_server_exited() => {
                    eprintln!(
                        "SeaweedFS exited at start (attempt {attempt}); starting it again on other ports:\n{report}"
                    );
                }
                Err(report) => panic!("{report}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns a master and a volume server on free ports.
    fn spawn(weed: &Path, options: &WeedOptions) -> SeaweedFs {
        let dir = tempfile::tempdir().expect("temp dir for SeaweedFS");
        let (master_dir, volume_dir) = (dir.path().join("master"), dir.path().join("volume"));
        std::fs::create_dir_all(&master_dir).expect("master dir");
        std::fs::create_dir_all(&volume_dir).expect("volume dir");
        let master_port = free_weed_port();
        let master = spawn_logged(
            weed,
            &[
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={master_port}"),
                format!("-mdir={}", master_dir.display()),
                format!("-volumeSizeLimitMB={}", options.volume_size_limit_mib),
            ],
            &dir.path().join("master.log"),
        );
        let volume_port = free_weed_port();
        let mut volume_args = vec![
            "volume".to_string(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-port={volume_port}"),
            format!("-dir={}", volume_dir.display()),
            format!("-master=127.0.0.1:{master_port}"),
            format!("-max={}", options.max_volumes),
            format!("-minFreeSpace={WEED_MIN_FREE_SPACE}"),
        ];
        if options.leveldb_index {
            volume_args.push("-index=leveldb".into());
        }
        let volume = spawn_logged(weed, &volume_args, &dir.path().join("volume.log"));
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
        SeaweedFs { master_port, volume_port, dir, master, volume, agent }
    }

    /// Whether the master or the volume server has exited.
    fn a_server_exited(&mut self) -> bool {
        [&mut self.master, &mut self.volume]
            .into_iter()
            .any(|child| child.try_wait().is_ok_and(|status| status.is_some()))
    }

    /// `127.0.0.1:PORT` of the master.
    pub fn master_address(&self) -> String {
        format!("127.0.0.1:{}", self.master_port)
    }

    /// `127.0.0.1:PORT` of the volume server.
    pub fn volume_address(&self) -> String {
        format!("127.0.0.1:{}", self.volume_port)
    }

    /// The volume server's process id.
    pub fn volume_pid(&self) -> u32 {
        self.volume.id()
    }

    /// Stops the volume server (SIGSTOP), waiting until all its threads are stopped.
    pub fn stop_volume_server(&self) {
        crate::stop_process(self.volume.id());
    }

    /// Resumes a stopped volume server.
    pub fn resume_volume_server(&self) {
        let pid = nix::unistd::Pid::from_raw(self.volume.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT the volume server");
    }

    /// The volume server's `-dir`.
    pub fn volume_dir(&self) -> PathBuf {
        self.dir.path().join("volume")
    }

    /// Both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("--- master.log\n{}\n--- volume.log\n{}", read("master.log"), read("volume.log"))
    }

    /// Waits until an assign succeeds: the master is leader and the volume
    /// server has registered with it.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(reply) = self.get_url(&format!("http://{}/dir/assign", self.master_address()), &[]) {
                if reply.status == 200 && String::from_utf8_lossy(&reply.body).contains("\"fid\"") {
                    return Ok(());
                }
            }
            if self.a_server_exited() {
                return Err(format!("a SeaweedFS server exited before it was ready\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "SeaweedFS did not accept an assign within {READY_TIMEOUT:?} ({})\n{}",
            disk_free_report(&self.volume_dir()),
            self.logs()
        ))
    }

    /// Assigns a file id through the master (`/dir/assign`), with query
    /// parameters such as `ttl=1m`. Returns the fid and the volume server url.
    /// The first assign of a new collection can meet "no writable volumes ... volume growth in
    /// progress" while the master grows its volumes: that is retried (bounded).
    pub fn assign(&self, query: &str) -> (String, String) {
        let url = format!("http://{}/dir/assign?{query}", self.master_address());
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let reply = self.get_url(&url, &[]).expect("assign");
            let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("assign answer is JSON");
            if let (Some(fid), Some(server)) = (json["fid"].as_str(), json["url"].as_str()) {
                return (fid.to_string(), server.to_string());
            }
            let growing = json["error"].as_str().is_some_and(|error| error.contains("no writable volumes"));
            if !growing || std::time::Instant::now() >= deadline {
                panic!("assign failed: {json}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Uploads `bytes` as a file named `name` (with `mime`, if any) through
    /// SeaweedFS's own API: an assign on the master, then a multipart POST.
    pub fn upload(&self, name: &str, mime: Option<&str>, bytes: &[u8]) -> Uploaded {
        self.upload_with(name, mime, bytes, "", &[])
    }

    /// Like [`SeaweedFs::upload`], with assign parameters (`ttl=1m`; `cm=true`
    /// marks a chunk manifest) and extra request headers (`Seaweed-Key: value` pairs).
    pub fn upload_with(
        &self,
        name: &str,
        mime: Option<&str>,
        bytes: &[u8],
        assign_query: &str,
        headers: &[(&str, &str)],
    ) -> Uploaded {
        let (fid, server) = self.assign(assign_query);
        // `ttl` is for the upload too, `cm=true` (a chunk manifest) only for it.
        let upload_query: Vec<&str> =
            assign_query.split('&').filter(|pair| pair.starts_with("ttl=") || pair.starts_with("cm=")).collect();
        let mut url = format!("http://{server}/{fid}");
        if !upload_query.is_empty() {
            url.push_str(&format!("?{}", upload_query.join("&")));
        }
        let boundary = "rdmaTestBoundary7MA4YWxkTrZu0gW";
        let mut body = Vec::with_capacity(bytes.len() + 256);
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n").as_bytes(),
        );
        if let Some(mime) = mime {
            body.extend_from_slice(format!("Content-Type: {mime}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut request =
            self.agent.post(&url).set("Content-Type", &format!("multipart/form-data; boundary={boundary}"));
        for (key, value) in headers {
            request = request.set(key, value);
        }
        let reply = into_reply(request.send_bytes(&body)).expect("upload POST");
        assert!(reply.status == 201 || reply.status == 200, "upload of {name} failed: {reply:?}\n{}", self.logs());
        Uploaded { fid, name: name.to_string(), bytes: bytes.to_vec() }
    }

    /// Deletes a file through the volume server (a tombstone is appended).
    pub fn delete(&self, fid: &str) {
        let url = format!("http://{}/{fid}", self.volume_address());
        let reply = into_reply(self.agent.delete(&url).call()).expect("DELETE");
        assert!(reply.status == 202 || reply.status == 200, "delete of {fid} failed: {reply:?}");
    }

    /// `GET http://<volume server>/<path>` with `headers`, as any client sends it.
    pub fn volume_get(&self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        let url = format!("http://{}/{}", self.volume_address(), path.trim_start_matches('/'));
        self.get_url(&url, headers).expect("GET from the volume server")
    }

    /// A GET of any URL, any status.
    pub fn get_url(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
        http_get(&self.agent, url, headers)
    }

    /// Asks the master to vacuum every volume with more garbage than `threshold` (0..1).
    pub fn vacuum(&self, threshold: f64) -> HttpReply {
        let url = format!("http://{}/vol/vacuum?garbageThreshold={threshold}", self.master_address());
        self.get_url(&url, &[]).expect("vacuum")
    }
}

/// A GET with `headers`, any status, the body read whole.
pub fn http_get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
    http_request(agent, "GET", url, headers)
}

/// A request of any method with `headers`, any status, the body read whole.
pub fn http_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<HttpReply, String> {
    let mut request = agent.request(method, url);
    for (key, value) in headers {
        request = request.set(key, value);
    }
    into_reply(request.call())
}

fn into_reply(result: Result<ureq::Response, ureq::Error>) -> Result<HttpReply, String> {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(error.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| response.header(&name).map(|value| (name.to_ascii_lowercase(), value.to_string())))
        .collect();
    let mut body = Vec::new();
    response.into_reader().take(1 << 31).read_to_end(&mut body).map_err(|error| error.to_string())?;
    Ok(HttpReply { status, headers, body })
}

fn spawn_logged(binary: &Path, args: &[String], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let stderr = file.try_clone().expect("log file clone");
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()))
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        for child in [&mut self.volume, &mut self.master] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
