//! Raw bindings to the system UCX (`ucp` and the `ucs` types it uses).
//!
//! `build.rs` runs bindgen over `<ucp/api/ucp.h>` of the UCX that pkg-config finds (>= 1.13) and
//! links that same installation. Enums are plain integer constants, so a value this version
//! does not know is a number, not undefined behaviour. Structs derive `Default`, but UCX params
//! structs are meant to start from `mem::zeroed()` with `field_mask` naming the fields filled.
//!
//! Bindgen cannot see C macros with arguments or `static inline` functions; the few of those the
//! API needs are written by hand at the bottom of this file, each next to the C it mirrors.
//! The safe layer is the `ucx` crate; nothing here is safe to call without reading ucp.h.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    improper_ctypes,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

// `ucs_status_t` is declared `UCS_S_PACKED`, so it is one signed byte. Everything below relies
// on that (a status travels inside an error pointer as a small negative number).
const _: () = assert!(core::mem::size_of::<ucs_status_t>() == 1);

/// `UCS_PTR_IS_ERR(ptr)`: the pointer returned by an `_nbx` call encodes an error status.
///
/// UCX returns `(void*)status` for errors: a small negative number, so as an address it lies at
/// or above `(uintptr_t)UCS_ERR_LAST`.
#[inline]
pub fn UCS_PTR_IS_ERR(ptr: ucs_status_ptr_t) -> bool {
    (ptr as usize) >= (UCS_ERR_LAST as isize as usize)
}

/// `UCS_PTR_IS_PTR(ptr)`: the pointer is a real request (neither NULL nor an error).
#[inline]
pub fn UCS_PTR_IS_PTR(ptr: ucs_status_ptr_t) -> bool {
    (ptr as usize).wrapping_sub(1) < (UCS_ERR_LAST as isize as usize).wrapping_sub(1)
}

/// `UCS_PTR_STATUS(ptr)`: the status a non-request pointer encodes (`UCS_OK` for NULL).
#[inline]
pub fn UCS_PTR_STATUS(ptr: ucs_status_ptr_t) -> ucs_status_t {
    ptr as isize as ucs_status_t
}

/// `ucp_init()`, a `static inline` in ucp.h: `ucp_init_version` with the API version of the
/// headers these bindings were generated from, so the library can refuse a mismatch.
///
/// # Safety
/// As for `ucp_init_version`: `params` must point to an initialised `ucp_params_t` whose
/// `field_mask` names only fields that are set, `config` must be NULL or a live config from
/// `ucp_config_read`, and `context_p` must be valid for a write.
#[inline]
pub unsafe fn ucp_init(
    params: *const ucp_params_t,
    config: *const ucp_config_t,
    context_p: *mut ucp_context_h,
) -> ucs_status_t {
    // SAFETY: the caller upholds ucp_init_version's contract (see above).
    unsafe { ucp_init_version(UCP_API_MAJOR, UCP_API_MINOR, params, config, context_p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pointers_round_trip() {
        let error = UCS_ERR_CONNECTION_RESET as isize as ucs_status_ptr_t;
        assert!(UCS_PTR_IS_ERR(error));
        assert!(!UCS_PTR_IS_PTR(error));
        assert_eq!(UCS_PTR_STATUS(error), UCS_ERR_CONNECTION_RESET as ucs_status_t);

        let null: ucs_status_ptr_t = core::ptr::null_mut();
        assert!(!UCS_PTR_IS_ERR(null));
        assert!(!UCS_PTR_IS_PTR(null));
        assert_eq!(UCS_PTR_STATUS(null), UCS_OK as ucs_status_t);

        let mut request = 0u64;
        let pointer = (&mut request as *mut u64).cast();
        assert!(UCS_PTR_IS_PTR(pointer));
        assert!(!UCS_PTR_IS_ERR(pointer));
    }

    #[test]
    fn library_version_matches_headers() {
        let (mut major, mut minor, mut release) = (0, 0, 0);
        // SAFETY: three valid out-pointers; ucp_get_version only writes them.
        unsafe { ucp_get_version(&mut major, &mut minor, &mut release) };
        assert_eq!((major, minor), (UCP_API_MAJOR, UCP_API_MINOR));
    }
}
