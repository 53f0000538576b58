//! The atomics the ring protocol uses: `core`'s in a normal build, loom's in a
//! model-checked build (`RUSTFLAGS="--cfg loom"`), so the same protocol code
//! is what loom explores.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, Ordering};

/// A spin-loop hint (PAUSE on x86): keeps a polling loop from starving the
/// sibling hyperthread and measurably shortens the cross-core round trip.
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
