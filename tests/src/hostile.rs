//! Attaching as a hostile client would: below the client library, keeping the region's
//! writable memfd, and stopping before the second round trip (`Mapped`) so the test
//! decides what happens to the region before the engine seals it.

use rdma_ipc::control::{self, AttachRequest, Request, Response};
use rdma_ipc::mapping::{Access, Mapping};
use std::os::fd::OwnedFd;
use std::path::Path;

/// An attach the engine answered, mapped by the client and not yet confirmed.
#[derive(Debug)]
pub struct UnconfirmedAttach {
    pub socket: OwnedFd,
    pub memfd: OwnedFd,
    pub mapping: Mapping,
    pub region_id: u64,
    pub size_bytes: u64,
    pub hugepages: bool,
}

/// Attaches and maps the region, without saying `Mapped`. Panics when refused.
pub fn attach_unconfirmed(socket_path: &Path, request: AttachRequest) -> UnconfirmedAttach {
    let socket = control::connect_to(socket_path).expect("connect to the engine");
    control::send(&socket, &Request::Attach(request), &[]).expect("send the attach");
    let (response, mut fds) = control::receive::<Response>(&socket).expect("the attach answer");
    let Response::Attached(reply) = response else { panic!("attach refused: {response:?}") };
    assert_eq!(fds.len(), 1, "the attach answer carries one memfd");
    let memfd = fds.remove(0);
    let mapping = Mapping::new(&memfd, reply.region_size_bytes, Access::ReadWrite, true).expect("map the region");
    UnconfirmedAttach {
        socket,
        memfd,
        mapping,
        region_id: reply.region_id,
        size_bytes: reply.region_size_bytes,
        hugepages: reply.hugepages,
    }
}
