//! The UCX transport: the export role ([`export`]) and the read role ([`remote`]).
//!
//! ```text
//!  read role (poller thread)                         export role (own thread)
//!  RemoteReads                                       export::spawn
//!    connect ───────── UCX sockaddr endpoint ──────► Listener, accept
//!    AM_CATALOGUE_REQUEST (JSON) ──────────────────► refresh files, answer
//!    ◄──────────────────────────── AM_CATALOGUE (JSON: generation, lengths,
//!                                                    pieces: address + rkey)
//!    ucp_get_nbx .idx tail → NeedleIndex::apply
//!    ucp_get_nbx record → client's buffer ◄──────── mmapped .dat (read-only,
//!    check needle → completion                       registered in ≤ 1 GiB pieces)
//! ```
//!
//! UCX 1.13 emulates gets on user-registered memory in software on the target for every
//! transport without RDMA hardware (tcp, sm): the exporter's worker runs event-driven
//! progress all the time (`Worker::wait`), or gets stall. See `docs/ucx-bindings.md`.
//!
//! Both sides keep their UCX objects on one thread (nothing in `ucx` is `Send`): the exporter
//! owns a thread of its own; [`remote::RemoteReads`] must be created on the thread that uses it
//! (the poller).

pub mod catalogue;
pub mod export;
mod mapping;
pub mod remote;
pub(crate) mod staging;
pub mod token;

use ucx::Features;

/// Features both roles create their contexts with: gets, the catalogue messages, and the
/// event fd the exporter sleeps on.
pub(crate) fn features() -> Features {
    Features::RMA | Features::AM | Features::WAKEUP
}

/// Registrations are made in pieces of at most this many bytes (larger ones ran slower for
/// other UCX users).
pub const REGISTRATION_PIECE_MAX_BYTES: u64 = 1 << 30;

/// UCX configuration pairs (`("TLS", "sm,tcp")`) as the `ucx` crate takes them.
pub(crate) fn ucx_overrides(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

/// The settings for shared memory with peer failure detection (`docs/ucx-bindings.md`, facts 2
/// and 3): sm lanes need tcp for the listener, and `MM_ERROR_HANDLING=y` or Peer mode drops them.
pub fn ucx_shared_memory_settings() -> Vec<(String, String)> {
    vec![("TLS".into(), "sm,tcp".into()), ("MM_ERROR_HANDLING".into(), "y".into())]
}

/// The page size, for mapping file ranges.
pub(crate) fn page_size_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}
