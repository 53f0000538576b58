//! One reader's connection at the exporter: the handshake, then requests read and answered in
//! order. Everything is non-blocking and bounded: a connection holds at most
//! [`Limits::requests_in_flight_max`] replies and reads nothing more until some are sent, so a
//! reader that never reads its replies stalls only itself (and is closed after
//! [`Limits::write_stall_timeout`]). Bad bytes close the connection; nothing here panics on
//! input. Over TLS the same messages travel as plaintext inside its records (`tls`); file data
//! is then read with `pread` and encrypted, a bounded amount at a time, instead of `sendfile`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream;
use zerocopy::IntoBytes;

use super::super::auth::{self, Side};
use super::super::tls::TlsLink;
use super::super::wire::{
    auth_mode, handshake_status, ClientHello, ClientProof, HandshakeDone, Request, ServerHello, WireError, NONCE_BYTES,
    PROOF_BYTES, REQUEST_BYTES,
};
use super::super::Limits;
use super::answer::{answer_read, answer_volumes, Outgoing};
use crate::rdma::token::ReadKey;
use crate::read::local::LocalVolumes;

/// Bytes of input buffered per connection: whole requests, read in batches.
const INPUT_BYTES: usize = REQUEST_BYTES * 32;
/// Messages handled per turn of one connection, so one busy reader cannot hold the thread.
const MESSAGES_PER_TURN_MAX: usize = 64;
/// Over TLS: plaintext handed to the record layer before its records are sent (one `writev`
/// for the replies gathered), and the file bytes read per `pread`.
const TLS_FEED_BYTES: usize = 64 << 10;
const TLS_FILE_CHUNK_BYTES: usize = 16 << 10;
/// The first byte of a TLS handshake record: a reader speaking TLS to a plaintext exporter.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where the connection is.
#[derive(Debug)]
enum Phase {
    /// Waiting for the reader's hello.
    Hello,
    /// The hello was answered; waiting for the reader's proof.
    Proof { reader_nonce: [u8; NONCE_BYTES], exporter_nonce: [u8; NONCE_BYTES] },
    /// Authenticated: requests are answered.
    Serving,
    /// Refused: the refusal is sent, then the connection is closed.
    Refused,
}

/// Why a connection is closed (said in one log line by the caller).
#[derive(Debug, thiserror::Error)]
pub(super) enum Close {
    #[error("the reader closed the connection")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad message: {0}")]
    Wire(#[from] WireError),
    #[error("the reader's proof does not match the read key")]
    BadProof,
    #[error("a reply's file shrank while it was being sent")]
    FileShrank,
    #[error("the reader speaks TLS and this exporter has no certificate ([grpc.volume] cert and key, [grpc] ca in --security-toml)")]
    ReaderSpeaksTls,
    #[error("{0}")]
    Timeout(&'static str),
}

/// What a connection needs from the exporter while it runs.
pub(super) struct Context<'a> {
    pub volumes: &'a mut LocalVolumes,
    pub read_key: Option<&'a ReadKey>,
    pub limits: &'a Limits,
    pub volumes_generation: u64,
    pub now: Instant,
}

/// One reader's connection.
#[derive(Debug)]
pub(super) struct Connection {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The TLS record layer, when the exporter has certificates.
    tls: Option<Box<TlsLink>>,
    /// Over TLS, file bytes on their way from `pread` to the record layer.
    file_chunk: Vec<u8>,
    phase: Phase,
    input: Box<[u8; INPUT_BYTES]>,
    filled: usize,
    output: VecDeque<Outgoing>,
    /// Bytes of the front reply already sent.
    front_sent: u64,
    accepted_at: Instant,
    last_activity: Instant,
    /// Since when replies wait and the socket takes nothing.
    stalled_since: Option<Instant>,
    /// The reader closed its side; the replies still queued are sent, then the connection is
    /// closed.
    input_closed: bool,
    /// Why the connection is refused, once its refusal is sent.
    refusal: Option<Close>,
}

/// What one turn of a connection left.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// Everything that could be done without blocking is done: wait for the next event.
    Idle,
    /// It stopped at its per-turn bound with work left: give it another turn soon.
    More,
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr, tls: Option<TlsLink>, now: Instant) -> Connection {
        Connection {
            stream,
            peer,
            file_chunk: if tls.is_some() { vec![0; TLS_FILE_CHUNK_BYTES] } else { Vec::new() },
            tls: tls.map(Box::new),
            phase: Phase::Hello,
            input: Box::new([0; INPUT_BYTES]),
            filled: 0,
            output: VecDeque::new(),
            front_sent: 0,
            accepted_at: now,
            last_activity: now,
            stalled_since: None,
            input_closed: false,
            refusal: None,
        }
    }

    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving)
    }

    /// Sends what it can, reads and answers what it can, within one turn's bound.
    pub fn turn(&mut self, context: &mut Context<'_>) -> Result<Turn, Close> {
        let mut handled = 0;
        loop {
            self.flush(context.now)?;
            if matches!(self.phase, Phase::Refused) {
                return match self.output.is_empty() {
                    true => Err(self.refusal.take().unwrap_or(Close::BadProof)),
                    false => Ok(Turn::Idle),
                };
            }
            while handled < MESSAGES_PER_TURN_MAX && self.output.len() < context.limits.requests_in_flight_max {
                if !self.handle_one(context)? {
                    break;
                }
                handled += 1;
            }
            if handled >= MESSAGES_PER_TURN_MAX {
                self.flush(context.now)?;
                return Ok(Turn::More);
            }
            if self.output.len() >= context.limits.requests_in_flight_max {
                // Full: read nothing more until the reader takes replies (a writable event).
                self.flush(context.now)?;
                if self.output.len() >= context.limits.requests_in_flight_max {
                    return Ok(Turn::Idle);
                }
                continue;
            }
            if self.input_closed {
                return if self.output.is_empty() { Err(Close::Eof) } else { Ok(Turn::Idle) };
            }
            if !self.fill()? {
                self.flush(context.now)?;
                // Records may wait in the socket past the bound of one read: no event would
                // say so (edge-triggered), so the connection gets another turn.
                if self.tls.as_ref().is_some_and(|link| link.was_cut_short()) {
                    return Ok(Turn::More);
                }
                return Ok(Turn::Idle);
            }
        }
    }

    /// Reads what the socket has into the input buffer: whether anything came.
    fn fill(&mut self) -> Result<bool, Close> {
        if self.filled == INPUT_BYTES {
            return Ok(false);
        }
        let room = &mut self.input[self.filled..];
        let read = match &mut self.tls {
            None => self.stream.read(room),
            Some(link) => link.read_plaintext(&mut &self.stream, |plaintext| {
                let count = plaintext.len().min(room.len());
                room[..count].copy_from_slice(&plaintext[..count]);
                count
            }),
        };
        match read {
            Ok(0) => {
                self.input_closed = true;
                Ok(true)
            }
            Ok(count) => {
                self.filled += count;
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(error) => Err(Close::Io(error)),
        }
    }

    /// Takes `N` bytes off the input when they are all there.
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.filled < N {
            return None;
        }
        let message: [u8; N] = self.input[..N].try_into().ok()?;
        self.input.copy_within(N..self.filled, 0);
        self.filled -= N;
        Some(message)
    }

    /// Handles the next whole message in the input: whether there was one.
    fn handle_one(&mut self, context: &mut Context<'_>) -> Result<bool, Close> {
        match self.phase {
            Phase::Hello => {
                let Some(bytes) = self.take::<40>() else { return Ok(false) };
                if self.tls.is_none() && bytes[0] == TLS_HANDSHAKE_RECORD {
                    return Err(Close::ReaderSpeaksTls);
                }
                let hello = ClientHello::decode(&bytes)?;
                let exporter_nonce = auth::nonce()?;
                let (auth, proof) = match context.read_key {
                    Some(key) => (auth_mode::READ_KEY, auth::proof(key, Side::Exporter, &hello.nonce, &exporter_nonce)),
                    None => (auth_mode::ADDRESS_ONLY, [0; PROOF_BYTES]),
                };
                let answer = ServerHello {
                    magic: super::super::wire::MAGIC,
                    version: super::super::wire::PROTOCOL_VERSION.into(),
                    auth: auth.into(),
                    nonce: exporter_nonce,
                    proof,
                };
                self.output.push_back(Outgoing::message(answer.as_bytes()));
                self.phase = Phase::Proof { reader_nonce: hello.nonce, exporter_nonce };
            }
            Phase::Proof { reader_nonce, exporter_nonce } => {
                let Some(bytes) = self.take::<32>() else { return Ok(false) };
                let proof = ClientProof { proof: bytes };
                let admitted = match context.read_key {
                    Some(key) => auth::verify(key, Side::Reader, &reader_nonce, &exporter_nonce, &proof.proof),
                    // No key asked for: the proof is all zeros, as every field with no meaning.
                    None => proof.proof == [0; PROOF_BYTES],
                };
                let status = if admitted { handshake_status::OK } else { handshake_status::BAD_PROOF };
                let done = HandshakeDone { status: status.into(), _reserved: [0; 4] };
                self.output.push_back(Outgoing::message(done.as_bytes()));
                if !admitted {
                    // The refusal goes out first; the connection is closed once it is sent.
                    self.phase = Phase::Refused;
                    self.filled = 0;
                    self.refusal = Some(Close::BadProof);
                    return Ok(true);
                }
                self.phase = Phase::Serving;
            }
            Phase::Serving => {
                let Some(bytes) = self.take::<REQUEST_BYTES>() else { return Ok(false) };
                let outgoing = match Request::decode(&bytes)? {
                    Request::Read(read) => answer_read(context.volumes, &read, context.now),
                    Request::Volumes { token } => answer_volumes(context.volumes, token, context.volumes_generation),
                };
                self.output.push_back(outgoing);
            }
            Phase::Refused => return Ok(false),
        }
        self.last_activity = context.now;
        Ok(true)
    }

    /// Sends queued replies until the socket takes no more: the leading bytes of several
    /// replies in one `sendmsg`, a reply's file range with `sendfile`.
    fn flush(&mut self, now: Instant) -> Result<(), Close> {
        if self.tls.is_some() {
            return self.flush_tls(now);
        }
        // Bounded: each pass sends bytes or returns; the queue is bounded.
        while let Some(front) = self.output.front() {
            let leading = front.bytes.len() as u64;
            let sent = if self.front_sent < leading {
                send_leading(&self.stream, &self.output, self.front_sent)
            } else {
                send_file(&self.stream, front, self.front_sent - leading)
            };
            match sent {
                Ok(0) if self.front_sent >= leading => {
                    // sendfile at the file's end: the record is no longer all there.
                    return Err(Close::FileShrank);
                }
                Ok(0) => return Err(Close::Io(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(count) => {
                    self.advance(count as u64);
                    self.stalled_since = None;
                    self.last_activity = now;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert(now);
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Close::Io(error)),
            }
        }
        Ok(())
    }

    /// [`Connection::flush`] over TLS: the records held go out first; then up to
    /// [`TLS_FEED_BYTES`] of replies are encrypted (file data read with `pread`), and so on
    /// until the socket takes no more. rustls holds at most one feed's records.
    fn flush_tls(&mut self, now: Instant) -> Result<(), Close> {
        let Some(mut link) = self.tls.take() else { return Ok(()) };
        let flushed = self.flush_through(&mut link, now);
        self.tls = Some(link);
        flushed
    }

    fn flush_through(&mut self, link: &mut TlsLink, now: Instant) -> Result<(), Close> {
        // Bounded: each pass sends a feed's records or returns; the queue is bounded.
        loop {
            let (sent, all_out) = link.send_records(&mut &self.stream)?;
            if sent > 0 {
                self.stalled_since = None;
                self.last_activity = now;
            }
            if !all_out {
                self.stalled_since.get_or_insert(now);
                return Ok(());
            }
            if self.output.is_empty() || link.is_handshaking() {
                return Ok(());
            }
            let mut fed = 0;
            while fed < TLS_FEED_BYTES {
                let Some(front) = self.output.front() else { break };
                let leading = front.bytes.len() as u64;
                let taken = if self.front_sent < leading {
                    link.write_plaintext(&front.bytes[self.front_sent as usize..])?
                } else {
                    let Some(range) = &front.file else { break };
                    let done = self.front_sent - leading;
                    let want = (range.length - done).min(self.file_chunk.len() as u64) as usize;
                    let read = read_at(&range.file, &mut self.file_chunk[..want], range.offset + done)?;
                    if read == 0 {
                        // The file ends before the record does: it is no longer all there.
                        return Err(Close::FileShrank);
                    }
                    link.write_plaintext(&self.file_chunk[..read])?
                };
                if taken == 0 {
                    break;
                }
                self.advance(taken as u64);
                fed += taken;
            }
        }
    }

    /// `count` more bytes of the queued replies were sent.
    fn advance(&mut self, mut count: u64) {
        // Bounded: each pass retires a reply or uses up `count`.
        while count > 0 {
            let Some(front) = self.output.front() else { return };
            let step = (front.length_bytes() - self.front_sent).min(count);
            self.front_sent += step;
            count -= step;
            if self.front_sent == front.length_bytes() {
                self.output.pop_front();
                self.front_sent = 0;
            }
        }
    }

    /// Closes a connection past one of its time limits.
    pub fn check_timeouts(&self, limits: &Limits, now: Instant) -> Result<(), Close> {
        if !self.is_serving() && now.duration_since(self.accepted_at) > limits.handshake_timeout {
            return Err(Close::Timeout("the handshake took longer than its limit"));
        }
        if self.stalled_since.is_some_and(|since| now.duration_since(since) > limits.write_stall_timeout) {
            return Err(Close::Timeout("the reader did not read its replies within the write stall limit"));
        }
        if self.output.is_empty() && now.duration_since(self.last_activity) > limits.idle_timeout {
            return Err(Close::Timeout("idle for longer than the idle limit"));
        }
        Ok(())
    }
}

/// Replies whose leading bytes go out in one `sendmsg`, at most.
const GATHER_MAX: usize = 16;

/// Sends the leading bytes (header, check bytes, short data) of the queued replies from the
/// front one's `sent` on, up to the first reply with a file range (its leading bytes included).
fn send_leading(stream: &TcpStream, output: &VecDeque<Outgoing>, sent: u64) -> io::Result<usize> {
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut parts = [empty; GATHER_MAX];
    let mut count = 0;
    let mut more_follows = false;
    for (index, reply) in output.iter().enumerate() {
        if count == GATHER_MAX {
            more_follows = true;
            break;
        }
        let bytes = if index == 0 { &reply.bytes[sent as usize..] } else { &reply.bytes[..] };
        parts[count] = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        count += 1;
        if reply.file.is_some() {
            more_follows = true;
            break;
        }
    }
    // SAFETY: all-zero bytes are a valid msghdr; the fields set below describe `parts`.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = parts.as_mut_ptr();
    message.msg_iovlen = count;
    let flags = libc::MSG_NOSIGNAL | if more_follows { libc::MSG_MORE } else { 0 };
    // SAFETY: each iovec points into a reply's bytes, alive and unchanged during the call (the
    // queue is not touched meanwhile); the kernel only reads them.
    let result = unsafe { libc::sendmsg(stream.as_raw_fd(), &message, flags) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// `pread` of at most `buffer.len()` bytes at `offset` (fewer at the file's end).
fn read_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    // Bounded: each pass reads bytes or returns.
    loop {
        match file.read_at(buffer, offset) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Sends the file range of `reply` from `done` bytes into it with `sendfile`.
fn send_file(stream: &TcpStream, reply: &Outgoing, done: u64) -> io::Result<usize> {
    let Some(range) = &reply.file else { return Ok(0) };
    let mut offset = (range.offset + done) as libc::off_t;
    let count = (range.length - done).min(1 << 30) as usize;
    // SAFETY: both descriptors are open (the file is held by the reply); the kernel copies from
    // the page cache to the socket and advances `offset`, a local.
    let result = unsafe { libc::sendfile(stream.as_raw_fd(), range.file.as_raw_fd(), &mut offset, count) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}
