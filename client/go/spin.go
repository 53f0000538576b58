package rdma

import "time"

// Adaptive spinning, the policy of the Rust client and the engine's poller
// (rdma_ipc::spin in the Rust workspace): Wait spins only while spinning
// pays, deciding from what its last waits cost. The window moves after each
// wait:
//   - the completions came while spinning: it doubles, and is at least twice
//     the time they took;
//   - the goroutine was descheduled while spinning (two looks at the clock
//     more than descheduledGap apart): it quarters;
//   - Wait slept and the completions came soon after (within the ceiling)
//     although the engine moved while we spun: it doubles;
//   - Wait slept and the engine did not move while we spun (it ran only once
//     we stopped: we held its CPU), or slept long (the engine was idle): it halves.
//
// The window stays between windowMin and the ceiling; every probeEvery lost
// waits one spins at least probeWindow, so that two waiters that each sleep
// before the other wakes do not keep each other there.
//
// The Rust policy's CPU-share rule (spin at most windowMin while the thread
// got under 80 % of the CPU it wanted) is left out: a goroutine is not bound
// to one OS thread, so the thread's CPU time says nothing about it.

const (
	// descheduledGap: a longer gap between two looks at the clock of a
	// spinning waiter means it was not running.
	descheduledGap = 20 * time.Microsecond
	// windowMin: the smallest window, about two round trips between two
	// running processes.
	windowMin = 2 * time.Microsecond
	// probeEvery lost waits, the next one spins at least probeWindow.
	probeEvery  = 32
	probeWindow = 50 * time.Microsecond
	// waitSpinMax is the longest Wait spins before it sleeps (the Rust
	// client's WAIT_SPIN_MAX).
	waitSpinMax = 200 * time.Microsecond
)

// spinPolicy is one waiter's spin window, carried from wait to wait.
type spinPolicy struct {
	ceiling, window time.Duration
	// losses: waits lost since the last probe (at most probeEvery).
	losses int
}

// spin is one wait in progress.
type spin struct {
	start, limit, lastLook time.Duration
	peerMark               uint32
	peerMoved              bool
	descheduled            bool
}

func newSpinPolicy(ceiling time.Duration) spinPolicy {
	return spinPolicy{ceiling: ceiling, window: ceiling}
}

func (p *spinPolicy) begin(now time.Duration, peerMark uint32) spin {
	limit := p.window
	if p.losses >= probeEvery {
		p.losses = 0
		limit = max(limit, min(probeWindow, p.ceiling))
	}
	return spin{start: now, limit: limit, lastLook: now, peerMark: peerMark}
}

// keepSpinning is one look at the clock: whether to go on spinning.
func (p *spinPolicy) keepSpinning(s *spin, now time.Duration, peerMark uint32) bool {
	if now-s.lastLook > descheduledGap {
		s.descheduled = true
	}
	s.lastLook = now
	if peerMark != s.peerMark {
		s.peerMoved = true
		s.peerMark = peerMark
	}
	return !s.descheduled && now-s.start < s.limit
}

// won: the completions came while spinning, at now.
func (p *spinPolicy) won(s *spin, now time.Duration) {
	if s.descheduled {
		p.set(p.window / 4)
	} else {
		p.set(max(p.window*2, (now-s.start)*2))
	}
}

// slept: the wait slept for slept (0: the completions were there before it could).
func (p *spinPolicy) slept(s *spin, slept time.Duration) {
	p.losses = min(p.losses+1, probeEvery)
	switch {
	case s.descheduled:
		p.set(p.window / 4)
	case slept < p.ceiling && s.peerMoved:
		p.set(p.window * 2)
	default:
		p.set(p.window / 2)
	}
}

func (p *spinPolicy) set(window time.Duration) {
	p.window = min(max(window, windowMin), p.ceiling)
}
