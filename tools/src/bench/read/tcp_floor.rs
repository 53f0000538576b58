//! The floor of `rdma-bench read --transport stream`: a bare TCP request/response loop between
//! two processes over the same loopback, moving the same sizes at the same depth. The server is
//! this binary re-executed ([`TCP_FLOOR_SUBCOMMAND`], [`server_main`]): it answers each 16-byte
//! request (size, token) with a 40-byte header and `size` bytes from memory, as the exporter
//! answers a read with its reply header and the needle. The client keeps `depth` requests in
//! flight on one connection, as one stream connection carries them. No index, no file, no
//! check, no ring: what TCP itself costs.

use super::{BenchError, Schedule, SliceResult};
use crate::timing::TickClock;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand that runs the floor's server.
pub const TCP_FLOOR_SUBCOMMAND: &str = "__tcp-floor";
/// Bytes of a floor request: the size asked for and a token.
const REQUEST_BYTES: usize = 16;
/// Bytes of the header before each answer's data (as the stream protocol's reply header).
const HEADER_BYTES: usize = 40;
/// Largest answer the server sends.
const SIZE_MAX_BYTES: u64 = 16 << 20;

/// The client side of the floor: the server process and a connection to it.
#[derive(Debug)]
pub(super) struct TcpFloor {
    child: Child,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl TcpFloor {
    /// Starts the server process and connects to it.
    pub(super) fn start(size_max_bytes: usize) -> Result<TcpFloor, BenchError> {
        let fail =
            |what: &str, error: &dyn std::fmt::Display| BenchError::Exporter(format!("TCP floor: {what}: {error}"));
        let exe = std::env::current_exe().map_err(|error| fail("current_exe", &error))?;
        let mut child = Command::new(exe)
            .arg(TCP_FLOOR_SUBCOMMAND)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| fail("spawn the server", &error))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or_else(|| fail("server", &"no stdout"))?;
        BufReader::new(stdout).read_line(&mut line).map_err(|error| fail("read the server's port", &error))?;
        let port: u16 = line.trim().parse().map_err(|_| fail("the server's port", &line.trim()))?;
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|error| fail("connect", &error))?;
        stream.set_nodelay(true).map_err(|error| fail("TCP_NODELAY", &error))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|error| fail("timeout", &error))?;
        Ok(TcpFloor { child, stream, buffer: vec![0; HEADER_BYTES + size_max_bytes] })
    }

    /// The server's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One slice: an unmeasured warm-up run, then a measured run at `size_bytes` and `depth`.
    pub(super) fn slice(
        &mut self,
        clock: &TickClock,
        schedule: &Schedule,
        size_bytes: u64,
        depth: u32,
    ) -> Result<SliceResult, BenchError> {
        self.run(clock, size_bytes, depth, Duration::from_millis(schedule.warmup_ms))?;
        self.run(clock, size_bytes, depth, Duration::from_millis(schedule.slice_ms))
    }

    fn run(
        &mut self,
        clock: &TickClock,
        size_bytes: u64,
        depth: u32,
        duration: Duration,
    ) -> Result<SliceResult, BenchError> {
        let fail = |error: std::io::Error| BenchError::Exporter(format!("TCP floor: {error}"));
        let answer_bytes = HEADER_BYTES + size_bytes as usize;
        let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(depth as usize);
        let mut slice = SliceResult::default();
        let start = Instant::now();
        let mut token = 0u64;
        // Bounded by `duration`: every answer takes at most the read timeout.
        loop {
            let sending = start.elapsed() < duration;
            while sending && sent_at.len() < depth as usize {
                let mut request = [0u8; REQUEST_BYTES];
                request[..8].copy_from_slice(&size_bytes.to_le_bytes());
                request[8..].copy_from_slice(&token.to_le_bytes());
                token += 1;
                sent_at.push_back(Instant::now());
                self.stream.write_all(&request).map_err(fail)?;
            }
            let Some(sent) = sent_at.pop_front() else { break };
            self.stream.read_exact(&mut self.buffer[..answer_bytes]).map_err(fail)?;
            slice.operations += 1;
            slice.bytes += size_bytes;
            slice.latency_ticks.record(clock.ns_to_ticks(sent.elapsed().as_nanos() as u64));
        }
        slice.elapsed_ticks = clock.ns_to_ticks(start.elapsed().as_nanos() as u64);
        Ok(slice)
    }
}

impl Drop for TcpFloor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor's server: listens on a free loopback port (printed on stdout), takes one
/// connection and answers its requests until it closes. Dies with its parent.
pub fn server_main() -> Result<(), String> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| format!("bind: {error}"))?;
    let port = listener.local_addr().map_err(|error| error.to_string())?.port();
    println!("{port}");
    std::io::stdout().flush().map_err(|error| error.to_string())?;
    let (mut stream, _) = listener.accept().map_err(|error| format!("accept: {error}"))?;
    stream.set_nodelay(true).map_err(|error| error.to_string())?;
    let header = [0x5au8; HEADER_BYTES];
    let data = vec![0xa5u8; SIZE_MAX_BYTES as usize];
    let mut request = [0u8; REQUEST_BYTES];
    // Bounded by the client: ends when it closes the connection.
    while stream.read_exact(&mut request).is_ok() {
        let size = u64::from_le_bytes(request[..8].try_into().unwrap_or_default()).min(SIZE_MAX_BYTES) as usize;
        let mut parts = [IoSlice::new(&header), IoSlice::new(&data[..size])];
        let mut parts: &mut [IoSlice<'_>] = &mut parts;
        // Bounded: each pass writes bytes or fails.
        while !parts.is_empty() {
            let written = stream.write_vectored(parts).map_err(|error| error.to_string())?;
            if written == 0 {
                return Err("the connection took no bytes".into());
            }
            IoSlice::advance_slices(&mut parts, written);
        }
    }
    Ok(())
}
