package rdma_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	rdma "github.com/seaweedfs-rdma/client/go"
)

// Benchmarks of the Go client against a running engine (bench.sh starts one
// and runs rdma-bench beside them): NOP round trips and 4 KiB needle reads,
// one queue pair, depth 1 and 32. RDMA_BENCH_SOCKET names the engine's
// socket, RDMA_BENCH_FIDS a file of file ids of 4096-byte needles.

func benchClient(b *testing.B) (*rdma.Client, *rdma.QueuePair) {
	b.Helper()
	socket := os.Getenv("RDMA_BENCH_SOCKET")
	if socket == "" {
		b.Skip("RDMA_BENCH_SOCKET is not set: run client/go/bench.sh")
	}
	client, err := rdma.Attach(socket, rdma.Options{QueuePairs: 1, SQEntries: 64, BufferBytes: 4 << 20, Name: "go-bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	q, err := client.TakeQueuePair(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return client, q
}

// pipeline keeps depth requests in flight until b.N have completed:
// prepare(i) writes request i, check looks at each completion.
func pipeline(b *testing.B, q *rdma.QueuePair, depth int, prepare func(i int, c *rdma.Completion) error, check func(*rdma.Completion)) {
	ctx := context.Background()
	for i := 0; i < depth; i++ {
		if err := prepare(i, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := q.Submit(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	submitted, done := depth, 0
	for done < b.N {
		if _, err := q.Wait(ctx, 1); err != nil {
			b.Fatal(err)
		}
		again := 0
		for {
			completion, ok, err := q.Reap()
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
			done++
			check(&completion)
			if submitted < b.N {
				if err := prepare(submitted, &completion); err != nil {
					b.Fatal(err)
				}
				submitted++
				again++
			}
		}
		if again > 0 {
			if err := q.Submit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkNop(b *testing.B) {
	for _, depth := range []int{1, 32} {
		b.Run(map[int]string{1: "depth=1", 32: "depth=32"}[depth], func(b *testing.B) {
			_, q := benchClient(b)
			prepare := func(i int, _ *rdma.Completion) error { return q.PrepareNop(uint64(i)) }
			pipeline(b, q, min(depth, b.N), prepare, func(c *rdma.Completion) {
				if c.Err() != nil {
					b.Fatal(c.Err())
				}
			})
		})
	}
}

func BenchmarkRead4KiB(b *testing.B) {
	fidsText, err := os.ReadFile(os.Getenv("RDMA_BENCH_FIDS"))
	if err != nil && os.Getenv("RDMA_BENCH_SOCKET") != "" {
		b.Fatalf("RDMA_BENCH_FIDS: %v", err)
	}
	var fids []rdma.FileID
	for _, text := range strings.Fields(string(fidsText)) {
		fid, err := rdma.ParseFileID(text)
		if err != nil {
			b.Fatal(err)
		}
		fids = append(fids, fid)
	}
	for _, depth := range []int{1, 32} {
		b.Run(map[int]string{1: "depth=1", 32: "depth=32"}[depth], func(b *testing.B) {
			client, q := benchClient(b)
			if len(fids) == 0 {
				b.Fatal("RDMA_BENCH_FIDS names no file ids")
			}
			prepare := func(i int, done *rdma.Completion) error {
				buffer := (*rdma.Buffer)(nil)
				if done != nil {
					buffer = done.Buffer
				} else if buffer, err = client.Allocate(8192); err != nil {
					return err
				}
				return q.PrepareRead(fids[i%len(fids)], buffer, uint64(i), 0)
			}
			pipeline(b, q, min(depth, b.N), prepare, func(c *rdma.Completion) {
				if c.Err() != nil || c.Cqe.Result != 4096 {
					b.Fatalf("read: %v, %d bytes", c.Err(), c.Cqe.Result)
				}
			})
			b.SetBytes(4096)
		})
	}
}

// BenchmarkReaderReadFileID4KiB is the Reader's ReadFileID (a copy of the
// data, as the Rust Reader's read_file_id) of the same 4 KiB needles, from 1
// goroutine and from 32 at once; beside rdma-bench reader's "read_file_id"
// column in bench.sh.
func BenchmarkReaderReadFileID4KiB(b *testing.B) {
	socket := os.Getenv("RDMA_BENCH_SOCKET")
	if socket == "" {
		b.Skip("RDMA_BENCH_SOCKET is not set: run client/go/bench.sh")
	}
	fidsText, err := os.ReadFile(os.Getenv("RDMA_BENCH_FIDS"))
	if err != nil {
		b.Fatalf("RDMA_BENCH_FIDS: %v", err)
	}
	fids := strings.Fields(string(fidsText))
	if len(fids) == 0 {
		b.Fatal("RDMA_BENCH_FIDS names no file ids")
	}
	reader, err := rdma.OpenReader(socket, rdma.ReaderOptions{Options: rdma.Options{Name: "go-bench-reader"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reader.Close() })
	for _, goroutines := range []int{1, 32} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			var next atomic.Int64
			b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
			b.SetBytes(4096)
			b.ResetTimer()
			if goroutines == 1 {
				for i := 0; i < b.N; i++ {
					if data, err := reader.ReadFileID(context.Background(), fids[i%len(fids)]); err != nil || len(data) != 4096 {
						b.Fatalf("read: %v, %d bytes", err, len(data))
					}
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := int(next.Add(1))
						if data, err := reader.ReadFileID(context.Background(), fids[i%len(fids)]); err != nil || len(data) != 4096 {
							b.Errorf("read: %v, %d bytes", err, len(data))
							return
						}
					}
				})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
		})
	}
}
