package rdma

import "time"

// Adaptive spinning, the policy of the Rust client and the engine's poller
// (rdma_ipc::spin in the Rust workspace): Wait spins only while spinning
// pays, deciding from what its last waits cost. The window moves after each
// wait:
//   - the completions came while spinning: it doubles (at least windowMin);
//   - the goroutine was descheduled while spinning (two looks at the clock
//     more than descheduledGap apart): it quarters;
//   - Wait slept and the completions came soon after (within the ceiling)
//     although the engine moved while we spun: it doubles;
//   - Wait slept and the engine did not move while we spun (it ran only once
//     we stopped: we held its CPU), or slept long (the engine was idle): it halves.
//
// A window below windowMin is 0: Wait sleeps at its first look at the clock.

const (
	// descheduledGap: a longer gap between two looks at the clock of a
	// spinning waiter means it was not running.
	descheduledGap = 20 * time.Microsecond
	// windowMin: the smallest window that is not 0, about two round trips
	// between two running processes.
	windowMin = 2 * time.Microsecond
	// waitSpinMax is the longest Wait spins before it sleeps (the Rust
	// client's WAIT_SPIN_MAX).
	waitSpinMax = 200 * time.Microsecond
)

// spinPolicy is one waiter's spin window, carried from wait to wait.
type spinPolicy struct {
	ceiling, window time.Duration
}

// spin is one wait in progress.
type spin struct {
	start, lastLook time.Duration
	peerMark        uint32
	peerMoved       bool
	descheduled     bool
}

func newSpinPolicy(ceiling time.Duration) spinPolicy {
	return spinPolicy{ceiling: ceiling, window: ceiling}
}

func (p *spinPolicy) begin(now time.Duration, peerMark uint32) spin {
	return spin{start: now, lastLook: now, peerMark: peerMark}
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
	return !s.descheduled && now-s.start < p.window
}

// won: the completions came while spinning.
func (p *spinPolicy) won(s *spin) {
	if s.descheduled {
		p.setBelow(p.window / 4)
	} else {
		p.double()
	}
}

// slept: the wait slept for slept (0: the completions were there before it could).
func (p *spinPolicy) slept(s *spin, slept time.Duration) {
	switch {
	case s.descheduled:
		p.setBelow(p.window / 4)
	case slept < p.ceiling && s.peerMoved:
		p.double()
	default:
		p.setBelow(p.window / 2)
	}
}

func (p *spinPolicy) double() {
	p.window = min(max(p.window*2, windowMin), p.ceiling)
}

func (p *spinPolicy) setBelow(window time.Duration) {
	if window < windowMin {
		window = 0
	}
	p.window = window
}
