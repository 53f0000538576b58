//! UCX status codes and the crate's error type.

use std::ffi::CStr;
use std::fmt;

use ucx_sys as sys;

/// A UCX status code (`ucs_status_t`: one signed byte; 0 is OK, 1 in progress, negative errors).
///
/// Any value is a valid `Status`: the bindings use plain integer constants, so a code this
/// version of the crate does not know is carried and printed, never undefined behaviour.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub sys::ucs_status_t);

impl Status {
    pub const OK: Status = Status(sys::UCS_OK);
    pub const IN_PROGRESS: Status = Status(sys::UCS_INPROGRESS);
    /// What UCX reports for operations cut short by a forced endpoint close.
    pub const CANCELED: Status = Status(sys::UCS_ERR_CANCELED);

    pub fn is_ok(self) -> bool {
        self == Status::OK
    }

    /// UCX's own description of the status, e.g. "Connection reset by remote peer".
    pub fn message(self) -> &'static str {
        // SAFETY: ucs_status_string accepts any value and returns a pointer to a static,
        // NUL-terminated string ("Unknown error" for values it does not know).
        let text = unsafe { CStr::from_ptr(sys::ucs_status_string(self.0)) };
        text.to_str().unwrap_or("(status string is not UTF-8)")
    }

    /// `Ok(())` for `UCS_OK`, otherwise the error naming the UCX call that returned it.
    pub(crate) fn check(self, call: &'static str) -> Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(Error::Ucx { call, status: self })
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.0)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}: {})", self.0, self.message())
    }
}

/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A UCX call returned an error status.
    #[error("{call} failed: {status}")]
    Ucx { call: &'static str, status: Status },
    /// Posting another get would exceed the worker's completion-queue bound.
    #[error("{limit} gets already in flight on this worker; drain completions before posting more")]
    InFlightLimit { limit: usize },
    /// `get_nbx` was given a remote key unpacked on a different endpoint.
    #[error("the remote key was unpacked on another endpoint")]
    ForeignRemoteKey,
    /// `get_nbx` was given a local memory region that does not cover the destination.
    #[error("the destination range is not inside the given local memory region")]
    OutsideLocalRegion,
    /// The endpoint's error callback fired; in-flight operations complete with errors.
    #[error("endpoint failed: {0}")]
    EndpointFailed(Status),
    /// A bounded wait ran out.
    #[error("{what} did not complete within {timeout_ms} ms")]
    Timeout { what: &'static str, timeout_ms: u64 },
    /// `poll(2)` on the worker's event fd failed.
    #[error("poll on the worker's event fd: {0}")]
    Poll(#[source] std::io::Error),
    /// UCX reported a socket address that is neither IPv4 nor IPv6.
    #[error("socket address of family {family} is neither IPv4 nor IPv6")]
    AddressFamily { family: i32 },
    /// A configuration name or value given to `Context::with_config` contains a NUL byte.
    #[error("UCX configuration {name:?} contains a NUL byte")]
    ConfigString { name: String },
    /// A packed remote key that is empty or longer than any UCX produces.
    #[error("packed remote key of {length} bytes (expected 1..={max})")]
    RemoteKeyLength { length: usize, max: usize },
    /// A connection request handed to a worker other than the one whose listener received it.
    #[error("connection request belongs to another worker")]
    ForeignConnRequest,
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_come_from_ucx() {
        assert!(Status::OK.is_ok());
        assert_eq!(Status::OK.message(), "Success");
        let reset = Status(sys::UCS_ERR_CONNECTION_RESET);
        assert!(reset.to_string().contains("reset"), "{reset}");
        // An unknown code is printable, not UB.
        assert!(!Status(-127).message().is_empty());
    }
}
