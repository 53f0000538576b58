//! The UCX transport: the export role ([`export`]) and the read role ([`remote`]).
//!
//! ```text
//!  read role (poller thread)                         export role (own thread)
//!  RemoteReads                                       export::spawn
//!    connect ───────── UCX sockaddr endpoint ──────► Listener, accept
//!    AM_CATALOGUE_REQUEST (JSON) ──────────────────► refresh files, answer
//!    ◄──────────────────────────── AM_CATALOGUE (JSON: generation, lengths,
//!                                                    pieces: address + rkey)
//!    AM_LOOKUP_REQUEST (needle id) ─────────────────► compact index (read::local)
//!    ◄──────────────────────────── AM_LOOKUP (offset, size, generation)
//!    or, for a volume read often: ucp_get_nbx .idx → NeedleIndex::apply
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
pub mod lookup;
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

/// UCX settings the engine uses unless the environment names them (`UCX_<NAME>`): UCX's tcp
/// transport moves a get's reply in segments of `TCP_TX_SEG_SIZE` (8 KiB by default); 64 KiB
/// segments made a bare 1 MiB get 1.8× faster here and the engine's 1.4–1.7×
/// (docs/benchmarks.md, "UCX over tcp: large reads"). Both sides need them: the exporter
/// sends the segments, the reader receives them. UCX 1.13 takes transport settings from the
/// environment only (its `ucp_config_modify` accepts them and does not apply them).
pub const UCX_ENVIRONMENT_DEFAULTS: [(&str, &str); 2] =
    [("UCX_TCP_TX_SEG_SIZE", "64k"), ("UCX_TCP_RX_SEG_SIZE", "64k")];

/// Sets [`UCX_ENVIRONMENT_DEFAULTS`] that the environment does not set. Call at the start of
/// `main`, before any thread exists (the environment is not thread-safe to change).
pub fn set_ucx_environment_defaults() {
    for (name, value) in UCX_ENVIRONMENT_DEFAULTS {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

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
