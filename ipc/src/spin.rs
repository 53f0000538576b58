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
//! | the work came while spinning | doubles, and at least twice the time the work took |
//! | descheduled while spinning (a gap over [`DESCHEDULED_GAP_NS`] between two looks at the clock) | quarters |
//! | slept, and the work came soon after (within the ceiling) although the peer moved while we spun: it only needed longer | doubles |
//! | slept, and the work came soon after, and the peer did not move while we spun: it moved because we stopped | halves |
//! | slept long (the peer was idle): spinning bought nothing | halves |
//!
//! The window never falls below [`WINDOW_MIN_NS`] (nor above the ceiling), so
//! a peer that answers at once is still caught and the window grows back. Two
//! waiters that both sleep sooner than the other wakes would keep each other
//! there (each sees the other move only after it slept): so every
//! [`PROBE_EVERY`] lost waits one spins at least [`PROBE_WINDOW_NS`], and a
//! probe that wins sets the window from the time it took. A ceiling of 0
//! never spins.
//!
//! A spinner on a crowded CPU also loses in a way no single wait shows: the
//! scheduler favours threads that sleep, so one that spins is queued behind
//! the others whenever it has work. So every [`CPU_PERIOD_NS`] the policy
//! compares the thread's CPU time with the time it wanted a CPU (wall time
//! less its sleeps); below [`CPU_SHARE_MIN_PERCENT`], the next period spins
//! at most [`WINDOW_MIN_NS`] (no probes), as if spinning were off.

use std::time::Duration;

/// A longer gap between two looks at the clock of a spinning waiter means
/// it was descheduled (or its vCPU was not running): a look comes every few
/// dozen polls, well under a microsecond apart when the thread runs.
pub const DESCHEDULED_GAP_NS: u64 = 20_000;

/// The smallest window (unless the ceiling is smaller): about two round
/// trips between two running processes, so a peer that runs answers within it.
pub const WINDOW_MIN_NS: u64 = 2_000;

/// Every this many lost waits, the next one is a probe.
pub const PROBE_EVERY: u32 = 32;

/// A probe spins at least this long (unless the ceiling is smaller): longer
/// than a sleeping peer takes to wake on a quiet host.
pub const PROBE_WINDOW_NS: u64 = 50_000;

/// How often a waiter compares its CPU time with the time it wanted a CPU.
pub const CPU_PERIOD_NS: u64 = 10_000_000;

/// Below this share of the time it wanted a CPU, a waiter counts its CPU as
/// contended for the next period.
pub const CPU_SHARE_MIN_PERCENT: u64 = 80;

/// One waiter's spin window, carried from one wait to the next. Belongs to
/// one thread (it reads that thread's CPU time).
#[derive(Clone, Copy, Debug)]
pub struct SpinPolicy {
    ceiling_ns: u64,
    window_ns: u64,
    /// Waits lost since the last probe (at most [`PROBE_EVERY`]).
    losses: u32,
    /// The CPU period in progress: its start (wall and thread CPU time) and
    /// the time slept in it.
    period_start_ns: u64,
    period_cpu_start_ns: u64,
    period_slept_ns: u64,
    /// The last period's verdict: the thread got too little of the CPU it wanted.
    contended: bool,
}

/// One wait in progress, from its first look at the clock.
#[derive(Clone, Copy, Debug)]
pub struct Spin {
    start_ns: u64,
    /// How long this wait may spin: the window, or more for a probe.
    limit_ns: u64,
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
        SpinPolicy {
            ceiling_ns,
            window_ns: ceiling_ns,
            losses: 0,
            period_start_ns: 0,
            period_cpu_start_ns: 0,
            period_slept_ns: 0,
            contended: false,
        }
    }

    /// The current spin window, in ns.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Whether the last CPU period found the CPU contended.
    pub fn contended(&self) -> bool {
        self.contended
    }

    /// Starts a wait at its first look at the clock.
    pub fn begin(&mut self, now_ns: u64, peer_mark: u32) -> Spin {
        if now_ns.saturating_sub(self.period_start_ns) >= CPU_PERIOD_NS {
            self.end_cpu_period(now_ns, crate::clock::thread_cpu_ns());
        }
        let mut limit_ns = self.window_ns;
        if self.contended {
            limit_ns = limit_ns.min(WINDOW_MIN_NS);
        } else if self.losses >= PROBE_EVERY {
            self.losses = 0;
            limit_ns = limit_ns.max(PROBE_WINDOW_NS.min(self.ceiling_ns));
        }
        Spin { start_ns: now_ns, limit_ns, last_look_ns: now_ns, peer_mark, peer_moved: false, descheduled: false }
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
        !spin.descheduled && now_ns.saturating_sub(spin.start_ns) < spin.limit_ns
    }

    /// The work came while spinning, at `now_ns` (`spin`: the wait's, if it
    /// had looked at the clock yet).
    pub fn won(&mut self, spin: Option<&Spin>, now_ns: u64) {
        match spin {
            Some(spin) if spin.descheduled => self.quarter(),
            Some(spin) => {
                let took_ns = now_ns.saturating_sub(spin.start_ns);
                self.set(self.window_ns.saturating_mul(2).max(took_ns.saturating_mul(2)));
            }
            None => self.double(),
        }
    }

    /// Closes the CPU period at `now_ns`, the thread having used `cpu_ns` of
    /// CPU time so far, and starts the next.
    fn end_cpu_period(&mut self, now_ns: u64, cpu_ns: u64) {
        let wanted_ns = now_ns.saturating_sub(self.period_start_ns).saturating_sub(self.period_slept_ns);
        let used_ns = cpu_ns.saturating_sub(self.period_cpu_start_ns);
        // The first period starts at 0, not when the thread did: it only counts once started.
        if self.period_start_ns != 0 {
            self.contended = used_ns.saturating_mul(100) < wanted_ns.saturating_mul(CPU_SHARE_MIN_PERCENT);
        }
        (self.period_start_ns, self.period_cpu_start_ns, self.period_slept_ns) = (now_ns, cpu_ns, 0);
    }

    /// The wait slept for `slept_ns` (0: it found work as it set up the sleep).
    pub fn slept(&mut self, spin: &Spin, slept_ns: u64) {
        self.period_slept_ns = self.period_slept_ns.saturating_add(slept_ns);
        self.losses = (self.losses + 1).min(PROBE_EVERY);
        if spin.descheduled {
            self.quarter();
        } else if slept_ns < self.ceiling_ns && spin.peer_moved {
            self.double();
        } else {
            self.halve();
        }
    }

    fn double(&mut self) {
        self.set(self.window_ns.saturating_mul(2));
    }

    fn halve(&mut self) {
        self.set(self.window_ns / 2);
    }

    fn quarter(&mut self) {
        self.set(self.window_ns / 4);
    }

    fn set(&mut self, window_ns: u64) {
        self.window_ns = window_ns.max(WINDOW_MIN_NS).min(self.ceiling_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: Duration = Duration::from_micros(50);

    /// A wait that spins on from `start_ns`, looking every `step_ns`, until
    /// the policy says sleep; returns the wait and the time it stopped.
    fn spin_until_sleep(
        policy: &mut SpinPolicy,
        start_ns: u64,
        step_ns: u64,
        marks: impl Fn(u64) -> u32,
    ) -> (Spin, u64) {
        let mut spin = policy.begin(start_ns, marks(start_ns));
        let mut now_ns = start_ns;
        // Bounded: a spin is at most the ceiling.
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
        for _ in 0..2 * PROBE_EVERY {
            let mut spin = never.begin(0, 0);
            assert!(!never.keep_spinning(&mut spin, 0, 0));
            never.slept(&spin, 1_000);
        }
        never.won(None, 0);
        assert_eq!(never.window_ns(), 0);
    }

    #[test]
    fn a_peer_that_only_moves_once_we_sleep_drives_the_window_to_the_minimum_and_wins_grow_it_back() {
        let mut policy = SpinPolicy::new(CEILING);
        for _ in 0..16 {
            let (spin, _) = spin_until_sleep(&mut policy, 1_000, 500, |_| 7);
            policy.slept(&spin, 3_000);
        }
        assert_eq!(policy.window_ns(), WINDOW_MIN_NS);
        let (spin, stopped_ns) = spin_until_sleep(&mut policy, 1_000, 500, |_| 7);
        assert_eq!(stopped_ns, 1_000 + WINDOW_MIN_NS);
        policy.slept(&spin, 3_000);
        let mut windows = Vec::new();
        for _ in 0..5 {
            policy.won(None, 0);
            windows.push(policy.window_ns());
        }
        assert_eq!(windows, [4_000, 8_000, 16_000, 32_000, 50_000]);
    }

    #[test]
    fn a_win_sets_the_window_to_twice_the_time_the_work_took() {
        let mut policy = SpinPolicy::new(CEILING);
        for _ in 0..8 {
            policy.halve();
        }
        assert_eq!(policy.window_ns(), WINDOW_MIN_NS);
        let spin = policy.begin(0, 0);
        // A spin this long only happens in a probe; the arithmetic is what is tested.
        policy.won(Some(&spin), 9_000);
        assert_eq!(policy.window_ns(), 18_000);
    }

    #[test]
    fn every_so_many_lost_waits_one_probes_the_probe_window() {
        let mut policy = SpinPolicy::new(Duration::from_micros(200));
        let mut stops = Vec::new();
        for _ in 0..PROBE_EVERY + 2 {
            let (spin, stopped_ns) = spin_until_sleep(&mut policy, 0, 500, |_| 7);
            policy.slept(&spin, 3_000);
            stops.push(stopped_ns);
        }
        assert_eq!(policy.window_ns(), WINDOW_MIN_NS);
        let probes: Vec<usize> =
            stops.iter().enumerate().filter(|(_, &stop)| stop >= PROBE_WINDOW_NS).map(|(index, _)| index).collect();
        // The first waits spin the (shrinking) window down from 200 µs; then one probe.
        assert_eq!(probes, [0, 1, 2, PROBE_EVERY as usize]);
        assert_eq!(stops[PROBE_EVERY as usize], PROBE_WINDOW_NS);
    }

    #[test]
    fn being_descheduled_while_spinning_quarters_the_window() {
        let mut policy = SpinPolicy::new(CEILING);
        let mut spin = policy.begin(0, 0);
        assert!(policy.keep_spinning(&mut spin, 500, 0));
        assert!(!policy.keep_spinning(&mut spin, 500 + DESCHEDULED_GAP_NS + 1, 0), "a gap ends the spin");
        policy.won(Some(&spin), 30_000);
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
        let (spin, _) = spin_until_sleep(&mut policy, 0, 500, |now_ns| (now_ns > 4_000) as u32);
        policy.slept(&spin, 5_000);
        assert_eq!(policy.window_ns(), 25_000);
        let (mut spin, _) = spin_until_sleep(&mut policy, 0, 500, |_| 0);
        spin.peer_busy();
        policy.slept(&spin, 5_000);
        assert_eq!(policy.window_ns(), 50_000, "a peer busy with our work counts as moving");
    }

    #[test]
    fn a_thread_that_got_too_little_of_the_cpu_it_wanted_spins_at_most_the_minimum() {
        let mut policy = SpinPolicy::new(CEILING);
        policy.end_cpu_period(1_000, 0);
        let spin = policy.begin(1_000, 0);
        policy.slept(&spin, 4_000_000);
        // 10 ms of wall time, 4 ms asleep: it wanted 6 ms of CPU and got 3.
        policy.end_cpu_period(10_001_000, 3_000_000);
        assert!(policy.contended());
        let (_, stopped_ns) = spin_until_sleep(&mut policy, 20_000_000, 500, |now_ns| now_ns as u32);
        assert_eq!(stopped_ns, 20_000_000 + WINDOW_MIN_NS);
        assert_eq!(policy.window_ns(), 25_000, "the window itself is kept for when the CPU frees up");
        // The next period: 5.5 of 6 ms.
        policy.slept(&spin, 4_000_000);
        policy.end_cpu_period(20_001_000, 8_500_000);
        assert!(!policy.contended());
    }

    #[test]
    fn a_long_sleep_halves_the_window() {
        let mut policy = SpinPolicy::new(CEILING);
        let (spin, stopped_ns) = spin_until_sleep(&mut policy, 0, 500, |now_ns| now_ns as u32);
        assert_eq!(stopped_ns, 50_000);
        policy.slept(&spin, 2_000_000);
        assert_eq!(policy.window_ns(), 25_000);
    }
}
