//! UCX over shared memory (`UCX_TLS=sm,tcp`: tcp is needed for the listener's wire-up), with
//! `UCX_MM_ERROR_HANDLING=y` so the sm lanes are kept under the PEER error mode.

mod common;

use common::scenarios;

const SM: &[(&str, &str)] = &[("TLS", "sm,tcp"), ("MM_ERROR_HANDLING", "y")];

#[test]
fn gets_at_sizes_and_offsets() {
    scenarios::gets_at_sizes_and_offsets(SM);
}

#[test]
fn many_gets_in_flight() {
    scenarios::many_gets_in_flight(SM);
}

#[test]
fn get_on_dead_peer_fails() {
    scenarios::get_on_dead_peer_fails(SM);
}
