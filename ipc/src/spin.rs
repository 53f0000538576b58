//! Adaptive spinning: how long a waiter spins before it sleeps (the engine's
//! poller on empty SQs, a client on its CQ), decided from what its last waits
//! cost, not by a fixed time.
//!
//! Spinning wins only while the peer we wait for runs on another CPU. On a
//! busy host it loses twice: the spinner is descheduled in the middle of its
//! window, or it holds the very CPU its peer waits for, so the peer moves only
//! once the spinner gives up. A [`SpinPolicy`] keeps one spin window per
//! waiter, between 0 and the configured ceiling, and moves it after each wait:
//!
//! | what the wait saw | window |
//! |---|---|
//! | the work came while spinning | doubles (at least [`WINDOW_MIN_NS`]) |
//! | descheduled while spinning (a gap over [`DESCHEDULED_GAP_NS`] between two looks at the clock) | quarters |
//! | slept, and the work came soon after (within the ceiling) although the peer moved while we spun: it only needed longer | doubles |
//! | slept, and the work came soon after, and the peer did not move while we spun: it moved because we stopped | halves |
//! | slept long (the peer was idle): spinning bought nothing | halves |
//!
//! A window below [`WINDOW_MIN_NS`] is 0: the waiter then sleeps at its first
//! look at the clock (after a few dozen polls, which is how a winning spin is
//! noticed again and the window grows back). A ceiling of 0 never spins.

use std::time::Duration;

/// A longer gap between two looks at the clock of a spinning waiter means
/// it was descheduled (or its vCPU was not running): a look comes every few
/// dozen polls, well under a microsecond apart when the thread runs.
pub const DESCHEDULED_GAP_NS: u64 = 20_000;

/// The smallest window that is not 0: about two round trips between two
/// running processes, so a peer that runs answers within it.
pub const WINDOW_MIN_NS: u64 = 2_000;

/// One waiter's spin window, carried from one wait to the next.
#[derive(Clone, Copy, Debug)]
pub struct SpinPolicy {
    ceiling_ns: u64,
    window_ns: u64,
}

/// One wait in progress, from its first look at the clock.
#[derive(Clone, Copy, Debug)]
pub struct Spin {
    start_ns: u64,
    last_look_ns: u64,
    /// The peer's progress mark at the last look (any value that changes when
    /// the peer does something the waiter can see).
    peer_mark: u32,
    peer_moved: bool,
    descheduled: bool,
}

impl Spin {
    /// The peer visibly works for us (for a client: the engine holds every
    /// request it submitted), whatever the mark says.
    pub fn peer_busy(&mut self) {
        self.peer_moved = true;
    }

    /// Time spent on something other than spinning (housekeeping) since the
    /// last look is not a gap.
    pub fn resume(&mut self, now_ns: u64) {
        self.last_look_ns = now_ns;
    }
}

impl SpinPolicy {
    /// A policy that starts at, and never spins longer than, `ceiling`.
    pub fn new(ceiling: Duration) -> SpinPolicy {
        let ceiling_ns = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        SpinPolicy { ceiling_ns, window_ns: ceiling_ns }
    }

    /// The current spin window, in ns.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Starts a wait at its first look at the clock.
    pub fn begin(&self, now_ns: u64, peer_mark: u32) -> Spin {
        Spin { start_ns: now_ns, last_look_ns: now_ns, peer_mark, peer_moved: false, descheduled: false }
    }

    /// One look at the clock during a wait: whether to go on spinning
    /// (false: sleep now).
    pub fn keep_spinning(&self, spin: &mut Spin, now_ns: u64, peer_mark: u32) -> bool {
        if now_ns.saturating_sub(spin.last_look_ns) > DESCHEDULED_GAP_NS {
            spin.descheduled = true;
        }
        spin.last_look_ns = now_ns;
        if peer_mark != spin.peer_mark {
            spin.peer_moved = true;
            spin.peer_mark = peer_mark;
        }
        !spin.descheduled && now_ns.saturating_sub(spin.start_ns) < self.window_ns
    }

    /// The work came while spinning (`spin`: the wait's, if it had looked at
    /// the clock yet).
    pub fn won(&mut self, spin: Option<&Spin>) {
        if spin.is_some_and(|spin| spin.descheduled) {
            self.quarter();
        } else {
            self.double();
        }
    }

    /// The wait slept for `slept_ns` (0: it found work as it set up the sleep).
    pub fn slept(&mut self, spin: &Spin, slept_ns: u64) {
        if spin.descheduled {
            self.quarter();
        } else if slept_ns < self.ceiling_ns && spin.peer_moved {
            self.double();
        } else {
            self.halve();
        }
    }

    fn double(&mut self) {
        self.window_ns = self.window_ns.saturating_mul(2).max(WINDOW_MIN_NS).min(self.ceiling_ns);
    }

    fn halve(&mut self) {
        self.set_below(self.window_ns / 2);
    }

    fn quarter(&mut self) {
        self.set_below(self.window_ns / 4);
    }

    fn set_below(&mut self, window_ns: u64) {
        self.window_ns = if window_ns < WINDOW_MIN_NS { 0 } else { window_ns };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: Duration = Duration::from_micros(50);

    /// A wait that spins on from `start_ns`, looking every `step_ns`, until
    /// the policy says sleep; returns the wait and the time it stopped.
    fn spin_until_sleep(policy: &SpinPolicy, start_ns: u64, step_ns: u64, marks: impl Fn(u64) -> u32) -> (Spin, u64) {
        let mut spin = policy.begin(start_ns, marks(start_ns));
        let mut now_ns = start_ns;
        // Bounded: the window is at most the ceiling.
        loop {
            now_ns += step_ns;
            if !policy.keep_spinning(&mut spin, now_ns, marks(now_ns)) {
                return (spin, now_ns);
            }
        }
    }

    #[test]
    fn starts_at_the_ceiling_and_a_zero_ceiling_never_spins() {
        assert_eq!(SpinPolicy::new(CEILING).window_ns(), 50_000);
        let mut never = SpinPolicy::new(Duration::ZERO);
        let mut spin = never.begin(0, 0);
        assert!(!never.keep_spinning(&mut spin, 0, 0));
        never.won(Some(&spin));
        assert_eq!(never.window_ns(), 0);
    }

    #[test]
    fn a_peer_that_only_moves_once_we_sleep_drives_the_window_to_zero_and_wins_grow_it_back() {
        let mut policy = SpinPolicy::new(CEILING);
        for _ in 0..16 {
            let (spin, _) = spin_until_sleep(&policy, 1_000, 500, |_| 7);
            policy.slept(&spin, 3_000);
        }
        assert_eq!(policy.window_ns(), 0);
        let (spin, stopped_ns) = spin_until_sleep(&policy, 1_000, 500, |_| 7);
        assert_eq!(stopped_ns, 1_500, "a zero window sleeps at the first look");
        policy.slept(&spin, 3_000);
        let mut windows = Vec::new();
        for _ in 0..6 {
            policy.won(None);
            windows.push(policy.window_ns());
        }
        assert_eq!(windows, [2_000, 4_000, 8_000, 16_000, 32_000, 50_000]);
    }

    #[test]
    fn being_descheduled_while_spinning_quarters_the_window() {
        let mut policy = SpinPolicy::new(CEILING);
        let mut spin = policy.begin(0, 0);
        assert!(policy.keep_spinning(&mut spin, 500, 0));
        assert!(!policy.keep_spinning(&mut spin, 500 + DESCHEDULED_GAP_NS + 1, 0), "a gap ends the spin");
        policy.won(Some(&spin));
        assert_eq!(policy.window_ns(), 12_500);
        let mut spin = policy.begin(0, 0);
        let mut now_ns = 0;
        for _ in 0..4 {
            now_ns += 1_000;
            assert!(policy.keep_spinning(&mut spin, now_ns, 0));
        }
        spin.resume(now_ns + 5 * DESCHEDULED_GAP_NS);
        // Past the window, so the spin ends, but not as a descheduled one.
        assert!(!policy.keep_spinning(&mut spin, now_ns + 5 * DESCHEDULED_GAP_NS + 1_000, 0));
        assert!(!spin.descheduled, "time handed to housekeeping is not a gap");
    }

    #[test]
    fn a_peer_that_moved_and_answered_just_after_the_window_grows_it() {
        let mut policy = SpinPolicy::new(CEILING);
        policy.halve();
        policy.halve();
        assert_eq!(policy.window_ns(), 12_500);
        let (spin, _) = spin_until_sleep(&policy, 0, 500, |now_ns| (now_ns > 4_000) as u32);
        policy.slept(&spin, 5_000);
        assert_eq!(policy.window_ns(), 25_000);
        let (mut spin, _) = spin_until_sleep(&policy, 0, 500, |_| 0);
        spin.peer_busy();
        policy.slept(&spin, 5_000);
        assert_eq!(policy.window_ns(), 50_000, "a peer busy with our work counts as moving");
    }

    #[test]
    fn a_long_sleep_halves_the_window() {
        let mut policy = SpinPolicy::new(CEILING);
        let (spin, stopped_ns) = spin_until_sleep(&policy, 0, 500, |now_ns| now_ns as u32);
        assert_eq!(stopped_ns, 50_000);
        policy.slept(&spin, 2_000_000);
        assert_eq!(policy.window_ns(), 25_000);
    }
}
