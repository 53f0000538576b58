//! What the engine and its clients share beyond the byte layout in
//! `shm-layout`:
//! - [`control`]: the control-socket protocol (attach, list regions) over a
//!   Unix `SOCK_SEQPACKET` socket, with region file descriptors passed by
//!   `SCM_RIGHTS`;
//! - [`mapping`]: mapping a region's file descriptor;
//! - [`futex`]: the wait/wake calls of the `NEED_WAKEUP` protocol;
//! - [`spin`]: how long a waiter spins before it sleeps, adapted to what its
//!   last waits cost (the engine's poller and the client share it);
//! - [`clock`]: the `CLOCK_MONOTONIC` nanoseconds both sides use for
//!   deadlines and heartbeats.

pub mod clock;
pub mod control;
pub mod futex;
pub mod mapping;
pub mod spin;
