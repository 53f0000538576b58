//! Futex calls for the `NEED_WAKEUP` protocol (see `shm_layout::ring`).
//!
//! Ring words live in memory shared between processes, so these are the
//! shared (not `FUTEX_PRIVATE_FLAG`) operations, except where a word is named
//! private. Every wait has a timeout: a wake-up is a hint, never the only way
//! out of a sleep.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Set once `futex_waitv` answered `ENOSYS` (kernels before 5.16, or a seccomp filter).
static WAITV_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Longest sleep of the fallback for kernels without `futex_waitv`: it sleeps on the first
/// word only, so the others (SQ tails) are looked at again after this.
pub const WAITV_FALLBACK_SLICE: Duration = Duration::from_millis(1);

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken by a futex wake (or a spurious wake-up).
    Woken,
    /// The word no longer held the expected value when the kernel checked.
    ValueChanged,
    TimedOut,
    Interrupted,
}

fn timespec(timeout: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    }
}

fn outcome(result: libc::c_long) -> WaitOutcome {
    if result >= 0 {
        return WaitOutcome::Woken;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => WaitOutcome::ValueChanged,
        Some(libc::ETIMEDOUT) => WaitOutcome::TimedOut,
        // EINTR, and anything unexpected: report as interrupted, the caller
        // re-checks its state and waits again within its own bound.
        _ => WaitOutcome::Interrupted,
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> WaitOutcome {
    let timeout = timespec(timeout);
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word` (valid for the
    // call) and the timespec on our stack; it writes nothing.
    let result = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &timeout as *const libc::timespec)
    };
    outcome(result)
}

/// Wakes up to `count` sleepers on `word`. Returns how many were woken.
pub fn wake(word: &AtomicU32, count: u32) -> u32 {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key.
    let result = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, count.min(i32::MAX as u32)) };
    result.max(0) as u32
}

/// Wakes sleepers on a word only this process uses.
pub fn wake_private(word: &AtomicU32, count: u32) -> u32 {
    // SAFETY: as in `wake`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count.min(i32::MAX as u32),
        )
    };
    result.max(0) as u32
}

/// The most words one [`wait_any`] can sleep on (the kernel's limit).
pub const WAITV_MAX: usize = 128;

const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX2_PRIVATE: u32 = 128;

/// One word for [`wait_any`], in the kernel's `struct futex_waitv` layout.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WaitWord {
    expected: u64,
    address: u64,
    flags: u32,
    _reserved: u32,
}

impl WaitWord {
    /// A word shared with other processes.
    pub fn shared(word: &AtomicU32, expected: u32) -> WaitWord {
        WaitWord { expected: expected as u64, address: word.as_ptr() as u64, flags: FUTEX2_SIZE_U32, _reserved: 0 }
    }

    /// A word private to this process.
    pub fn private(word: &AtomicU32, expected: u32) -> WaitWord {
        WaitWord { flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE, ..WaitWord::shared(word, expected) }
    }
}

/// Sleeps until any of `words` is woken or no longer holds its expected
/// value, at most `timeout` (`futex_waitv`, Linux 5.16+).
///
/// # Safety
/// Every word's address must stay valid for the duration of the call (the
/// caller holds references to, or mappings of, all of them).
pub unsafe fn wait_any(words: &[WaitWord], timeout: Duration) -> WaitOutcome {
    if words.is_empty() || words.len() > WAITV_MAX {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        return WaitOutcome::TimedOut;
    }
    if WAITV_UNSUPPORTED.load(Ordering::Relaxed) {
        // SAFETY: the caller keeps words[0]'s address valid for the call.
        return unsafe { wait_first(&words[0], timeout.min(WAITV_FALLBACK_SLICE)) };
    }
    let deadline = Duration::from_nanos(crate::clock::monotonic_ns()) + timeout;
    let deadline = timespec(deadline);
    // SAFETY: the kernel reads `words.len()` futex_waitv structs from our
    // slice, whose addresses the caller keeps valid, and the absolute
    // CLOCK_MONOTONIC deadline on our stack.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            words.as_ptr(),
            words.len() as libc::c_uint,
            0 as libc::c_uint,
            &deadline as *const libc::timespec,
            libc::CLOCK_MONOTONIC,
        )
    };
    if result < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        WAITV_UNSUPPORTED.store(true, Ordering::Relaxed);
        // SAFETY: as above.
        return unsafe { wait_first(&words[0], timeout.min(WAITV_FALLBACK_SLICE)) };
    }
    outcome(result)
}

/// The fallback without `futex_waitv`: a plain futex wait on one word.
///
/// # Safety
/// `word.address` must point to a live, aligned `u32` for the call.
unsafe fn wait_first(word: &WaitWord, timeout: Duration) -> WaitOutcome {
    let timeout = timespec(timeout);
    let private = if word.flags & FUTEX2_PRIVATE != 0 { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    // SAFETY: FUTEX_WAIT reads the u32 at the address the caller keeps valid, and the
    // timespec on our stack.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.address as *const u32,
            libc::FUTEX_WAIT | private,
            word.expected as u32,
            &timeout as *const libc::timespec,
        )
    };
    outcome(result)
}

/// Whether this kernel has `futex_waitv` (probed with a word that does not hold the value
/// expected, so the call returns at once). Without it [`wait_any`] sleeps on its first word
/// only, at most [`WAITV_FALLBACK_SLICE`] at a time.
pub fn waitv_supported() -> bool {
    let word = AtomicU32::new(1);
    let words = [WaitWord::private(&word, 0)];
    // SAFETY: `word` outlives the call.
    let _ = unsafe { wait_any(&words, Duration::from_millis(1)) };
    !WAITV_UNSUPPORTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn wait_returns_at_once_when_value_differs() {
        let word = AtomicU32::new(5);
        assert_eq!(wait(&word, 4, Duration::from_secs(5)), WaitOutcome::ValueChanged);
    }

    #[test]
    fn waitv_is_probed_and_the_fallback_waits_on_the_first_word() {
        assert!(waitv_supported(), "this kernel has futex_waitv (5.16+)");
        let word = AtomicU32::new(3);
        // SAFETY: `word` outlives the calls.
        unsafe {
            assert_eq!(wait_first(&WaitWord::private(&word, 2), Duration::from_secs(5)), WaitOutcome::ValueChanged);
            assert_eq!(wait_first(&WaitWord::shared(&word, 3), Duration::from_millis(2)), WaitOutcome::TimedOut);
        }
    }

    #[test]
    fn wait_times_out() {
        let word = AtomicU32::new(5);
        assert_eq!(wait(&word, 5, Duration::from_millis(5)), WaitOutcome::TimedOut);
    }

    #[test]
    fn wait_any_is_woken_by_either_word() {
        let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let waker = words.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker[1].store(1, Ordering::SeqCst);
            wake_private(&waker[1], 1);
        });
        let list = [WaitWord::shared(&words[0], 0), WaitWord::private(&words[1], 0)];
        // SAFETY: `words` outlives the call.
        let outcome = unsafe { wait_any(&list, Duration::from_secs(5)) };
        assert!(matches!(outcome, WaitOutcome::Woken | WaitOutcome::ValueChanged));
        thread.join().unwrap();
    }
}
