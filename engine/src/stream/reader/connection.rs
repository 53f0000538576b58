//! One connection to an exporter on the reader's side: requests queued and sent without
//! blocking, the tokens in flight on it, and where the bytes of the reply being received go.
//! Over TLS, requests are encrypted as they are sent, and replies are copied from rustls's
//! decrypted bytes to their destination (the staging buffer is not used).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::time::Instant;

use zerocopy::IntoBytes;

use super::super::tls::TlsLink;
use super::super::wire::{Reply, Request, REPLY_HEADER_BYTES, REQUEST_BYTES};
use crate::read::fetch::{Pieces, SCRATCH_BYTES};

/// Requests in flight on one connection at most (the exporter answers 64 at a time and reads
/// on as it sends).
pub(super) const IN_FLIGHT_MAX: usize = 128;
/// Bytes of the staging buffer short parts are received through (one `recv` brings the
/// headers and data of several short replies).
const STAGE_BYTES: usize = 64 << 10;
/// Parts at least this long are received straight to their destination when nothing is staged.
const DIRECT_MIN_BYTES: usize = 16 << 10;

/// Where the next bytes received go.
#[derive(Clone, Copy, Debug)]
pub(super) enum Receiving {
    /// A reply header, into `header`.
    Header,
    /// A read's check bytes, into `check`.
    /// `first`: the pieces the fetch machine asked for first (the record prefix).
    Check { slot: usize, reply: Reply, first: Pieces },
    /// A read's data, straight into the client's buffer.
    Data { slot: usize, length: u32 },
    /// A volume list, into `volume_list`.
    Volumes { reply: Reply },
}

/// One connection.
#[derive(Debug)]
pub(super) struct Connection {
    stream: TcpStream,
    /// The TLS record layer, when the connection runs over TLS.
    tls: Option<Box<TlsLink>>,
    /// Requests not yet taken by the socket, and how much of the first is sent.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Tokens of the requests sent or queued, in order.
    pub in_flight: VecDeque<u64>,
    pub receiving: Receiving,
    /// Bytes of the current part received so far.
    pub filled: usize,
    pub header: [u8; REPLY_HEADER_BYTES],
    pub check: Box<[u8; SCRATCH_BYTES]>,
    /// The read's scratch, as the fetch machine expects it (filled from `check`).
    pub scratch: Box<[u8; SCRATCH_BYTES]>,
    pub volume_list: Vec<u8>,
    /// Whether a VOLUMES request is in flight on it.
    pub volumes_asked: bool,
    /// Bytes received and not yet moved to their part: `stage[staged_start..staged_end]`.
    stage: Box<[u8; STAGE_BYTES]>,
    staged_start: usize,
    staged_end: usize,
    /// Since when the oldest request in flight waits for a byte.
    pub waiting_since: Option<Instant>,
}

impl Connection {
    pub fn new(stream: TcpStream, tls: Option<TlsLink>) -> Connection {
        Connection {
            stream,
            tls: tls.map(Box::new),
            outgoing: Vec::with_capacity(IN_FLIGHT_MAX * REQUEST_BYTES),
            outgoing_sent: 0,
            in_flight: VecDeque::with_capacity(IN_FLIGHT_MAX + 1),
            receiving: Receiving::Header,
            filled: 0,
            header: [0; REPLY_HEADER_BYTES],
            check: Box::new([0; SCRATCH_BYTES]),
            scratch: Box::new([0; SCRATCH_BYTES]),
            volume_list: Vec::new(),
            volumes_asked: false,
            stage: Box::new([0; STAGE_BYTES]),
            staged_start: 0,
            staged_end: 0,
            waiting_since: None,
        }
    }

    /// Whether a reply is partly received (the rest is on its way: worth polling for, not
    /// sleeping).
    pub fn mid_reply(&self) -> bool {
        self.filled > 0 || !matches!(self.receiving, Receiving::Header) || self.has_staged()
    }

    pub fn has_room(&self) -> bool {
        self.in_flight.len() < IN_FLIGHT_MAX
    }

    /// Queues a request (sent by the next [`Connection::flush`]).
    pub fn queue(&mut self, request: &Request, token: u64, now: Instant) {
        self.outgoing.extend_from_slice(request.encode().as_bytes());
        if self.in_flight.is_empty() {
            self.waiting_since = Some(now);
        }
        self.in_flight.push_back(token);
    }

    /// Sends what the socket takes of the queued requests.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(link) = self.tls.as_deref_mut() {
            // Bounded: each pass hands rustls bytes or stops; rustls's records go out after.
            while self.outgoing_sent < self.outgoing.len() {
                match link.write_plaintext(&self.outgoing[self.outgoing_sent..])? {
                    0 => break,
                    count => self.outgoing_sent += count,
                }
            }
            if self.outgoing_sent == self.outgoing.len() {
                self.outgoing.clear();
                self.outgoing_sent = 0;
            }
            link.send_records(&mut &self.stream)?;
            return Ok(());
        }
        // Bounded: each pass sends bytes or returns.
        while self.outgoing_sent < self.outgoing.len() {
            match self.stream.write(&self.outgoing[self.outgoing_sent..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(count) => self.outgoing_sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.outgoing.clear();
        self.outgoing_sent = 0;
        Ok(())
    }

    /// Whether bytes were received that no part has taken yet (the socket watch cannot see
    /// them: the poller must not sleep on them).
    pub fn has_staged(&self) -> bool {
        self.staged_end > self.staged_start || self.tls.as_ref().is_some_and(|link| link.holds_plaintext())
    }

    /// Moves at most `length` bytes of the reply stream to `destination`: what is staged first;
    /// else from the socket, straight there for a long part, through the staging buffer for a
    /// short one. The count (0: the exporter closed the connection), or `WouldBlock`.
    ///
    /// # Safety
    /// `destination..destination + length` is writable memory that nothing else writes while
    /// this runs (a validated buffer range of a client's region, or a buffer of ours).
    pub unsafe fn receive(&mut self, destination: NonNull<u8>, length: usize) -> io::Result<usize> {
        if let Some(link) = self.tls.as_deref_mut() {
            return link.read_plaintext(&mut &self.stream, |plaintext| {
                let count = plaintext.len().min(length);
                // SAFETY: `destination` has room for `length >= count` bytes (the caller's
                // contract) and does not overlap rustls's buffer, which is ours.
                unsafe { std::ptr::copy_nonoverlapping(plaintext.as_ptr(), destination.as_ptr(), count) };
                count
            });
        }
        if !self.has_staged() && length < DIRECT_MIN_BYTES {
            let stage = NonNull::from(&mut *self.stage).cast::<u8>();
            // SAFETY: the staging buffer is ours, STAGE_BYTES long.
            let count = unsafe { recv(&self.stream, stage, STAGE_BYTES) }?;
            if count == 0 {
                return Ok(0);
            }
            (self.staged_start, self.staged_end) = (0, count);
        }
        if self.has_staged() {
            let count = length.min(self.staged_end - self.staged_start);
            let source = &self.stage[self.staged_start..self.staged_start + count];
            // SAFETY: `destination` has room for `length >= count` bytes (the caller's
            // contract) and does not overlap the staging buffer, which is ours.
            unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), destination.as_ptr(), count) };
            self.staged_start += count;
            return Ok(count);
        }
        // SAFETY: the caller's contract: the kernel writes at most `length` bytes there.
        unsafe { recv(&self.stream, destination, length) }
    }

    /// A reply was consumed in full: the next bytes are a header.
    pub fn reply_done(&mut self, token: u64, now: Instant) {
        if let Some(position) = self.in_flight.iter().position(|&in_flight| in_flight == token) {
            self.in_flight.remove(position);
        }
        self.receiving = Receiving::Header;
        self.filled = 0;
        self.waiting_since = (!self.in_flight.is_empty()).then_some(now);
    }
}

/// `recv` of at most `length` bytes to `destination`.
///
/// # Safety
/// `destination..destination + length` is writable memory nothing else writes meanwhile.
unsafe fn recv(stream: &TcpStream, destination: NonNull<u8>, length: usize) -> io::Result<usize> {
    // SAFETY: the caller's contract: the kernel writes at most `length` bytes there.
    let count = unsafe { libc::recv(stream.as_raw_fd(), destination.as_ptr().cast(), length, 0) };
    if count < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(count as usize)
    }
}
