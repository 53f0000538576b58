//! Connecting to an exporter: TCP, TLS's handshake when configured, then the protocol's,
//! blocking and bounded by one deadline.
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
use super::super::tls::{self, TlsLink};
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
    #[error("the TLS session failed: {0}")]
    Tls(String),
    #[error("the exporter refused this engine's certificate ({0}): is it signed by the exporter's [grpc] ca?")]
    TlsRefused(String),
    #[error("the exporter closed the connection during the TLS handshake (it may have no certificate: give it [grpc.volume] cert and key and [grpc] ca; or this address is not in its --allow-peer)")]
    TlsClosed,
    #[error("the exporter speaks TLS and this engine has no certificate (give it [grpc.client] cert and key and [grpc] ca in --security-toml)")]
    ExporterSpeaksTls,
}

/// A connection that is up: its socket, non-blocking with `TCP_NODELAY`, and its TLS state
/// when it runs over TLS.
#[derive(Debug)]
pub struct Established {
    pub stream: TcpStream,
    pub tls: Option<TlsLink>,
}

/// Connects to `address` and runs the handshakes (TLS's when `tls` is given, then the
/// protocol's), within `timeout` in all. The connection comes back ready for requests.
pub fn connect(
    address: SocketAddr,
    key: Option<&ReadKey>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Established, ConnectError> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&address, timeout).map_err(ConnectError::Connect)?;
    let _ = stream.set_nodelay(true);
    let tls = tls
        .map(|config| rustls::ClientConnection::new(Arc::clone(config), tls::server_name(address)))
        .transpose()
        .map_err(|error| ConnectError::Tls(error.to_string()))?;
    let mut channel = Channel { stream, tls, deadline, timeout };
    channel.tls_handshake()?;
    let reader_nonce = auth::nonce().map_err(ConnectError::Io)?;
    channel.write_all(ClientHello::new(reader_nonce).as_bytes())?;
    let mut hello = [0u8; 72];
    channel.read_exact(&mut hello)?;
    if channel.tls.is_none() && TLS_RECORD_TYPES.contains(&hello[0]) {
        return Err(ConnectError::ExporterSpeaksTls);
    }
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
    channel.write_all(ClientProof { proof }.as_bytes())?;
    let mut done = [0u8; 8];
    channel.read_exact(&mut done)?;
    let done = HandshakeDone::read_from_bytes(&done).map_err(|_| ConnectError::Closed)?;
    if done._reserved != [0; 4] {
        return Err(ConnectError::Wire(WireError::Reserved));
    }
    match done.status.get() {
        handshake_status::OK => {}
        handshake_status::BAD_PROOF => return Err(ConnectError::ReaderProof),
        other => return Err(ConnectError::Status(other)),
    }
    let Channel { stream, tls, .. } = channel;
    stream.set_nonblocking(true).map_err(ConnectError::Io)?;
    let tls = tls.map(TlsLink::established).transpose().map_err(ConnectError::Io)?;
    Ok(Established { stream, tls })
}

/// The first bytes of a TLS alert or handshake record: a plaintext reader met a TLS exporter.
const TLS_RECORD_TYPES: [u8; 2] = [0x15, 0x16];

/// The blocking handshake's connection: plaintext or TLS, every call bounded by one deadline.
struct Channel {
    stream: TcpStream,
    tls: Option<rustls::ClientConnection>,
    deadline: Instant,
    timeout: Duration,
}

impl Channel {
    /// Bounds the socket's next waits by the time left.
    fn arm(&self) -> Result<(), ConnectError> {
        let left = deadline_left(self.deadline, self.timeout)?;
        self.stream.set_read_timeout(Some(left)).map_err(ConnectError::Io)?;
        self.stream.set_write_timeout(Some(left)).map_err(ConnectError::Io)
    }

    fn tls_handshake(&mut self) -> Result<(), ConnectError> {
        // Bounded by the deadline: every wait of `complete_io` is.
        while self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            self.arm()?;
            let Some(tls) = self.tls.as_mut() else { break };
            tls.complete_io(&mut self.stream).map_err(|error| self.error(error))?;
        }
        Ok(())
    }

    fn read_exact(&mut self, bytes: &mut [u8]) -> Result<(), ConnectError> {
        let mut filled = 0;
        // Bounded by the deadline: every read waits at most the time left.
        while filled < bytes.len() {
            self.arm()?;
            let read = match &mut self.tls {
                None => self.stream.read(&mut bytes[filled..]),
                Some(tls) => rustls::Stream::new(tls, &mut self.stream).read(&mut bytes[filled..]),
            };
            match read {
                // A TLS exporter answers a plaintext hello with an alert record and closes.
                Ok(0) if self.tls.is_none() && filled > 0 && TLS_RECORD_TYPES.contains(&bytes[0]) => {
                    return Err(ConnectError::ExporterSpeaksTls)
                }
                Ok(0) => return Err(ConnectError::Closed),
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(self.error(error)),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnectError> {
        self.arm()?;
        let written = match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(tls) => {
                let mut stream = rustls::Stream::new(tls, &mut self.stream);
                stream.write_all(bytes).and_then(|()| stream.flush())
            }
        };
        written.map_err(|error| self.error(error))
    }

    /// What an I/O error during the handshake means.
    fn error(&self, error: io::Error) -> ConnectError {
        let tls_error = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match (error.kind(), tls_error) {
            (_, Some(rustls::Error::AlertReceived(alert))) => ConnectError::TlsRefused(format!("{alert:?}")),
            (_, Some(tls_error)) => ConnectError::Tls(tls_error.to_string()),
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, _) => ConnectError::Timeout(self.timeout),
            (io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe, _)
                if self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) =>
            {
                ConnectError::TlsClosed
            }
            (io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe, _) => {
                ConnectError::Closed
            }
            _ => ConnectError::Io(error),
        }
    }
}

fn deadline_left(deadline: Instant, timeout: Duration) -> Result<Duration, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ConnectError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

/// A connection attempt's outcome, for the peer at `peer_index`.
pub(super) type Connected = (usize, Result<Established, ConnectError>);

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
    pub fn start(
        key: Option<ReadKey>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
        capacity: usize,
        wake: Waker,
    ) -> io::Result<Connector> {
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
                let outcome = connect(address, key.as_ref(), tls.as_ref(), timeout);
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
