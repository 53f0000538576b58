//! The control socket's message decode (`rdma_ipc::control::receive`), as the engine runs it
//! on every message a connection sends and a client runs it on every answer.
//!
//! Input: the bytes of one message, sent as one `SOCK_SEQPACKET` datagram over a real socket
//! pair and received by `receive`, both as a `Request` (what the engine decodes) and as a
//! `Response` (what a client decodes).
//!
//! What must hold:
//! - no panic; anything that is not a message is a `BadMessage` error, never another kind;
//! - a decoded message round-trips: sent with `send` and received again, it is the same
//!   value, and its JSON is the same bytes;
//! - a message decoded from bytes that name no fds carries none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use rdma_ipc::control::{receive, send, ControlError, Request, Response};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

/// One socket pair for the whole run: `(sender, receiver)`.
fn sockets() -> &'static (OwnedFd, OwnedFd) {
    static SOCKETS: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    SOCKETS.get_or_init(|| {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .expect("a Unix socket pair for the control messages")
    })
}

fuzz_target!(|data: &[u8]| {
    // An empty datagram reads as end of file: that is `Closed`, tested in the ipc crate.
    if data.is_empty() || data.len() > rdma_ipc::control::MAX_MESSAGE_BYTES {
        return;
    }
    decode_and_round_trip::<Request>(data);
    decode_and_round_trip::<Response>(data);
});

fn decode_and_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let (sender, receiver) = sockets();
    sendmsg::<()>(sender.as_raw_fd(), &[IoSlice::new(data)], &[], MsgFlags::MSG_NOSIGNAL, None)
        .expect("one datagram fits the socket");
    let message: T = match receive::<T>(receiver) {
        Ok((message, fds)) => {
            assert!(fds.is_empty(), "no fds were sent");
            message
        }
        Err(ControlError::BadMessage { size_bytes, .. }) => {
            assert_eq!(size_bytes, data.len());
            return;
        }
        Err(other) => panic!("bytes that are not a message gave {other:?}"),
    };
    send(sender, &message, &[]).expect("a decoded message can be sent back");
    let (again, _) = receive::<T>(receiver).expect("a message the engine sent decodes");
    assert_eq!(again, message);
    let json = serde_json::to_vec(&message).expect("a message encodes");
    let reencoded = serde_json::to_vec(&serde_json::from_slice::<T>(&json).expect("its JSON decodes")).unwrap();
    assert_eq!(json, reencoded, "the JSON of a message is one text");
}
