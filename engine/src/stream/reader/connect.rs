//! Connecting to an exporter: TCP, then the handshake, blocking and bounded by one deadline.
//! The poller never waits for this: [`Connector`] runs it on a thread of its own and hands
//! each connection that is up to the poller through a queue, ringing its doorbell.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::super::auth::{self, Side};
use super::super::wire::{
    auth_mode, handshake_status, ClientHello, ClientProof, HandshakeDone, ServerHello, WireError, PROOF_BYTES,
};
use crate::rdma::token::ReadKey;
use crate::read::http::Waker;

/// Why a connection to an exporter could not be made (one sentence for the log).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("the handshake failed: {0}")]
    Io(io::Error),
    #[error("the exporter closed the connection during the handshake (this address may not be in its --allow-peer, or it is at its connection limits)")]
    Closed,
    #[error("the handshake took longer than {0:?}")]
    Timeout(Duration),
    #[error("the exporter's hello is not the protocol's: {0}")]
    Wire(#[from] WireError),
    #[error("the exporter asks for SeaweedFS's read key and this engine has none (give it --security-toml)")]
    KeyNeeded,
    #[error("the exporter's proof does not match this engine's read key (the two security.toml files differ, or it is not our exporter)")]
    ExporterProof,
    #[error("the exporter asks for no read key, so it cannot prove it holds SeaweedFS's read key as this engine does (give the exporter --security-toml too)")]
    ExporterWithoutKey,
    #[error("the exporter refused this engine's proof: the two read keys differ")]
    ReaderProof,
    #[error("the exporter answered the handshake with status {0}")]
    Status(i32),
}

/// Connects to `address` and runs the handshake, within `timeout` in all. The stream comes
/// back non-blocking, with `TCP_NODELAY`, ready for requests.
pub fn connect(address: SocketAddr, key: Option<&ReadKey>, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(ConnectError::Connect)?;
    let _ = stream.set_nodelay(true);
    let reader_nonce = auth::nonce().map_err(ConnectError::Io)?;
    write_all(&mut stream, ClientHello::new(reader_nonce).as_bytes(), deadline, timeout)?;
    let mut hello = [0u8; 72];
    read_exact(&mut stream, &mut hello, deadline, timeout)?;
    let hello = ServerHello::decode(&hello)?;
    let proof = match (hello.auth.get(), key) {
        (auth_mode::READ_KEY, None) => return Err(ConnectError::KeyNeeded),
        (auth_mode::READ_KEY, Some(key)) => {
            if !auth::verify(key, Side::Exporter, &reader_nonce, &hello.nonce, &hello.proof) {
                return Err(ConnectError::ExporterProof);
            }
            auth::proof(key, Side::Reader, &reader_nonce, &hello.nonce)
        }
        // An exporter that asks for no key cannot prove it holds one: a reader that has the key
        // does not read from it (it could be anyone listening at that address).
        (_, Some(_)) => return Err(ConnectError::ExporterWithoutKey),
        (_, None) => [0; PROOF_BYTES],
    };
    write_all(&mut stream, ClientProof { proof }.as_bytes(), deadline, timeout)?;
    let mut done = [0u8; 8];
    read_exact(&mut stream, &mut done, deadline, timeout)?;
    let done = HandshakeDone::read_from_bytes(&done).map_err(|_| ConnectError::Closed)?;
    if done._reserved != [0; 4] {
        return Err(ConnectError::Wire(WireError::Reserved));
    }
    match done.status.get() {
        handshake_status::OK => {}
        handshake_status::BAD_PROOF => return Err(ConnectError::ReaderProof),
        other => return Err(ConnectError::Status(other)),
    }
    stream.set_nonblocking(true).map_err(ConnectError::Io)?;
    Ok(stream)
}

fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ConnectError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

fn read_exact(
    stream: &mut TcpStream,
    bytes: &mut [u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let mut filled = 0;
    // Bounded by the deadline: every read waits at most the time left.
    while filled < bytes.len() {
        stream.set_read_timeout(Some(remaining(deadline, timeout)?)).map_err(ConnectError::Io)?;
        match stream.read(&mut bytes[filled..]) {
            Ok(0) => return Err(ConnectError::Closed),
            Ok(count) => filled += count,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ConnectError::Timeout(timeout))
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Err(ConnectError::Closed),
            Err(error) => return Err(ConnectError::Io(error)),
        }
    }
    Ok(())
}

fn write_all(stream: &mut TcpStream, bytes: &[u8], deadline: Instant, timeout: Duration) -> Result<(), ConnectError> {
    stream.set_write_timeout(Some(remaining(deadline, timeout)?)).map_err(ConnectError::Io)?;
    stream.write_all(bytes).map_err(|error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnectError::Timeout(timeout),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ConnectError::Closed,
        _ => ConnectError::Io(error),
    })
}

/// A connection attempt's outcome, for the peer at `peer_index`.
pub(super) type Connected = (usize, Result<TcpStream, ConnectError>);

/// The thread that connects, and the queues to and from it.
#[derive(Debug)]
pub(super) struct Connector {
    requests: Option<mpsc::SyncSender<(usize, SocketAddr)>>,
    answers: mpsc::Receiver<Connected>,
    /// Set when the poller drops the connector: attempts still queued are not made.
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Connector {
    /// Starts the thread; `capacity` bounds both queues, `wake` rings the poller's doorbell
    /// after each answer.
    pub fn start(key: Option<ReadKey>, timeout: Duration, capacity: usize, wake: Waker) -> io::Result<Connector> {
        let (requests, incoming) = mpsc::sync_channel::<(usize, SocketAddr)>(capacity);
        let (answer, answers) = mpsc::sync_channel(capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new().name("stream-connect".into()).spawn(move || {
            // Ends when the poller drops its sender.
            while let Ok((peer_index, address)) = incoming.recv() {
                if thread_stop.load(Ordering::Acquire) {
                    return;
                }
                let outcome = connect(address, key.as_ref(), timeout);
                if answer.send((peer_index, outcome)).is_err() {
                    return;
                }
                wake();
            }
        })?;
        Ok(Connector { requests: Some(requests), answers, stop, thread: Some(thread) })
    }

    /// Asks for a connection to `address`; false when the queue is full (ask again later).
    pub fn request(&self, peer_index: usize, address: SocketAddr) -> bool {
        self.requests.as_ref().is_some_and(|requests| requests.try_send((peer_index, address)).is_ok())
    }

    /// The next connection attempt that ended.
    pub fn poll(&self) -> Option<Connected> {
        self.answers.try_recv().ok()
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.requests.take();
        // Drain so the thread is not blocked on a full answer queue; it ends after its current
        // attempt (bounded by the connect timeout).
        while self.answers.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
