//! The stream transport: our own protocol over TCP, for hosts without an RDMA NIC (most
//! SeaweedFS clusters). The exporter looks every needle up in its own index and sends its
//! bytes; a request names a volume, a needle and its cookie, never an address, so a peer can
//! read nothing but exported needles whose cookies it knows. The reader receives the bytes
//! straight into the client's buffer and runs the one landed-needle check.
//!
//! ```text
//!  read role (poller thread)                              export role (own thread)
//!  StreamReads                                            export::spawn
//!    connect thread: TCP connect, hello ───────────────►  accept (allowed peers, limits)
//!                    ◄───────────── hello: nonce, exporter's proof (HMAC, read key)
//!                    proof ────────────────────────────►  verify, HandshakeDone
//!    READ (volume, needle, cookie, range, max bytes) ──►  index lookup, header check
//!    ◄──────── reply header, check bytes, data  ─────────  pread or sendfile from the .dat
//!    data received into the client's buffer, check, completion
//! ```
//!
//! `wire` is the bytes (`docs/stream-protocol.md` describes them for other implementations),
//! `auth` the challenge and response, `export` the exporter, `reader` the read role's side,
//! `tls` the mutual TLS everything runs over when the operator has certificates.

pub mod auth;
pub mod export;
pub mod reader;
pub mod tls;
pub mod tls_names;
pub mod wire;

use std::time::Duration;

/// The bounds the exporter enforces on every connection: its configuration, never the
/// reader's good will. (The reader bounds its side with `reader::StreamConfig`.)
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections an exporter holds at once (more are closed at accept).
    pub connections_max: usize,
    /// Connections one reader address may hold at an exporter.
    pub connections_per_peer_max: usize,
    /// Requests an exporter has read from one connection and not yet answered in full; it
    /// reads no more from that connection until some are sent.
    pub requests_in_flight_max: usize,
    /// Connections one reader address may open per second (more are closed at accept): a
    /// handshake costs the exporter's thread (a TLS handshake about a millisecond of
    /// signature and key exchange), so a peer reconnecting in a loop cannot take it.
    pub accepts_per_peer_per_second_max: u32,
    /// How long a connection may take from accept to the end of its handshake.
    pub handshake_timeout: Duration,
    /// How long an exporter keeps a connection that sends nothing and has nothing to send.
    pub idle_timeout: Duration,
    /// How long an exporter waits for a reader that does not read its replies (its socket
    /// buffer stays full) before it closes that connection.
    pub write_stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 256,
            connections_per_peer_max: 16,
            requests_in_flight_max: 64,
            accepts_per_peer_per_second_max: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            write_stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Replies whose data is at most this long are read into memory and sent with their header,
/// several replies in one system call; longer data goes from the page cache with `sendfile`
/// (no copy in user space). 64 KiB: at depth 32 the gathered copies beat a `sendfile` per
/// reply (22-23 k reads/s against 18-21 k in three alternating runs, `docs/benchmarks.md`,
/// "The stream transport"); at 1 MiB `sendfile` wins.
pub const COPY_DATA_MAX_BYTES: u64 = 64 << 10;
