package rdma_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rdma "github.com/seaweedfs-rdma/client/go"
)

// sameAsCat checks that the Go client's answer is rdma-cat's: the same bytes,
// or an error naming the same code.
func sameAsCat(t *testing.T, what string, reference catResult, data []byte, err error) {
	t.Helper()
	if reference.code == 0 {
		if err != nil {
			t.Errorf("%s: rdma-cat read %d bytes, the Go client failed: %v", what, len(reference.stdout), err)
		} else if !bytes.Equal(data, reference.stdout) {
			t.Errorf("%s: the Go client read %d bytes, rdma-cat %d, and they differ", what, len(data), len(reference.stdout))
		}
		return
	}
	var completionError *rdma.CompletionError
	switch {
	case err == nil:
		t.Errorf("%s: rdma-cat failed (%s), the Go client read %d bytes", what, strings.TrimSpace(reference.stderr), len(data))
	case errors.As(err, &completionError):
		if !strings.Contains(reference.stderr, completionError.Name+" (") {
			t.Errorf("%s: the Go client failed with %v, rdma-cat with %s", what, err, reference.stderr)
		}
	case errors.Is(err, rdma.ErrRangeNotSatisfiable):
		if !strings.Contains(reference.stderr, "RANGE_OUT_OF_BOUNDS") {
			t.Errorf("%s: the Go client says the range is not satisfiable, rdma-cat %s", what, reference.stderr)
		}
	default:
		t.Errorf("%s: the Go client failed with %v, rdma-cat with %s", what, err, reference.stderr)
	}
}

func submittedEntries(t *testing.T, client *rdma.Client) uint64 {
	t.Helper()
	total := uint64(0)
	for index := uint32(0); index < client.Description().QueuePairCount; index++ {
		stats, err := client.Stats(index)
		if err != nil {
			t.Fatal(err)
		}
		total += stats.SQEsTaken
	}
	return total
}

// Every needle of SeaweedFS's fixture volumes and of a generated one, read
// whole, in ranges, with a wrong cookie, deleted and corrupted: the Go
// client answers exactly what rdma-cat answers.
func TestEveryNeedleReadsAsRdmaCatReadsIt(t *testing.T) {
	cat := binaryPath(t, "RDMA_CAT")
	dir := t.TempDir()
	installFixture(t, dir, "healthy_volume", 1)
	installFixture(t, dir, "legacy_crc_volume", 2)
	installFixture(t, dir, "bitrot_volume", 3)
	// 1.5 MiB is more than the first buffer: BUFFER_TOO_SMALL, then a retry.
	generated := generateVolume(t, dir, 4, 40, "1,100,4096,70000,1572864")
	e := startEngine(t, dir)
	client, err := rdma.Attach(e.socket, rdma.Options{QueuePairs: 2, BufferBytes: 64 << 20, Name: "go-live-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	read, crcFailures, gone := map[uint32]int{}, [][2]uint64{}, 0
	served := map[string][]byte{}
	for volumeID := uint32(1); volumeID <= 4; volumeID++ {
		for _, n := range indexedNeedles(t, dir, volumeID) {
			fid := n.fid.String()
			data, err := client.ReadFileID(ctx, fid)
			sameAsCat(t, fid, rdmaCat(t, cat, e.socket, fid), data, err)
			switch {
			case err == nil:
				read[volumeID]++
				served[fid] = data
				if !n.live {
					t.Errorf("%s: deleted in the index, read %d bytes", fid, len(data))
				}
			case errors.Is(err, rdma.ErrCRCMismatch):
				crcFailures = append(crcFailures, [2]uint64{uint64(volumeID), n.fid.NeedleID})
			case errors.Is(err, rdma.ErrDeleted) || errors.Is(err, rdma.ErrNoSuchNeedle):
				gone++
				if n.live {
					t.Errorf("%s: live in the index, the Go client says %v", fid, err)
				}
			default:
				t.Errorf("%s: %v", fid, err)
			}
		}
	}
	// healthy: 7 live; legacy: 298; bitrot: the same 7, of which 0x3 and 0x30
	// carry the damaged bytes; generated: all.
	if want := map[uint32]int{1: 7, 2: 298, 3: 5, 4: len(generated)}; !reflect.DeepEqual(read, want) {
		t.Errorf("needles read per volume: %v, want %v", read, want)
	}
	if want := [][2]uint64{{3, 0x3}, {3, 0x30}}; !reflect.DeepEqual(crcFailures, want) {
		t.Errorf("CRC failures: %v, want needles 0x3 and 0x30 of volume 3", crcFailures)
	}
	if gone == 0 {
		t.Errorf("no deleted needle was read: the fixtures have tombstones")
	}
	for _, fid := range generated {
		if _, ok := served[fid]; !ok {
			t.Errorf("volgen's %s was not read", fid)
		}
	}

	// Wrong cookies.
	for _, n := range append(indexedNeedles(t, dir, 1), indexedNeedles(t, dir, 4)...) {
		if !n.live {
			continue
		}
		wrong := n.fid
		wrong.Cookie++
		fid := wrong.String()
		data, err := client.ReadFileID(ctx, fid)
		sameAsCat(t, fid, rdmaCat(t, cat, e.socket, fid), data, err)
		var completionError *rdma.CompletionError
		if !errors.Is(err, rdma.ErrCookieMismatch) || !errors.As(err, &completionError) ||
			completionError.Code != rdma.CodeCookieMismatch || completionError.Name != "COOKIE_MISMATCH" {
			t.Errorf("%s: wrong cookie gives %v", fid, err)
		}
	}

	// Ranges: of plain needles (read as ranges by the engine) and of gzipped
	// legacy ones (cut from the decompressed data), inside, clipped, past the end.
	gzipped := 0
	for _, volumeID := range []uint32{2, 4} {
		for i, n := range indexedNeedles(t, dir, volumeID) {
			fid := n.fid.String()
			data, ok := served[fid]
			if !ok || (volumeID == 2 && i%7 != 0) {
				continue
			}
			size := uint64(len(data))
			for _, r := range [][2]uint64{{0, 1}, {1, 100}, {size / 2, size}, {size - 1, 10}, {size, 1}, {size + 5, 0}, {3, 0}} {
				args := []string{"--offset", fmt.Sprint(r[0])}
				if r[1] != 0 {
					args = append(args, "--size", fmt.Sprint(r[1]))
				}
				got, err := client.ReadRange(ctx, fid, r[0], r[1])
				sameAsCat(t, fmt.Sprintf("%s %v", fid, r), rdmaCat(t, cat, e.socket, fid, args...), got, err)
			}
			if volumeID == 2 {
				gzipped++
			}
		}
	}
	if gzipped == 0 {
		t.Errorf("no range of the legacy volume was read")
	}

	// Errors before anything is submitted, and a volume the engine lacks.
	before := submittedEntries(t, client)
	for _, fid := range []string{"", "4", "4,zz", "4,01637037", "x,0101637037d6"} {
		if _, err := client.ReadFileID(ctx, fid); !errors.Is(err, rdma.ErrBadFileID) {
			t.Errorf("%q: %v, want ErrBadFileID", fid, err)
		}
		if _, err := client.ReadRange(ctx, fid, 0, 1); !errors.Is(err, rdma.ErrBadFileID) {
			t.Errorf("range of %q: %v, want ErrBadFileID", fid, err)
		}
	}
	if after := submittedEntries(t, client); after != before {
		t.Errorf("malformed file ids submitted %d entries", after-before)
	}
	if _, err := client.ReadFileID(ctx, "99,01637037d6"); !errors.Is(err, rdma.ErrNoSuchVolume) {
		t.Errorf("volume 99: %v, want ErrNoSuchVolume", err)
	}
}

// 64 goroutines share one Client (and its 4 queue pairs) while a Rust client
// (rdma-cat) reads its own needles from the same engine; run with -race.
func TestSixtyFourGoroutinesShareOneClient(t *testing.T) {
	cat := binaryPath(t, "RDMA_CAT")
	dir := t.TempDir()
	fids := generateVolume(t, dir, 5, 120, "1,512,4096,65536,300000,17")
	e := startEngine(t, dir)
	expected := make([][]byte, len(fids))
	for i, fid := range fids {
		reference := rdmaCat(t, cat, e.socket, fid)
		if reference.code != 0 {
			t.Fatalf("rdma-cat %s: %s", fid, reference.stderr)
		}
		expected[i] = reference.stdout
	}
	client, err := rdma.Attach(e.socket, rdma.Options{BufferBytes: 32 << 20, Name: "go-64"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const goroutines, passes = 64, 3
	ctx := context.Background()
	var wait sync.WaitGroup
	errs := make(chan error, goroutines+1)
	for g := 0; g < goroutines; g++ {
		wait.Add(1)
		go func(seed int64) {
			defer wait.Done()
			random := rand.New(rand.NewSource(seed))
			for pass := 0; pass < passes; pass++ {
				for _, i := range random.Perm(len(fids)) {
					var data []byte
					var err error
					want := expected[i]
					if random.Intn(4) == 0 && len(want) > 2 {
						offset := uint64(random.Intn(len(want) - 1))
						data, err = client.ReadRange(ctx, fids[i], offset, 2)
						want = want[offset : offset+2]
					} else {
						data, err = client.ReadFileID(ctx, fids[i])
					}
					if err != nil || !bytes.Equal(data, want) {
						errs <- fmt.Errorf("goroutine %d, %s: %d bytes, %v", seed, fids[i], len(data), err)
						return
					}
				}
			}
		}(int64(g))
	}
	// The Rust client, at the same time, on its own needles.
	wait.Add(1)
	go func() {
		defer wait.Done()
		for i := 0; i < len(fids); i += 6 {
			reference := rdmaCat(t, cat, e.socket, fids[i])
			if reference.code != 0 || !bytes.Equal(reference.stdout, expected[i]) {
				errs <- fmt.Errorf("rdma-cat %s beside the Go client: %s", fids[i], reference.stderr)
				return
			}
		}
	}()
	wait.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// The zero-copy layer: buffers in the region, a queue pair taken for
// exclusive use, a batch prepared and submitted at once, the data in place.
func TestZeroCopyBatch(t *testing.T) {
	dir := t.TempDir()
	fids := generateVolume(t, dir, 6, 16, "4096,100")
	e := startEngine(t, dir)
	client, err := rdma.Attach(e.socket, rdma.Options{QueuePairs: 1, SQEntries: 32, BufferBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := make([][]byte, len(fids))
	for i, fid := range fids {
		if want[i], err = client.ReadFileID(ctx, fid); err != nil {
			t.Fatal(err)
		}
	}
	q, err := client.TakeQueuePair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buffers := make([]*rdma.Buffer, len(fids))
	for i, fid := range fids {
		id, _ := rdma.ParseFileID(fid)
		if buffers[i], err = client.Allocate(8192); err != nil {
			t.Fatal(err)
		}
		if err := q.PrepareRead(id, buffers[i], uint64(i), 0); err != nil {
			t.Fatal(err)
		}
		if buffers[i].Bytes() != nil {
			t.Errorf("buffer %d is readable while it is lent to the engine", i)
		}
		if err := q.PrepareRead(id, buffers[i], 99, 0); err == nil {
			t.Errorf("buffer %d was lent twice", i)
		}
	}
	if err := q.PrepareNop(1000); err != nil {
		t.Fatal(err)
	}
	if err := q.Submit(); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for seen < len(fids)+1 {
		if _, err := q.Wait(ctx, 1); err != nil {
			t.Fatal(err)
		}
		for {
			completion, ok, err := q.Reap()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			seen++
			if completion.Tag == 1000 {
				if completion.Err() != nil || completion.Buffer != nil {
					t.Errorf("NOP: %+v", completion)
				}
				continue
			}
			i := completion.Tag
			if completion.Err() != nil || completion.Buffer != buffers[i] || !bytes.Equal(completion.Data(), want[i]) {
				t.Errorf("read %d: %v, %d bytes", i, completion.Err(), len(completion.Data()))
			}
			if completion.Source() != rdma.SourceLocal {
				t.Errorf("read %d served by source %d, not local", i, completion.Source())
			}
		}
	}
	if q.InFlight() != 0 {
		t.Errorf("%d requests in flight after every completion", q.InFlight())
	}
	q.Release()
	if err := q.PrepareNop(1); err == nil {
		t.Errorf("a released queue pair still prepares")
	}
	for _, buffer := range buffers {
		buffer.Free()
	}
	// The whole area is free again: one buffer of all of it fits.
	whole, err := client.Allocate(uint32(client.Description().BufferSizeBytes))
	if err != nil {
		t.Fatalf("the buffer area did not come back whole: %v", err)
	}
	whole.Free()
}

// The engine killed while the Go client waits: ErrEngineGone within the
// Rust client's bound (50 ms wait slices; the Rust test allows 10 s on a
// loaded machine), and every later call fails the same way at once.
func TestEngineKilledWhileWaiting(t *testing.T) {
	e := startEngine(t, t.TempDir())
	client, err := rdma.Attach(e.socket, rdma.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	q, err := client.TakeQueuePair(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := q.PrepareNop(1); err != nil {
		t.Fatal(err)
	}
	if err := q.Submit(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Wait(context.Background(), 1); err != nil {
		t.Fatalf("NOP: %v", err)
	}
	if _, _, err := q.Reap(); err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() {
		_, err := q.Wait(context.Background(), 1)
		result <- err
	}()
	time.Sleep(100 * time.Millisecond)
	killed := time.Now()
	e.command.Process.Signal(syscall.SIGKILL)
	err = <-result
	elapsed := time.Since(killed)
	if !errors.Is(err, rdma.ErrEngineGone) {
		t.Fatalf("waiting through the engine's death gives %v, want ErrEngineGone", err)
	}
	if elapsed > 10*time.Second {
		t.Errorf("the waiting Go client took %v to notice the dead engine", elapsed)
	}
	t.Logf("the waiting Go client noticed the killed engine after %v", elapsed)
	if _, err := client.ReadFileID(context.Background(), "3,01637037d6"); !errors.Is(err, rdma.ErrEngineGone) {
		t.Errorf("a read after the engine's death gives %v", err)
	}
}

// A Go client killed (SIGKILL, no Close) and one closed: the engine reclaims
// both regions.
func TestGoClientDeathReclaimsItsRegion(t *testing.T) {
	e := startEngine(t, t.TempDir())
	helper := startHelper(t, e.socket)
	regions, err := rdma.ListRegions(e.socket)
	if err != nil || len(regions) != 1 || regions[0].ClientName != "go-helper" || regions[0].ClientPID != uint32(helper.Process.Pid) {
		t.Fatalf("regions with the helper attached: %+v, %v", regions, err)
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	if !e.waitForRegions(t, 0) {
		t.Fatalf("the killed Go client's region was not reclaimed; log:\n%s", e.log())
	}
	client, err := rdma.Attach(e.socket, rdma.Options{Name: "go-closed"})
	if err != nil {
		t.Fatal(err)
	}
	if regions, _ := rdma.ListRegions(e.socket); len(regions) != 1 {
		t.Fatalf("regions with a client attached: %+v", regions)
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if !e.waitForRegions(t, 0) {
		t.Fatalf("the closed Go client's region was not reclaimed")
	}
	if _, err := client.ReadFileID(context.Background(), "3,01637037d6"); !errors.Is(err, rdma.ErrClosed) {
		t.Errorf("a read after Close gives %v", err)
	}
}

// A context that is already done fails the read (by ctx or by the engine's
// DEADLINE_EXCEEDED, both context.DeadlineExceeded); Close wakes every
// goroutine waiting on a queue pair or for one, with ErrClosed.
func TestContextsAndCloseEndWaits(t *testing.T) {
	dir := t.TempDir()
	fids := generateVolume(t, dir, 7, 4, "4096")
	e := startEngine(t, dir)
	client, err := rdma.Attach(e.socket, rdma.Options{QueuePairs: 2})
	if err != nil {
		t.Fatal(err)
	}
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := client.ReadFileID(expired, fids[0]); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a read with an expired context gives %v", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancelShort()
	q, err := client.TakeQueuePair(short)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Wait(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a wait past its context's deadline gives %v", err)
	}
	q.Release()
	if data, err := client.ReadFileID(context.Background(), fids[0]); err != nil || len(data) != 4096 {
		t.Fatalf("a read after the expired ones: %d bytes, %v", len(data), err)
	}
	var started, done sync.WaitGroup
	results := make(chan error, 4)
	for i := 0; i < 2; i++ {
		q, err := client.TakeQueuePair(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		started.Add(1)
		done.Add(2)
		go func() {
			defer done.Done()
			started.Done()
			_, err := q.Wait(context.Background(), 1)
			results <- err
		}()
		go func() {
			defer done.Done()
			_, err := client.ReadFileID(context.Background(), fids[1])
			results <- err
		}()
	}
	started.Wait()
	time.Sleep(100 * time.Millisecond)
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	done.Wait()
	close(results)
	for err := range results {
		if !errors.Is(err, rdma.ErrClosed) {
			t.Errorf("a goroutine waiting through Close got %v, want ErrClosed", err)
		}
	}
	if !e.waitForRegions(t, 0) {
		t.Errorf("the closed client's region was not reclaimed")
	}
}

// An engine stalled (SIGSTOP) past every read's deadline costs the client
// latency only: the reads waiting meanwhile fail with their deadline, about
// when it passes (not a drain bound later), and once the engine runs again
// every goroutine reads the right bytes through the same Client; no queue
// pair is lost to the stall.
func TestEngineStallCostsOnlyLatency(t *testing.T) {
	dir := t.TempDir()
	fids := generateVolume(t, dir, 7, 40, "4096,100")
	e := startEngine(t, dir)
	client, err := rdma.Attach(e.socket, rdma.Options{Name: "go-stall"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	expected := make([][]byte, len(fids))
	for i, fid := range fids {
		if expected[i], err = client.ReadFileID(context.Background(), fid); err != nil {
			t.Fatalf("%s before the stall: %v", fid, err)
		}
	}
	const goroutines = 8
	const deadline = 300 * time.Millisecond
	var stalled, resumed atomic.Bool
	var wait sync.WaitGroup
	errs := make(chan error, goroutines)
	slowest := make(chan time.Duration, goroutines)
	for g := 0; g < goroutines; g++ {
		wait.Add(1)
		go func(g int) {
			defer wait.Done()
			var longest time.Duration
			successesAfter := 0
			begun := time.Now()
			for i := g; successesAfter < 20; i++ {
				if time.Since(begun) > readyTimeout {
					errs <- fmt.Errorf("goroutine %d: %d reads succeeded after the engine resumed", g, successesAfter)
					return
				}
				fid := fids[i%len(fids)]
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				started := time.Now()
				data, err := client.ReadFileID(ctx, fid)
				took := time.Since(started)
				cancel()
				longest = max(longest, took)
				switch {
				case err == nil && !bytes.Equal(data, expected[i%len(fids)]):
					errs <- fmt.Errorf("goroutine %d, %s: wrong bytes", g, fid)
					return
				case err == nil && resumed.Load():
					successesAfter++
				case err != nil && !stalled.Load():
					errs <- fmt.Errorf("goroutine %d, %s, engine running: %v", g, fid, err)
					return
				case err != nil && !errors.Is(err, context.DeadlineExceeded):
					errs <- fmt.Errorf("goroutine %d, %s during the stall: %v, want the deadline", g, fid, err)
					return
				}
			}
			slowest <- longest
		}(g)
	}
	time.Sleep(200 * time.Millisecond)
	stalled.Store(true)
	e.command.Process.Signal(syscall.SIGSTOP)
	// Longer than the 5 s a released queue pair used to be drained for
	// before it was retired for good.
	time.Sleep(6 * time.Second)
	e.command.Process.Signal(syscall.SIGCONT)
	resumed.Store(true)
	wait.Wait()
	close(errs)
	close(slowest)
	for err := range errs {
		t.Error(err)
	}
	var longest time.Duration
	for took := range slowest {
		longest = max(longest, took)
	}
	// Before the fix a read past its deadline also waited up to 5 s for its
	// queue pair to drain (and the queue pair was lost after it).
	if longest > deadline+2*time.Second {
		t.Errorf("the slowest read took %v with a %v deadline", longest, deadline)
	}
	t.Logf("the slowest read took %v with a %v deadline", longest, deadline)
}

// A Reader opened once reads on across engine restarts (SIGKILL, SIGTERM)
// and a stall, with no action of its caller: reads succeed again after each
// event, never with wrong bytes. And a Reader opened before its engine
// waits for it.
func TestReaderReadsOnAcrossEngineRestarts(t *testing.T) {
	volumeDir := t.TempDir()
	fids := generateVolume(t, volumeDir, 8, 30, "4096,100,70000")
	e := startEngine(t, volumeDir)
	reader, err := rdma.OpenReader(e.socket, rdma.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	expected := make([][]byte, len(fids))
	for i, fid := range fids {
		if expected[i], err = reader.ReadFileID(context.Background(), fid); err != nil {
			t.Fatalf("%s: %v", fid, err)
		}
	}
	var stop atomic.Bool
	var succeeded, failed atomic.Int64
	var wait sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wait.Add(1)
		go func(g int) {
			defer wait.Done()
			for i := g; !stop.Load(); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				data, err := reader.ReadFileID(ctx, fids[i%len(fids)])
				cancel()
				switch {
				case err != nil:
					failed.Add(1)
				case !bytes.Equal(data, expected[i%len(fids)]):
					errs <- fmt.Errorf("goroutine %d, %s: wrong bytes", g, fids[i%len(fids)])
					return
				default:
					succeeded.Add(1)
				}
			}
		}(g)
	}
	readsSucceedAgain := func(what string) {
		start := time.Now()
		before := succeeded.Load()
		for succeeded.Load() < before+50 {
			if time.Since(start) > readyTimeout {
				t.Fatalf("reads did not succeed again after %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%s: reads succeed again %v later", what, time.Since(start))
	}
	for _, signal := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		e.command.Process.Signal(signal)
		<-e.exited
		e = restartEngine(t, e, volumeDir)
		readsSucceedAgain(signal.String())
	}
	e.command.Process.Signal(syscall.SIGSTOP)
	time.Sleep(3 * time.Second)
	e.command.Process.Signal(syscall.SIGCONT)
	readsSucceedAgain("a stall of 3 s")
	stop.Store(true)
	wait.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d reads succeeded, %d failed to the caller (during the faults)", succeeded.Load(), failed.Load())

	// Opened before its engine: it waits.
	early := t.TempDir()
	socket := filepath.Join(early, "engine.sock")
	opened := make(chan error, 1)
	go func() {
		late, err := rdma.OpenReader(socket, rdma.ReaderOptions{EngineWait: readyTimeout})
		if err == nil {
			_, err = late.ReadFileID(context.Background(), fids[0])
			late.Close()
		}
		opened <- err
	}()
	time.Sleep(300 * time.Millisecond)
	startEngineAt(t, volumeDir, socket)
	if err := <-opened; err != nil {
		t.Errorf("a reader opened before its engine: %v", err)
	}
}
