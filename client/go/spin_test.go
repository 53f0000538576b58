package rdma

import (
	"testing"
	"time"
)

// spinUntilSleep spins from start, looking every step, until the policy says
// sleep; it returns the wait and when it stopped.
func spinUntilSleep(p *spinPolicy, start, step time.Duration, mark func(time.Duration) uint32) (spin, time.Duration) {
	s := p.begin(start, mark(start))
	now := start
	for { // bounded: the window is at most the ceiling
		now += step
		if !p.keepSpinning(&s, now, mark(now)) {
			return s, now
		}
	}
}

func TestSpinWindowShrinksWhenThePeerMovesOnlyAfterWeSleepAndWinsGrowItBack(t *testing.T) {
	p := newSpinPolicy(50 * time.Microsecond)
	still := func(time.Duration) uint32 { return 7 }
	for range 16 {
		s, _ := spinUntilSleep(&p, time.Microsecond, 500*time.Nanosecond, still)
		p.slept(&s, 3*time.Microsecond)
	}
	if p.window != windowMin {
		t.Fatalf("window %v after 16 waits the peer answered only once we slept, want %v", p.window, windowMin)
	}
	var windows []time.Duration
	for range 5 {
		s := p.begin(0, 0)
		p.won(&s, 500*time.Nanosecond)
		windows = append(windows, p.window)
	}
	want := []time.Duration{4, 8, 16, 32, 50}
	for i := range want {
		if windows[i] != want[i]*time.Microsecond {
			t.Fatalf("windows after wins %v, want %v µs", windows, want)
		}
	}
}

func TestSpinWindowQuartersWhenDescheduledAndGrowsForAPeerThatMoved(t *testing.T) {
	p := newSpinPolicy(50 * time.Microsecond)
	s := p.begin(0, 0)
	if p.keepSpinning(&s, descheduledGap+time.Nanosecond, 0) {
		t.Fatal("a gap over descheduledGap must end the spin")
	}
	p.won(&s, 30*time.Microsecond)
	if p.window != 12500*time.Nanosecond {
		t.Fatalf("window %v after a descheduled spin, want 12.5µs", p.window)
	}
	moving := func(now time.Duration) uint32 { return uint32(now / time.Microsecond) }
	s, _ = spinUntilSleep(&p, 0, 500*time.Nanosecond, moving)
	p.slept(&s, 5*time.Microsecond)
	if p.window != 25*time.Microsecond {
		t.Fatalf("window %v after a short sleep with the peer moving, want 25µs", p.window)
	}
	s, _ = spinUntilSleep(&p, 0, 500*time.Nanosecond, moving)
	p.slept(&s, 2*time.Millisecond)
	if p.window != 12500*time.Nanosecond {
		t.Fatalf("window %v after a long sleep, want 12.5µs", p.window)
	}
}

func TestSpinProbesEverySoManyLostWaits(t *testing.T) {
	p := newSpinPolicy(200 * time.Microsecond)
	still := func(time.Duration) uint32 { return 7 }
	var probes []int
	for i := range probeEvery + 2 {
		s, stopped := spinUntilSleep(&p, 0, 500*time.Nanosecond, still)
		p.slept(&s, 3*time.Microsecond)
		if stopped >= probeWindow {
			probes = append(probes, i)
		}
	}
	// The first waits spin the shrinking window down from 200 µs; then one probe.
	if len(probes) != 4 || probes[3] != probeEvery {
		t.Fatalf("waits that spun ≥ %v: %v, want [0 1 2 %d]", probeWindow, probes, probeEvery)
	}
	s := p.begin(0, 0)
	p.won(&s, 9*time.Microsecond)
	if p.window != 18*time.Microsecond {
		t.Fatalf("window %v after a win that took 9µs, want 18µs", p.window)
	}
}
