//! `std::net::SocketAddr` to and from the C socket addresses UCX takes and reports.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::error::{Error, Result};

/// A socket address in C form, big enough for either family.
pub(crate) struct CSocketAddr {
    storage: libc::sockaddr_storage,
    length: libc::socklen_t,
}

impl CSocketAddr {
    pub(crate) fn new(address: SocketAddr) -> CSocketAddr {
        // SAFETY: all-zero bytes are a valid sockaddr_storage (family AF_UNSPEC).
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let length = match address {
            SocketAddr::V4(v4) => {
                let c = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), c) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let c = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), c) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        CSocketAddr { storage, length: length as libc::socklen_t }
    }

    /// The pointer and length UCX's `ucs_sock_addr_t` wants; valid while `self` lives.
    pub(crate) fn as_ucs(&self) -> ucx_sys::ucs_sock_addr_t {
        ucx_sys::ucs_sock_addr_t { addr: std::ptr::from_ref(&self.storage).cast(), addrlen: self.length }
    }
}

/// Reads a socket address UCX filled in (`sockaddr_storage` as bindgen declares it).
pub(crate) fn from_storage(storage: &ucx_sys::sockaddr_storage) -> Result<SocketAddr> {
    const _: () = assert!(mem::size_of::<ucx_sys::sockaddr_storage>() == mem::size_of::<libc::sockaddr_storage>());
    let raw = std::ptr::from_ref(storage);
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it can contain.
            let c = unsafe { &*raw.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(c.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(c.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6, which it can contain.
            let c = unsafe { &*raw.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(c.sin6_addr.s6_addr);
            let port = u16::from_be(c.sin6_port);
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, c.sin6_flowinfo, c.sin6_scope_id)))
        }
        family => Err(Error::AddressFamily { family }),
    }
}
