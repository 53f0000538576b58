package rdma

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ring protocol of shm-layout/src/ring/mod.rs, client side: the client
// produces the SQ and consumes the CQ. Indices are free-running u32s; a slot
// is index & (entries-1).
//
// Orderings. Go's sync/atomic operations are sequentially consistent (the Go
// memory model: all atomic operations behave as if executed in one total
// order, and each synchronizes with later ones it observes). So:
//   - publish: entries are written with plain stores, then the tail with
//     atomic.StoreUint32 — at least the Release store Rust uses;
//   - a peer index (CQ tail, SQ head) is read with atomic.LoadUint32 — at
//     least Acquire — before the slots it covers are copied;
//   - NEED_WAKEUP, submitter side: Rust does publish (Release), a SeqCst
//     fence, then loads sq_flags. Here the tail store and the sq_flags load
//     are both sequentially consistent atomics, which cannot be reordered
//     with each other: that pair is the full fence (on amd64 the store is an
//     XCHG, a locked instruction that drains the store buffer before the load).
//   - NEED_WAKEUP, sleeper side (waiting on the CQ): Rust stores cq_flags,
//     fences SeqCst and re-loads the CQ tail. Here the cq_flags store and the
//     CQ tail load are sequentially consistent atomics: the same full fence.
// With both sides fenced, either the engine sees our NEED_WAKEUP and wakes
// us, or we see its new tail and do not sleep (the Dekker argument of the
// ring module docs).

const (
	// waitSlice is the longest single futex sleep: the engine's liveness is
	// checked between slices, so a dead engine is noticed within this bound
	// (the Rust client's WAIT_SLICE).
	waitSlice = 50 * time.Millisecond
	// pollsPerClockRead: CQ polls between two clock reads while spinning.
	pollsPerClockRead = 32

	futexWait = 0
	futexWake = 1
)

// Completion is one reaped completion.
type Completion struct {
	// Tag is the caller's tag given at prepare.
	Tag uint64
	// Cqe is the entry as the engine posted it.
	Cqe Cqe
	// Buffer is the buffer the read was lent (nil for NOP and CANCEL); it
	// is the caller's again.
	Buffer *Buffer
}

// Err is nil for a successful completion, else its *CompletionError.
func (c *Completion) Err() error {
	if c.Cqe.Result >= 0 {
		return nil
	}
	return newCompletionError(c.Cqe)
}

// Source is which path served the read (SourceLocal, SourceRDMA, SourceHTTP, SourceStream, SourceNone).
func (c *Completion) Source() uint32 { return c.Cqe.Flags & SourceMask }

// Gzipped says the needle is stored gzip-compressed; the bytes are the stored ones.
func (c *Completion) Gzipped() bool { return c.Cqe.Flags&NeedleGzipped != 0 }

// Data is a successful read's data as a slice of the shared buffer (nil if
// the read failed or the engine placed it outside the buffer). The reuse
// rule of Buffer applies.
func (c *Completion) Data() []byte {
	if c.Cqe.Result < 0 || c.Buffer == nil {
		return nil
	}
	start := c.Cqe.DataOffset - c.Buffer.offset
	end := start + uint64(c.Cqe.Result)
	if c.Cqe.DataOffset < c.Buffer.offset || end < start || end > uint64(c.Buffer.length) {
		return nil
	}
	bytes := c.Buffer.Bytes()
	if bytes == nil {
		return nil
	}
	return bytes[start:end]
}

type inFlight struct {
	used   bool
	tag    uint64
	buffer *Buffer
}

// QueuePair is one queue pair of the region, taken for exclusive use
// (Client.TakeQueuePair): it is not safe for concurrent use; one goroutine
// drives it at a time. Give it back with Release.
type QueuePair struct {
	client *Client
	index  uint32

	sqTail, sqHead, sqFlags, cqTail, cqHead, cqFlags *uint32
	sq, cq                                           []byte
	sqEntries, cqEntries                             uint32

	// SQ producer: the next index to write, and the last head loaded.
	localTail, cachedHead uint32
	// CQ consumer: the next index to read, and the last tail loaded.
	localHead, cachedTail uint32

	// Slot table: user_data is generation<<32 | slot, so a stale or forged
	// completion is caught. The CQ holds twice the SQ: the most requests the
	// engine can have taken and not yet seen reaped.
	slots       []inFlight
	generations []uint32
	freeSlots   []uint32

	// spin is how long Wait spins before it sleeps, carried from wait to wait (spin.go).
	spin spinPolicy
}

func newQueuePair(c *Client, index uint32) *QueuePair {
	g := c.geometry
	control := g.QueueControlOffset(index)
	q := &QueuePair{
		client: c, index: index,
		sqTail: c.word(control + offsetSQTail), sqHead: c.word(control + offsetSQHead),
		sqFlags: c.word(control + offsetSQFlags), cqTail: c.word(control + offsetCQTail),
		cqHead: c.word(control + offsetCQHead), cqFlags: c.word(control + offsetCQFlags),
		sq:        c.mem[g.SQOffset(index) : g.SQOffset(index)+uint64(g.SQEntries)*SqeSizeBytes],
		cq:        c.mem[g.CQOffset(index) : g.CQOffset(index)+uint64(g.CQEntries())*CqeSizeBytes],
		sqEntries: g.SQEntries, cqEntries: g.CQEntries(),
		spin: newSpinPolicy(waitSpinMax),
	}
	q.localTail = atomic.LoadUint32(q.sqTail)
	q.cachedHead = q.localTail
	q.localHead = atomic.LoadUint32(q.cqHead)
	q.cachedTail = q.localHead
	capacity := g.CQEntries()
	q.slots = make([]inFlight, capacity)
	q.generations = make([]uint32, capacity)
	for slot := capacity; slot > 0; slot-- {
		q.freeSlots = append(q.freeSlots, slot-1)
	}
	return q
}

// Index is the queue pair's index in the region.
func (q *QueuePair) Index() uint32 { return q.index }

// InFlight is how many requests are prepared and not yet reaped.
func (q *QueuePair) InFlight() uint32 { return uint32(len(q.slots) - len(q.freeSlots)) }

// Capacity is the most requests that can be in flight at once.
func (q *QueuePair) Capacity() uint32 { return uint32(len(q.slots)) }

// sqFree is the free SQ slots, reloading the engine's head only when fewer
// than want are free by the cached value.
func (q *QueuePair) sqFree(want uint32) (uint32, error) {
	free := q.sqEntries - (q.localTail - q.cachedHead)
	if free >= want {
		return free, nil
	}
	head := atomic.LoadUint32(q.sqHead)
	if head-q.cachedHead > q.localTail-q.cachedHead {
		return 0, &ProtocolError{fmt.Sprintf("SQ head %d is outside [%d, %d]: it moved backwards or past the tail", head, q.cachedHead, q.localTail)}
	}
	q.cachedHead = head
	return q.sqEntries - (q.localTail - head), nil
}

// cqLoadTail loads the engine's CQ tail and checks it moved only forward and
// by at most a ring.
func (q *QueuePair) cqLoadTail() (uint32, error) {
	tail := atomic.LoadUint32(q.cqTail)
	count := tail - q.localHead
	if count > q.cqEntries || count < q.cachedTail-q.localHead {
		return 0, &ProtocolError{fmt.Sprintf("CQ tail %d is outside [%d, %d + entries]: it moved backwards or past the ring", tail, q.cachedTail, q.localHead)}
	}
	q.cachedTail = tail
	return count, nil
}

// cqAvailable is the completions published and not yet reaped.
func (q *QueuePair) cqAvailable() (uint32, error) {
	if cached := q.cachedTail - q.localHead; cached != 0 {
		return cached, nil
	}
	return q.cqLoadTail()
}

// push writes an entry into the next SQ slot, taking a slot of the table.
func (q *QueuePair) push(sqe Sqe, tag uint64, buffer *Buffer) error {
	if q.client == nil {
		return errReleased
	}
	if err := q.client.enter(); err != nil {
		return err
	}
	defer q.client.leave()
	if len(q.freeSlots) == 0 {
		return fmt.Errorf("rdma: %d requests are already in flight, the most this queue pair tracks", q.Capacity())
	}
	free, err := q.sqFree(1)
	if err != nil {
		return err
	}
	if free == 0 {
		return fmt.Errorf("rdma: the SQ is full; submit and reap before preparing more")
	}
	if buffer != nil {
		if err := buffer.lend(q.client); err != nil {
			return err
		}
	}
	slot := q.freeSlots[len(q.freeSlots)-1]
	q.freeSlots = q.freeSlots[:len(q.freeSlots)-1]
	sqe.UserData = uint64(q.generations[slot])<<32 | uint64(slot)
	offset := (q.localTail & (q.sqEntries - 1)) * SqeSizeBytes
	sqe.Encode(q.sq[offset : offset+SqeSizeBytes])
	q.localTail++
	q.slots[slot] = inFlight{used: true, tag: tag, buffer: buffer}
	return nil
}

// deadlineNs is ctx's deadline as CLOCK_MONOTONIC ns (0: the engine's default).
func deadlineNs(ctx context.Context) uint64 {
	deadline, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	left := time.Until(deadline)
	if left < 0 {
		left = 0
	}
	return monotonicNs() + uint64(left)
}

func monotonicNs() uint64 {
	var now unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
	return uint64(now.Nano())
}

// PrepareNop writes a NOP entry (visible to the engine at Submit).
func (q *QueuePair) PrepareNop(tag uint64) error {
	return q.push(Sqe{Opcode: OpNop}, tag, nil)
}

// PrepareRead writes an entry reading the whole needle fid into buffer,
// failing it if not served by deadlineNs (CLOCK_MONOTONIC; 0: the engine's
// default). The buffer is the engine's until the completion is reaped.
func (q *QueuePair) PrepareRead(fid FileID, buffer *Buffer, tag uint64, deadlineNs uint64) error {
	return q.push(readEntry(OpReadNeedle, fid, buffer, deadlineNs), tag, buffer)
}

// PrepareReadRange writes an entry reading length bytes at offset of the
// needle's stored data into buffer; as PrepareRead otherwise.
func (q *QueuePair) PrepareReadRange(fid FileID, offset, length uint64, buffer *Buffer, tag uint64, deadlineNs uint64) error {
	sqe := readEntry(OpReadRange, fid, buffer, deadlineNs)
	sqe.RangeOffset, sqe.RangeLength = offset, length
	return q.push(sqe, tag, buffer)
}

func readEntry(opcode uint8, fid FileID, buffer *Buffer, deadlineNs uint64) Sqe {
	return Sqe{
		Opcode: opcode, VolumeID: fid.VolumeID, NeedleID: fid.NeedleID, Cookie: fid.Cookie,
		BufferOffset: buffer.offset, BufferLength: buffer.length, DeadlineNs: deadlineNs,
	}
}

// PrepareCancel writes an entry canceling the in-flight request tagged
// target (a NOTHING_TO_CANCEL completion if there is none).
func (q *QueuePair) PrepareCancel(target, tag uint64) error {
	targetUserData := uint64(math.MaxUint64)
	for slot, entry := range q.slots {
		if entry.used && entry.tag == target {
			targetUserData = uint64(q.generations[slot])<<32 | uint64(slot)
			break
		}
	}
	return q.push(Sqe{Opcode: OpCancel, NeedleID: targetUserData}, tag, nil)
}

// Submit publishes every prepared entry with one store and wakes the engine
// if it announced it is going to sleep.
func (q *QueuePair) Submit() error {
	if q.client == nil {
		return errReleased
	}
	if err := q.client.enter(); err != nil {
		return err
	}
	defer q.client.leave()
	if err := q.client.usable(); err != nil {
		return err
	}
	// Sequentially consistent store then sequentially consistent load: the
	// full fence of the NEED_WAKEUP protocol (see the top of this file).
	atomic.StoreUint32(q.sqTail, q.localTail)
	if atomic.LoadUint32(q.sqFlags)&NeedWakeup != 0 {
		futex(q.sqTail, futexWake, 1, nil)
	}
	return nil
}

// Reap takes one completion off the CQ: ok is false when none is there. A
// completion that names no request in flight is a *ProtocolError.
func (q *QueuePair) Reap() (completion Completion, ok bool, err error) {
	if q.client == nil {
		return Completion{}, false, errReleased
	}
	if err := q.client.enter(); err != nil {
		return Completion{}, false, err
	}
	defer q.client.leave()
	available, err := q.cqAvailable()
	if err != nil || available == 0 {
		return Completion{}, false, err
	}
	offset := (q.localHead & (q.cqEntries - 1)) * CqeSizeBytes
	cqe := DecodeCqe(q.cq[offset : offset+CqeSizeBytes])
	q.localHead++
	atomic.StoreUint32(q.cqHead, q.localHead)
	slot := uint32(cqe.UserData)
	generation := uint32(cqe.UserData >> 32)
	if slot >= uint32(len(q.slots)) || !q.slots[slot].used || q.generations[slot] != generation {
		return Completion{}, false, &ProtocolError{fmt.Sprintf("completion for user_data %#x, which is not in flight", cqe.UserData)}
	}
	entry := q.slots[slot]
	q.slots[slot] = inFlight{}
	q.generations[slot] = generation + 1
	q.freeSlots = append(q.freeSlots, slot)
	if entry.buffer != nil {
		entry.buffer.giveBack()
	}
	return Completion{Tag: entry.tag, Cqe: cqe, Buffer: entry.buffer}, true, nil
}

// Wait blocks until at least count completions are ready to reap, ctx is
// done (its error is returned; the requests stay in flight) or the engine is
// gone (ErrEngineGone). It spins while spinning pays (spin.go: the window
// adapts to the last waits and ends early on a busy CPU), then sleeps on the
// CQ tail futex with NEED_WAKEUP set, in slices of at most 50 ms, checking
// between slices that the engine is alive.
func (q *QueuePair) Wait(ctx context.Context, count uint32) (uint32, error) {
	if q.client == nil {
		return 0, errReleased
	}
	if err := q.client.enter(); err != nil {
		return 0, err
	}
	defer q.client.leave()
	base := time.Now()
	s := q.spin.begin(0, q.engineProgress())
	spinning := true
	polls := uint32(0)
	for {
		ready, err := q.cqAvailable()
		if err != nil {
			return ready, err
		}
		if ready >= count {
			if spinning {
				q.spin.won(&s, time.Since(base))
			}
			return ready, nil
		}
		polls++
		if polls%pollsPerClockRead != 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return ready, err
		}
		if spinning {
			if atomic.LoadUint32(q.sqHead) == q.localTail {
				// The engine holds every request: it works for us.
				s.peerMoved = true
			}
			if q.spin.keepSpinning(&s, time.Since(base), q.engineProgress()) {
				continue
			}
		}
		if err := q.client.checkAlive(); err != nil {
			return ready, err
		}
		slice := waitSlice
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < slice {
			slice = max(time.Until(deadline), 0)
		}
		slept, err := q.sleepOnce(slice, count)
		if err != nil {
			return ready, err
		}
		if spinning {
			// The first sleep tells the policy how the spin went.
			q.spin.slept(&s, slept)
			spinning = false
		}
	}
}

// engineProgress is a mark that changes when the engine takes requests or
// posts completions.
func (q *QueuePair) engineProgress() uint32 {
	return atomic.LoadUint32(q.sqHead) + atomic.LoadUint32(q.cqTail)
}

// sleepOnce sleeps at most slice until the CQ holds wanted completions or the
// engine posts; it returns how long it slept (0 if they were there before it could).
func (q *QueuePair) sleepOnce(slice time.Duration, wanted uint32) (time.Duration, error) {
	// Sequentially consistent store then load: the full fence of the
	// NEED_WAKEUP protocol (see the top of this file).
	atomic.StoreUint32(q.cqFlags, NeedWakeup)
	available, err := q.cqLoadTail()
	slept := time.Duration(0)
	if err == nil && available < max(wanted, 1) {
		timeout := unix.NsecToTimespec(int64(slice))
		start := time.Now()
		futex(q.cqTail, futexWait, q.localHead+available, &timeout)
		slept = time.Since(start)
	}
	atomic.StoreUint32(q.cqFlags, 0)
	return slept, err
}

// futex calls FUTEX_WAIT or FUTEX_WAKE on a word of the shared region (the
// shared, not private, operations: the peer is another process). A wait
// that ends for any reason (woken, value changed, timed out, interrupted)
// returns; the caller re-checks its state.
func futex(word *uint32, op int, value uint32, timeout *unix.Timespec) {
	// The word is in the region's mapping (not Go's heap) and stays mapped
	// while the Client is open; the kernel reads it and the timespec only
	// during the call.
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), uintptr(op), uintptr(value),
		uintptr(unsafe.Pointer(timeout)), 0, 0)
}

// drain reaps until nothing is in flight, waiting at most timeout (0: only
// what is there now; liveness checked); it reports whether the queue pair is
// clean, or why it cannot be (the engine is gone, a completion is not valid).
// Completions are dropped (their buffers given back).
func (q *QueuePair) drain(timeout time.Duration) (bool, error) {
	if q.InFlight() == 0 {
		return true, nil // the common case: no context, no timer
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for q.InFlight() > 0 {
		for {
			_, ok, err := q.Reap()
			if err != nil {
				return false, err
			}
			if !ok {
				break
			}
		}
		if q.InFlight() == 0 {
			break
		}
		if _, err := q.Wait(ctx, 1); err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
	}
	return true, nil
}

// drainSlice is how long a released queue pair's drainer waits at a time
// before it checks the engine is still there.
const drainSlice = time.Second

// Release gives the queue pair back to its Client, at once. A queue pair
// with requests still in flight (a read whose deadline passed while the
// engine was stalled, say) is drained in the background and goes back to
// the pool when the engine has answered them, so a stall costs latency,
// never a queue pair; meanwhile their buffers stay the engine's. Only when
// the engine is gone are they kept out of use for the region's life (the
// engine may have written into them up to its end).
func (q *QueuePair) Release() {
	if q.client == nil {
		return
	}
	c := q.client
	// A fresh handle goes back to the pool; this one stays released, so a
	// caller that keeps it cannot race the next taker.
	fresh := *q
	q.client = nil
	if clean, err := fresh.drain(0); clean {
		c.giveBack(&fresh)
		return
	} else if err != nil {
		fresh.strandInFlight()
		return
	}
	go fresh.drainThenGiveBack()
}

// drainThenGiveBack drains a released queue pair for as long as the engine
// lives and the client is open, then gives it back; it strands the buffers
// of requests the engine never answered.
func (q *QueuePair) drainThenGiveBack() {
	// Bounded by the engine: it answers every request it took, or it is
	// gone (checkAlive) and the loop ends; and by Close, which it never
	// outlasts by more than a slice (it counts as a user of the mapping).
	c := q.client
	for {
		if c.enter() != nil {
			return // closed: the region and its buffers go with it
		}
		clean, err := q.drain(drainSlice)
		if err == nil && !clean {
			err = c.checkAlive()
		}
		if err != nil {
			q.strandInFlight()
		}
		c.leave()
		if clean {
			c.giveBack(q)
		}
		if clean || err != nil {
			return
		}
	}
}

// strandInFlight keeps the buffers of requests still in flight out of the
// allocator for the region's life (the engine may still write into them).
func (q *QueuePair) strandInFlight() {
	for _, entry := range q.slots {
		if entry.used && entry.buffer != nil {
			entry.buffer.strand()
		}
	}
}

var errReleased = fmt.Errorf("rdma: the queue pair was released")
