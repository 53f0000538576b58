//! The tools around the engine. Each binary in `src/bin` is a thin `main`
//! over a module here:
//! - [`ringstat`]: read-only inspection of a live engine's regions;
//! - [`bench`]: `rdma-bench`, engine round trips and reads measured beside
//!   the floors they are bounded by;
//! - [`cat`]: `rdma-cat`, one needle to stdout, like `curl` for the engine;
//! - [`sidecar`]: `rdma-sidecar`, the volume server's read API and the
//!   `weed mount` sidecar protocol over HTTP, on a pool of queue pairs;
//! - [`chaos`]: `rdma-chaos`, a fault campaign and a soak against real engines;
//! - `volgen` (logic in `volume_format::generate`).
//!
//! A needle's content as the volume server serves it (gzip, ranges, buffer
//! retry) is the client library's (`rdma_client::reader`), for these tools
//! and every other program alike. Shared pieces here: [`timing`] (a
//! calibrated tick clock), [`histogram`] (allocation-free latency recording),
//! [`affinity`] (CPU pinning), [`machine`] (facts about the host, via
//! `sysinfo`).

pub mod affinity;
pub mod bench;
pub mod cat;
pub mod chaos;
pub mod histogram;
pub mod machine;
pub mod ringstat;
pub mod sidecar;
pub mod timing;

/// Exit codes shared by the tools.
pub mod exit_code {
    /// The command line is wrong (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// The engine could not be reached, refused, died or stopped answering.
    pub const ENGINE: i32 = 3;
    /// The engine answered, with an error for the needle.
    pub const NEEDLE: i32 = 4;
    /// The requested mode exists but is not wired yet (no such mode at present).
    pub const NOT_WIRED: i32 = 5;
    /// Anything else (a local I/O error, a failed verification).
    pub const OTHER: i32 = 1;
}
