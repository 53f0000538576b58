package rdma

import (
	"fmt"
	"sort"
	"sync"
)

// unitBytes is the allocation granularity: one cache line, so buffers never share one.
const unitBytes = 64

// span is a run of free units.
type span struct{ start, length uint64 }

// allocator is a first-fit allocator over the buffer area's units, with
// neighbouring free spans merged. Reads are few and buffers large, so a
// sorted list is enough.
type allocator struct {
	mu   sync.Mutex
	free []span
}

func newAllocator(bufferSizeBytes uint64) *allocator {
	return &allocator{free: []span{{0, bufferSizeBytes / unitBytes}}}
}

func (a *allocator) allocate(units uint64) (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.free {
		if a.free[i].length >= units {
			start := a.free[i].start
			a.free[i].start += units
			a.free[i].length -= units
			if a.free[i].length == 0 {
				a.free = append(a.free[:i], a.free[i+1:]...)
			}
			return start, true
		}
	}
	return 0, false
}

func (a *allocator) release(start, units uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].start > start })
	a.free = append(a.free, span{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = span{start, units}
	if i+1 < len(a.free) && a.free[i].start+a.free[i].length == a.free[i+1].start {
		a.free[i].length += a.free[i+1].length
		a.free = append(a.free[:i+1], a.free[i+2:]...)
	}
	if i > 0 && a.free[i-1].start+a.free[i-1].length == a.free[i].start {
		a.free[i-1].length += a.free[i].length
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
}

// bufferState is what a Buffer may be used for now.
type bufferState int

const (
	bufferHeld     bufferState = iota // the caller's: readable, can be lent to a read
	bufferLent                        // lent to the engine until its completion is reaped
	bufferFreed                       // back in the allocator
	bufferStranded                    // lent to a read whose completion will never be reaped: never reused
)

// Buffer is a range of the region's buffer area.
//
// Reuse rule: a Buffer handed to a read (QueuePair.PrepareRead*) belongs to
// the engine until that read's Completion is reaped; until then Bytes
// returns nil and the Buffer cannot be lent again or freed (Free defers the
// freeing to the reap). After the reap the bytes are the caller's until it
// lends the Buffer again, frees it or closes the Client: a slice from Bytes
// or Completion.Data must not be used after any of those.
type Buffer struct {
	client *Client
	offset uint64 // from the start of the buffer area
	length uint32
	units  uint64
	mu     sync.Mutex
	state  bufferState
	// freeOnReap: Free was called while the buffer was lent.
	freeOnReap bool
}

// Allocate reserves lengthBytes (at least 1) in the buffer area.
func (c *Client) Allocate(lengthBytes uint32) (*Buffer, error) {
	if lengthBytes == 0 || lengthBytes > MaxBufferLengthBytes {
		return nil, fmt.Errorf("rdma: a buffer of %d bytes is not between 1 and %d", lengthBytes, MaxBufferLengthBytes)
	}
	units := (uint64(lengthBytes) + unitBytes - 1) / unitBytes
	start, ok := c.allocator.allocate(units)
	if !ok {
		return nil, fmt.Errorf("%w: %d bytes asked, the area holds %d", ErrNoBufferSpace, lengthBytes, c.geometry.BufferSizeBytes)
	}
	return &Buffer{client: c, offset: start * unitBytes, length: lengthBytes, units: units}, nil
}

// Offset is the buffer's offset from the start of the buffer area.
func (b *Buffer) Offset() uint64 { return b.offset }

// Len is the buffer's length in bytes.
func (b *Buffer) Len() uint32 { return b.length }

// Bytes is the buffer's memory in the shared region (nil while the buffer is
// lent to the engine or after it is freed). See the reuse rule on Buffer.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != bufferHeld {
		return nil
	}
	return b.client.bufferBytes(b.offset, uint64(b.length))
}

// Free returns the buffer to the allocator; a buffer still lent is freed when
// its completion is reaped (never before).
func (b *Buffer) Free() {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case bufferHeld:
		b.state = bufferFreed
		b.client.allocator.release(b.offset/unitBytes, b.units)
	case bufferLent:
		b.freeOnReap = true
	}
}

// lend marks the buffer as the engine's; it fails if it is not the caller's now.
func (b *Buffer) lend(c *Client) error {
	if b.client != c {
		return fmt.Errorf("rdma: the buffer belongs to another client")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != bufferHeld {
		return fmt.Errorf("rdma: the buffer is lent to another read or freed; it can be lent only after its completion")
	}
	b.state = bufferLent
	return nil
}

// giveBack is the buffer's return at its completion's reap.
func (b *Buffer) giveBack() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state = bufferHeld
	if b.freeOnReap {
		b.state = bufferFreed
		b.client.allocator.release(b.offset/unitBytes, b.units)
	}
}

// strand keeps a lent buffer out of the allocator for the region's life: its
// read's completion will not be reaped, so the engine may still write into it.
func (b *Buffer) strand() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state = bufferStranded
}
