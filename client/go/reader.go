package rdma

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Reader reads needles by file id from any number of goroutines and keeps
// doing so across engine restarts: a Client is one attachment, and dies with
// its engine; a Reader attaches again by itself (a keeper goroutine, every
// RetryInterval) and swaps the new Client in. Reads issued meanwhile wait
// for the new engine until their context is done; a read that the dying
// engine took with it is resubmitted once on the new one (reads are
// idempotent). So an engine upgrade or crash costs a Reader's callers
// latency, not errors. A Reader opened before its engine waits for it
// (EngineWait): in a pod, containers start in any order.
//
//	reader, err := rdma.OpenReader("/run/rdma.sock", rdma.ReaderOptions{})
//	...
//	defer reader.Close()
//	data, err := reader.ReadFileID(ctx, "3,01637037d6")
type Reader struct {
	socket  string
	options ReaderOptions
	current atomic.Pointer[Client]
	// attachMu serialises attaching (the keeper's and a waiting read's).
	attachMu sync.Mutex
	closed   atomic.Bool
	done     chan struct{}
	keeper   sync.WaitGroup
}

// ReaderOptions are a Reader's settings. Zero values mean defaults.
type ReaderOptions struct {
	// Options is the region asked for at each attach.
	Options
	// EngineWait bounds how long OpenReader waits for an engine that is not
	// there yet (default 60 s).
	EngineWait time.Duration
	// RetryInterval is how often a lost engine is attached again (default 100 ms).
	RetryInterval time.Duration
	// NoReattach turns re-attaching off: after the engine goes, every read
	// fails with ErrEngineGone, as on a Client.
	NoReattach bool
}

const (
	defaultEngineWait    = 60 * time.Second
	defaultRetryInterval = 100 * time.Millisecond
)

// ErrNoEngine is returned by a Reader's read whose context ended while no
// engine was attached (it is restarting, or not started yet): retryable.
var ErrNoEngine = errors.New("rdma: no engine is attached (it is restarting, or not started yet)")

// OpenReader attaches to the engine at socketPath, waiting for it at most
// options.EngineWait, and starts the keeper.
func OpenReader(socketPath string, options ReaderOptions) (*Reader, error) {
	if options.EngineWait == 0 {
		options.EngineWait = defaultEngineWait
	}
	if options.RetryInterval == 0 {
		options.RetryInterval = defaultRetryInterval
	}
	r := &Reader{socket: socketPath, options: options, done: make(chan struct{})}
	deadline := time.Now().Add(options.EngineWait)
	for {
		client, err := Attach(socketPath, options.Options)
		if err == nil {
			r.current.Store(client)
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("rdma: no engine answered on %s within %v: %w", socketPath, options.EngineWait, err)
		}
		time.Sleep(options.RetryInterval)
	}
	if !options.NoReattach {
		r.keeper.Add(1)
		go r.keep()
	}
	return r, nil
}

// ReadFileID is Client.ReadFileID on the engine attached now, waiting for
// one while none is (until ctx is done: ErrNoEngine).
func (r *Reader) ReadFileID(ctx context.Context, fid string) ([]byte, error) {
	return r.read(ctx, func(c *Client) ([]byte, error) { return c.ReadFileID(ctx, fid) })
}

// ReadRange is Client.ReadRange on the engine attached now, waiting for one
// while none is (until ctx is done: ErrNoEngine).
func (r *Reader) ReadRange(ctx context.Context, fid string, offset, length uint64) ([]byte, error) {
	return r.read(ctx, func(c *Client) ([]byte, error) { return c.ReadRange(ctx, fid, offset, length) })
}

// Client is the attachment in use now (nil once closed); for the zero-copy
// layer. Its buffers and queue pairs die with its engine.
func (r *Reader) Client() *Client { return r.current.Load() }

// Connected reports whether an engine is attached and alive.
func (r *Reader) Connected() bool {
	client := r.current.Load()
	return client != nil && client.checkAlive() == nil
}

// Close stops the keeper and detaches. Reads running on other goroutines
// fail with ErrClosed.
func (r *Reader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	close(r.done)
	r.keeper.Wait()
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	if client := r.current.Swap(nil); client != nil {
		return client.Close()
	}
	return nil
}

// read runs one read on a live client, resubmitting it once if the engine
// went away under it (its connection closed, or it answered SHUTDOWN).
func (r *Reader) read(ctx context.Context, read func(*Client) ([]byte, error)) ([]byte, error) {
	resubmitted := false
	for {
		client, err := r.liveClient(ctx)
		if err != nil {
			return nil, err
		}
		data, err := read(client)
		var completion *CompletionError
		shutdown := errors.As(err, &completion) && completion.Code == CodeShutdown
		if (errors.Is(err, ErrEngineGone) || shutdown) && !r.options.NoReattach && !resubmitted && ctx.Err() == nil {
			if shutdown {
				// The engine is on its way out: wait for the next one rather
				// than meet this one's refusals again.
				client.gone.Store(true)
				client.markDead()
			}
			resubmitted = true
			continue
		}
		return data, err
	}
}

// liveClient is the attached client, unless its engine is known gone (two
// atomic loads: the keeper polls the engine's socket, a read's wait finds a
// dead engine within a slice, and a read that meets one is resubmitted); it
// waits for the keeper to attach a new one until ctx is done.
func (r *Reader) liveClient(ctx context.Context) (*Client, error) {
	const poll = 5 * time.Millisecond
	for {
		if r.closed.Load() {
			return nil, ErrClosed
		}
		client := r.current.Load()
		if client != nil && (r.options.NoReattach || client.usable() == nil) {
			return client, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNoEngine, ctx.Err())
		case <-r.done:
			return nil, ErrClosed
		case <-time.After(poll):
		}
	}
}

// keep watches the engine and attaches again when it is gone, until Close.
func (r *Reader) keep() {
	defer r.keeper.Done()
	ticker := time.NewTicker(r.options.RetryInterval)
	defer ticker.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-ticker.C:
		}
		client := r.current.Load()
		if client != nil && client.checkAlive() == nil {
			continue
		}
		replacement, err := Attach(r.socket, r.options.Options)
		if err != nil {
			continue // no engine yet: try again next tick
		}
		r.attachMu.Lock()
		if r.closed.Load() {
			r.attachMu.Unlock()
			replacement.Close()
			return
		}
		old := r.current.Swap(replacement)
		r.attachMu.Unlock()
		if old != nil {
			// Its reads fail with ErrEngineGone within a wait slice (and
			// are resubmitted on the replacement); Close waits for them.
			go old.Close()
		}
	}
}
