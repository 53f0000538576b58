//! UCX over TCP on 127.0.0.1, exporter and reader on two threads of this process.
//! The transport is set per context (`UCX_TLS=tcp`), so other test binaries are unaffected.

mod common;

use common::scenarios;

const TCP: &[(&str, &str)] = &[("TLS", "tcp")];

#[test]
fn gets_at_sizes_and_offsets() {
    scenarios::gets_at_sizes_and_offsets(TCP);
}

#[test]
fn many_gets_in_flight() {
    scenarios::many_gets_in_flight(TCP);
}

#[test]
fn get_on_dead_peer_fails() {
    scenarios::get_on_dead_peer_fails(TCP);
}

#[test]
fn large_active_message_uses_rendezvous() {
    scenarios::large_active_message(TCP);
}
