//! The small safe layer over `ucx-sys` that the engine uses for its UCX transport.
//!
//! - [`Context`] (features, configuration) → [`Worker`] (single-thread mode: progress,
//!   event-driven [`Worker::wait`], the completion queue and the active-message inbox).
//! - [`Listener`] / [`ConnRequest`] and [`Endpoint::connect`] / [`Endpoint::accept`] over
//!   socket addresses; endpoint failures are recorded ([`Endpoint::failure`]) for the owner.
//! - [`MemoryRegion`] (register existing memory, pack its rkey) and [`RemoteKey`].
//! - [`Endpoint::get_nbx`]: the data path. Completions come back as `(token, status)` through
//!   a fixed-capacity queue ([`Worker::pop_completion`]); nothing is allocated per get.
//! - [`Endpoint::am_send`] and [`Worker::set_am_handler`]: the control path.
//! - [`floor::bare_get_loop`]: the bare get floor, for benchmarks.
//!
//! Everything made from one context belongs to one thread (none of it is `Send`): UCX runs
//! in single-thread mode and its callbacks fire inside [`Worker::progress`] on that thread.
//! Facts about UCX 1.13 the users of this crate must respect are in `docs/ucx-bindings.md`.

mod am;
mod completion;
mod context;
mod endpoint;
mod error;
pub mod floor;
mod listener;
mod memory;
mod sockaddr;
mod worker;

pub use am::AmMessage;
pub use completion::Completion;
pub use context::{Context, Features};
pub use endpoint::{CloseMode, ClosingEndpoint, Endpoint, EndpointId, ErrorMode, GetStarted, DROP_CLOSE_TIMEOUT};
pub use error::{Error, Result, Status};
pub use listener::{ConnRequest, Listener};
pub use memory::{MemoryRegion, RemoteKey, RKEY_MAX_BYTES};
pub use worker::{Worker, WorkerConfig};
