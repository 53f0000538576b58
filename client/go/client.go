// Package rdma is the Go client of the seaweedfs-rdma engine: it attaches a
// shared-memory region through the engine's control socket and reads
// SeaweedFS needles through the region's lock-free rings, speaking exactly
// the bytes of the Rust layout (shm-layout). Pure Go: no cgo.
//
//	reader, err := rdma.OpenReader("/run/rdma.sock", rdma.ReaderOptions{})
//	...
//	defer reader.Close()
//	data, err := reader.ReadFileID(ctx, "3,01637037d6")
//	if errors.Is(err, rdma.ErrNoSuchNeedle) { ... }
//
// A Reader attaches again by itself when its engine restarts; a Client
// (Attach) is one attachment and dies with its engine.
// ReadFileID and ReadRange are safe for concurrent use by many goroutines:
// each takes one of the client's queue pairs for the time of its read. The
// zero-copy layer underneath (Allocate, TakeQueuePair, Prepare*, Submit,
// Reap, Wait) hands out the bytes in place, under the reuse rule on Buffer.
package rdma

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options are what a client asks for at Attach. Zero values mean defaults.
type Options struct {
	// QueuePairs is how many queue pairs the region has (default 4, the
	// engine's default limit); concurrent reads spread over them.
	QueuePairs uint32
	// SQEntries per queue pair: a power of two (default 128).
	SQEntries uint32
	// BufferBytes is the buffer area's size, rounded up to 4096 (default
	// 16 MiB). It bounds the largest needle ReadFileID can read.
	BufferBytes uint64
	// Name is shown in the engine's logs and ringstat (default: the program name).
	Name string
}

const (
	defaultQueuePairs  = 4
	defaultSQEntries   = 128
	defaultBufferBytes = 16 << 20
)

func (o Options) withDefaults() Options {
	if o.QueuePairs == 0 {
		o.QueuePairs = defaultQueuePairs
	}
	if o.SQEntries == 0 {
		o.SQEntries = defaultSQEntries
	}
	if o.BufferBytes == 0 {
		o.BufferBytes = defaultBufferBytes
	}
	o.BufferBytes = roundUp(o.BufferBytes, PageSizeBytes)
	if o.Name == "" {
		o.Name = filepath.Base(os.Args[0])
	}
	return o
}

// Client is an attachment to an engine: one region, its queue pairs and its
// buffer area. Safe for concurrent use.
type Client struct {
	fd          int
	mem         []byte
	description RegionDescription
	geometry    Geometry
	allocator   *allocator
	// pool holds the queue pairs nobody has taken.
	pool chan *QueuePair

	// users counts calls that touch the mapping now (enter/leave); Close
	// unmaps only once it is zero. A counter, not a lock: calls nest.
	users  atomic.Int64
	closed atomic.Bool
	gone   atomic.Bool
	// dead is closed when the client is closed or the engine is known gone,
	// waking goroutines that wait for a queue pair.
	dead     chan struct{}
	deadOnce sync.Once
}

// Attach connects to the engine's control socket at socketPath and attaches
// a new region. The connection stays open until Close: the engine reclaims
// the region when it closes, however the process ends.
func Attach(socketPath string, opts Options) (*Client, error) {
	opts = opts.withDefaults()
	fd, err := connect(socketPath)
	if err != nil {
		return nil, err
	}
	client, err := attachOn(fd, opts)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return client, nil
}

func attachOn(fd int, opts Options) (*Client, error) {
	request := map[string]attachRequest{"Attach": {
		LayoutVersion: LayoutVersion, QueuePairs: opts.QueuePairs, SQEntries: opts.SQEntries,
		BufferSizeBytes: opts.BufferBytes, ClientName: opts.Name,
	}}
	if err := sendMessage(fd, request); err != nil {
		return nil, err
	}
	answer, fds, err := receiveResponse(fd)
	if err != nil {
		return nil, err
	}
	defer closeAll(fds)
	switch {
	case answer.Refused != nil:
		return nil, fmt.Errorf("rdma: the engine refused to attach: %s", answer.Refused.Reason)
	case answer.Attached == nil:
		return nil, errors.New("rdma: the engine answered with a message that does not fit the request")
	case len(fds) != 1:
		return nil, fmt.Errorf("rdma: control message carried %d file descriptors, expected 1", len(fds))
	}
	size := answer.Attached.RegionSizeBytes
	if size < PageSizeBytes || size > uint64(MaxBufferSizeBytes)*2 {
		return nil, fmt.Errorf("rdma: the engine named a region of %d bytes, which cannot be one", size)
	}
	mem, err := unix.Mmap(fds[0], 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("rdma: cannot map the region of %d bytes: %w", size, err)
	}
	description := DecodeRegionDescription(mem[:RegionDescriptionSizeBytes])
	geometry, err := description.Validate(size)
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("rdma: the region the engine handed over is not usable: %w", err)
	}
	if err := confirmMapped(fd, answer.Attached.RegionID); err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	c := &Client{
		fd: fd, mem: mem, description: description, geometry: geometry,
		allocator: newAllocator(geometry.BufferSizeBytes),
		pool:      make(chan *QueuePair, geometry.QueuePairCount),
		dead:      make(chan struct{}),
	}
	for index := uint32(0); index < geometry.QueuePairCount; index++ {
		c.pool <- newQueuePair(c, index)
	}
	return c, nil
}

// Description is the region's description as the engine wrote it (validated at Attach).
func (c *Client) Description() RegionDescription { return c.description }

// Close detaches: calls running on other goroutines fail with ErrClosed
// (within one 50 ms wait slice), then it unmaps the region and closes the
// control connection (the engine then reclaims the region). Slices of the
// region (Buffer.Bytes, Completion.Data) must not be used after it.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.markDead()
	// Sequentially consistent atomics: a call either saw closed in enter
	// or is counted in users here.
	for c.users.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	errUnmap := unix.Munmap(c.mem)
	errClose := unix.Close(c.fd)
	return errors.Join(errUnmap, errClose)
}

// enter counts a call that touches the mapping, unless the client is closed.
func (c *Client) enter() error {
	c.users.Add(1)
	if c.closed.Load() {
		c.users.Add(-1)
		return ErrClosed
	}
	return nil
}

func (c *Client) leave() { c.users.Add(-1) }

func (c *Client) markDead() { c.deadOnce.Do(func() { close(c.dead) }) }

// word is the u32 at offset of the region, for sync/atomic.
func (c *Client) word(offset uint64) *uint32 {
	// The offsets come from the validated geometry (inside the mapping) and
	// are 4-aligned; the mapping outlives every use (Close waits for users).
	return (*uint32)(unsafe.Pointer(&c.mem[offset]))
}

// bufferBytes is length bytes at offset of the buffer area.
func (c *Client) bufferBytes(offset, length uint64) []byte {
	start := c.geometry.BufferOffset + offset
	return c.mem[start : start+length : start+length]
}

// usable fails once the client is closed or the engine is known gone.
func (c *Client) usable() error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.gone.Load() {
		return ErrEngineGone
	}
	return nil
}

// checkAlive reads the engine's state words and polls the control socket:
// the engine never sends unprompted, so readable means EOF (the engine died).
func (c *Client) checkAlive() error {
	if err := c.usable(); err != nil {
		return err
	}
	if atomic.LoadUint32(c.word(offsetRegState)) == RegionFenced {
		reason := atomic.LoadUint32(c.word(offsetFence))
		return &ProtocolError{fmt.Sprintf("the engine fenced this client off (reason %d)", reason)}
	}
	if atomic.LoadUint32(c.word(offsetEngState)) == EngineStopped {
		c.gone.Store(true)
		c.markDead()
		return fmt.Errorf("%w: the engine stopped (shutdown)", ErrEngineGone)
	}
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
		c.gone.Store(true)
		c.markDead()
		return fmt.Errorf("%w: its control connection closed", ErrEngineGone)
	}
	return nil
}

// TakeQueuePair takes a queue pair for exclusive use, waiting while all
// are taken (at most until ctx is done, the client is closed or the engine
// is gone). Give it back with Release.
func (c *Client) TakeQueuePair(ctx context.Context) (*QueuePair, error) {
	if err := c.usable(); err != nil {
		return nil, err
	}
	select {
	case q := <-c.pool:
		return q, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.dead:
		return nil, c.usable()
	}
}

func (c *Client) giveBack(q *QueuePair) {
	c.pool <- q
}

// QueuePairStats are the engine's counters of one queue pair (written by the
// engine once per batch; read here with atomic loads).
type QueuePairStats struct {
	SQEsTaken      uint64
	CQEsPosted     uint64
	Errors         uint64
	InvalidEntries uint64
	BytesRead      uint64
	Sleeps         uint64
	ClientWakeups  uint64
	InFlight       uint64
}

// statsFieldOffsets are the offsets of QueuePairStats' fields in a stats
// block, in field order.
var statsFieldOffsets = [8]uint64{0, 8, 16, 24, 32, 40, 48, 56}

// Stats reads queue pair index's counters.
func (c *Client) Stats(index uint32) (QueuePairStats, error) {
	if err := c.enter(); err != nil {
		return QueuePairStats{}, err
	}
	defer c.leave()
	if index >= c.geometry.QueuePairCount {
		return QueuePairStats{}, fmt.Errorf("rdma: queue pair %d does not exist (the region has %d)", index, c.geometry.QueuePairCount)
	}
	base := c.geometry.StatsEntryOffset(index)
	var values [8]uint64
	for i, offset := range statsFieldOffsets {
		// 8-aligned: stats blocks are 128-aligned in a page-aligned part.
		values[i] = atomic.LoadUint64((*uint64)(unsafe.Pointer(&c.mem[base+offset])))
	}
	return QueuePairStats{values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7]}, nil
}
