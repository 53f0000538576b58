//! The control socket: a Unix `SOCK_SEQPACKET` socket (message boundaries
//! kept, EOF on peer death). Each message is one JSON document; a region's
//! memfd travels with its message as `SCM_RIGHTS`.
//!
//! The connection stays open for the life of an attachment: EOF is how the
//! engine learns a client died (however it died), and how a client learns the
//! engine did.
//!
//! Attaching takes two round trips: `Attach` is answered by `Attached` with the
//! region's memfd; the client maps it and says `Mapped`, and the engine seals the
//! region against new writable mappings and hole punching, checks that none was
//! punched, and answers `Serving` (or `Refused`, and closes). Only then does the
//! engine serve the region.
//!
//! A client whose engine went away can present its region to the next engine instead
//! (`Adopt`, the memfd travelling with it): the engine checks it as hostile input, takes
//! it over (new header, empty rings, the buffer area untouched) and answers `Attached`
//! without a descriptor, since the client has the region mapped; `Mapped` and `Serving`
//! follow as for a new region. Buffers the application still holds stay valid, and new
//! reads land in the same memory.

use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, socket, sockopt, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Largest control message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most file descriptors one message carries.
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// What a client (or a tool) asks the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create a region for this connection and hand over its memfd.
    Attach(AttachRequest),
    /// The client has mapped the region of its `Attached` answer: seal it and serve it.
    Mapped { region_id: u64 },
    /// List attached regions, with read-only-mappable fds (for `ringstat`).
    ListRegions,
    /// Take over the region whose memfd travels with this message (made by an earlier
    /// engine) for this connection.
    Adopt(AdoptRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptRequest {
    /// `shm_layout::LAYOUT_VERSION` of the client's library.
    pub layout_version: u32,
    /// Free text for logs and ringstat (program name).
    pub client_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// `shm_layout::LAYOUT_VERSION` of the client's library.
    pub layout_version: u32,
    pub queue_pairs: u32,
    pub sq_entries: u32,
    pub buffer_size_bytes: u64,
    /// Free text for logs and ringstat (program name).
    pub client_name: String,
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The region's memfd travels with this message (none when the region was adopted).
    Attached(AttachReply),
    /// One sentence: what was refused and why.
    Refused { reason: String },
    /// One fd per summary, in the same order.
    Regions {
        engine_pid: u32,
        engine_generation: u64,
        regions: Vec<RegionSummary>,
        /// The remote transport the engine reads and exports with (`stream`, `ucx`); absent
        /// when it has no remote role (and from engines that predate it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote_transport: Option<String>,
    },
    /// The region is sealed and served: the answer to `Mapped`.
    Serving { region_id: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    pub region_id: u64,
    pub region_size_bytes: u64,
    pub engine_generation: u64,
    pub hugepages: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub region_id: u64,
    pub client_pid: u32,
    pub client_name: String,
    pub region_size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create a control socket: {0}")]
    Socket(nix::Error),
    #[error("cannot connect to the engine at {path}: {source}")]
    Connect { path: String, source: nix::Error },
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: nix::Error },
    #[error("control socket {operation} failed: {source}")]
    Io { operation: &'static str, source: nix::Error },
    #[error("the peer closed the control socket")]
    Closed,
    #[error("control message of {size_bytes} bytes is not valid: {reason}")]
    BadMessage { size_bytes: usize, reason: String },
    #[error("control message carried {found} file descriptors, expected {expected}")]
    FdCount { found: usize, expected: usize },
    #[error("the engine refused: {0}")]
    Refused(String),
    #[error("the engine answered {got} where {expected} was due")]
    UnexpectedResponse { expected: &'static str, got: String },
}

fn seqpacket_socket() -> Result<OwnedFd, ControlError> {
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(ControlError::Socket)
}

/// Connects to an engine's control socket.
pub fn connect_to(path: &Path) -> Result<OwnedFd, ControlError> {
    let fd = seqpacket_socket()?;
    let address =
        UnixAddr::new(path).map_err(|source| ControlError::Connect { path: path.display().to_string(), source })?;
    connect(fd.as_raw_fd(), &address)
        .map_err(|source| ControlError::Connect { path: path.display().to_string(), source })?;
    Ok(fd)
}

/// Binds and listens on `path`.
pub fn listen_on(path: &Path, backlog: i32) -> Result<OwnedFd, ControlError> {
    let error = |source| ControlError::Listen { path: path.display().to_string(), source };
    let fd = seqpacket_socket()?;
    let address = UnixAddr::new(path).map_err(error)?;
    bind(fd.as_raw_fd(), &address).map_err(error)?;
    listen(&fd, Backlog::new(backlog).map_err(error)?).map_err(error)?;
    Ok(fd)
}

/// Accepts one connection (close-on-exec).
pub fn accept(listener: &OwnedFd) -> Result<OwnedFd, ControlError> {
    let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
        .map_err(|source| ControlError::Io { operation: "accept", source })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The peer's pid, uid and gid (`SO_PEERCRED`).
pub fn peer_credentials(connection: &OwnedFd) -> Result<UnixCredentials, ControlError> {
    getsockopt(connection, sockopt::PeerCredentials)
        .map_err(|source| ControlError::Io { operation: "SO_PEERCRED", source })
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(connection: &OwnedFd, message: &T, fds: &[RawFd]) -> Result<(), ControlError> {
    send_with_flags(connection, message, fds, MsgFlags::MSG_NOSIGNAL)
}

/// Like [`send`], but fails at once (`EAGAIN`) instead of waiting when the peer's receive
/// queue is full: the engine's control thread serves every client and must not wait for one
/// that does not read its replies.
pub fn send_without_blocking<T: Serialize>(
    connection: &OwnedFd,
    message: &T,
    fds: &[RawFd],
) -> Result<(), ControlError> {
    send_with_flags(connection, message, fds, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT)
}

fn send_with_flags<T: Serialize>(
    connection: &OwnedFd,
    message: &T,
    fds: &[RawFd],
    flags: MsgFlags,
) -> Result<(), ControlError> {
    let bytes = serde_json::to_vec(message)
        .map_err(|error| ControlError::BadMessage { size_bytes: 0, reason: error.to_string() })?;
    if bytes.len() > MAX_MESSAGE_BYTES || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(ControlError::BadMessage { size_bytes: bytes.len(), reason: "too large to send".into() });
    }
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(connection.as_raw_fd(), &iov, control, flags, None)
        .map_err(|source| ControlError::Io { operation: "send", source })?;
    Ok(())
}

/// The client's half of the second round trip of an attach: says the region is mapped and
/// waits for the engine to seal and serve it.
pub fn confirm_mapped(connection: &OwnedFd, region_id: u64) -> Result<(), ControlError> {
    send(connection, &Request::Mapped { region_id }, &[])?;
    match receive::<Response>(connection)?.0 {
        Response::Serving { region_id: served } if served == region_id => Ok(()),
        Response::Refused { reason } => Err(ControlError::Refused(reason)),
        other => Err(ControlError::UnexpectedResponse { expected: "Serving", got: format!("{other:?}") }),
    }
}

/// Receives one message and the fds that came with it.
pub fn receive<T: DeserializeOwned>(connection: &OwnedFd) -> Result<(T, Vec<OwnedFd>), ControlError> {
    let mut buffer = vec![0u8; MAX_MESSAGE_BYTES];
    let mut control_space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let (size_bytes, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message =
            recvmsg::<()>(connection.as_raw_fd(), &mut iov, Some(&mut control_space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|source| ControlError::Io { operation: "receive", source })?;
        let mut fds = Vec::new();
        for control in message.cmsgs().map_err(|source| ControlError::Io { operation: "receive", source })? {
            if let ControlMessageOwned::ScmRights(raw_fds) = control {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table
                // for us alone; wrapping them makes sure they are closed.
                fds.extend(raw_fds.into_iter().map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }));
            }
        }
        let truncated = message.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (message.bytes, fds, truncated)
    };
    if size_bytes == 0 {
        return Err(ControlError::Closed);
    }
    if truncated {
        return Err(ControlError::BadMessage { size_bytes, reason: "truncated (too large or too many fds)".into() });
    }
    let message = serde_json::from_slice(&buffer[..size_bytes])
        .map_err(|error| ControlError::BadMessage { size_bytes, reason: error.to_string() })?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::socketpair;

    #[test]
    fn message_and_fd_cross_a_socket_pair() {
        let (left, right) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let request = Request::Attach(AttachRequest {
            layout_version: 1,
            queue_pairs: 2,
            sq_entries: 64,
            buffer_size_bytes: 1 << 20,
            client_name: "test".into(),
        });
        let memfd = nix::sys::memfd::memfd_create(c"probe", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        send(&left, &request, &[memfd.as_raw_fd()]).unwrap();
        let (received, fds): (Request, _) = receive(&right).unwrap();
        assert_eq!(received, request);
        assert_eq!(fds.len(), 1);
        drop(left);
        assert!(matches!(receive::<Request>(&right), Err(ControlError::Closed)));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let (left, right) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        sendmsg::<()>(left.as_raw_fd(), &[IoSlice::new(b"{not json")], &[], MsgFlags::empty(), None).unwrap();
        let error = receive::<Request>(&right).unwrap_err();
        assert!(error.to_string().contains("not valid"), "{error}");
    }
}
