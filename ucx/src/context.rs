//! The UCP context: configuration, features, and the request layout every operation shares.

use std::ffi::CString;
use std::fmt;
use std::mem;
use std::ops::BitOr;
use std::ptr;
use std::rc::Rc;

use ucx_sys as sys;

use crate::completion::RequestArea;
use crate::error::{Error, Result, Status};

/// UCP features a context is created with (`UCP_FEATURE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(u64);

impl Features {
    /// One-sided remote memory access (`ucp_get_nbx`).
    pub const RMA: Features = Features(sys::UCP_FEATURE_RMA as u64);
    /// Active messages (the control protocol).
    pub const AM: Features = Features(sys::UCP_FEATURE_AM as u64);
    /// Event-driven waiting: needed by `Worker::efd`, `arm` and `wait`.
    pub const WAKEUP: Features = Features(sys::UCP_FEATURE_WAKEUP as u64);

    pub fn bits(self) -> u64 {
        self.0
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
}

/// A UCP context (`ucp_context_h`).
///
/// Not `Send`: a context and everything made from it (workers, endpoints, memory regions)
/// belong to the thread that created them. The context is created without
/// `UCP_PARAM_FIELD_MT_WORKERS_SHARED`, so UCX takes no locks and sharing it would be a race.
/// Children keep the context alive (reference counted), so drop order is never wrong.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Rc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) handle: sys::ucp_context_h,
}

impl Context {
    /// The transports and devices this context found (`tl/device`), from UCX's own
    /// description of the context (`ucp_context_print_info`).
    pub fn transports(&self) -> Vec<String> {
        let mut buffer: *mut libc::c_char = ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer pointer and size into our two locals,
        // which outlive the stream; it returns null on failure.
        let stream = unsafe { libc::open_memstream(&mut buffer, &mut size) };
        if stream.is_null() {
            return Vec::new();
        }
        // SAFETY: the context is live (self); the stream is a valid FILE* until fclose. The
        // bindings' FILE is the same C type as libc's, hence the pointer cast.
        unsafe {
            sys::ucp_context_print_info(self.inner.handle, stream.cast());
            libc::fclose(stream);
        }
        if buffer.is_null() {
            return Vec::new();
        }
        // SAFETY: after fclose, `buffer` holds `size` bytes (NUL-terminated) that we own and
        // free below.
        let text =
            unsafe { String::from_utf8_lossy(std::slice::from_raw_parts(buffer.cast::<u8>(), size)).into_owned() };
        // SAFETY: open_memstream's buffer is malloc'ed and ours to free.
        unsafe { libc::free(buffer.cast()) };
        let mut transports: Vec<String> = text
            .lines()
            .filter(|line| line.contains("resource"))
            .filter_map(|line| line.split_whitespace().last().map(str::to_string))
            .collect();
        transports.dedup();
        transports
    }

    /// A context with `features`, configured from the process's `UCX_*` environment.
    pub fn new(features: Features) -> Result<Context> {
        Context::with_config(features, &[])
    }

    /// Like [`Context::new`], then applies `overrides` on top of the environment: pairs of
    /// UCX configuration names without the `UCX_` prefix and values, e.g. `("TLS", "tcp")` or
    /// `("MM_ERROR_HANDLING", "y")`. Lets one process run contexts with different transports.
    pub fn with_config(features: Features, overrides: &[(&str, &str)]) -> Result<Context> {
        let config = Config::read()?;
        for (name, value) in overrides {
            config.modify(name, value)?;
        }
        // SAFETY: ucp_params_t is a C struct for which all-zero bytes are a valid value
        // (no fields set, null callbacks); field_mask below names exactly the fields we fill.
        let mut params: sys::ucp_params_t = unsafe { mem::zeroed() };
        params.field_mask = (sys::UCP_PARAM_FIELD_FEATURES | sys::UCP_PARAM_FIELD_REQUEST_SIZE) as u64;
        params.features = features.bits();
        // Every request UCX hands back carries this many bytes for us (see RequestArea).
        params.request_size = mem::size_of::<RequestArea>();
        let mut handle: sys::ucp_context_h = ptr::null_mut();
        // SAFETY: params is initialised with a correct field_mask, config is live (released
        // when `config` drops, after this call; UCX copies what it needs), handle is writable.
        let status = unsafe { sys::ucp_init(&params, config.handle, &mut handle) };
        Status(status).check("ucp_init")?;
        Ok(Context { inner: Rc::new(ContextInner { handle }) })
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("handle", &self.inner.handle).finish()
    }
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: handle came from a successful ucp_init; every worker and memory region holds
        // an Rc to this inner value, so none is left when the last Rc drops and we get here.
        unsafe { sys::ucp_cleanup(self.handle) };
    }
}

/// A `ucp_config_t` read from the environment, released on drop.
struct Config {
    handle: *mut sys::ucp_config_t,
}

impl Config {
    fn read() -> Result<Config> {
        let mut handle: *mut sys::ucp_config_t = ptr::null_mut();
        // SAFETY: NULL env prefix and file name select the defaults ("UCX_"); handle is a
        // valid out-pointer.
        let status = unsafe { sys::ucp_config_read(ptr::null(), ptr::null(), &mut handle) };
        Status(status).check("ucp_config_read")?;
        Ok(Config { handle })
    }

    fn modify(&self, name: &str, value: &str) -> Result<()> {
        let to_c = |text: &str| CString::new(text).map_err(|_| Error::ConfigString { name: name.to_owned() });
        let (c_name, c_value) = (to_c(name)?, to_c(value)?);
        // SAFETY: the config is live; both strings are NUL-terminated and outlive the call
        // (UCX copies them).
        let status = unsafe { sys::ucp_config_modify(self.handle, c_name.as_ptr(), c_value.as_ptr()) };
        Status(status).check("ucp_config_modify")
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: handle came from a successful ucp_config_read and is released once.
        unsafe { sys::ucp_config_release(self.handle) };
    }
}
