#!/usr/bin/env bash
# The Go client's benchmarks beside the Rust client's, against one engine in
# one run: NOP round trips and 4 KiB needle reads at depth 1 and 32
# (rdma-bench nop / read, then go test -bench), and the two Readers'
# ReadFileID / read_file_id from 1 and 32 threads (rdma-bench reader, then
# the Go Reader benchmark; neither pinned). Figures: docs/benchmarks.md.
#   client/go/bench.sh [--duration-ms N]   (N: rdma-bench's measured time per mode, default 6000)
set -euo pipefail
cd "$(dirname "$0")/../.."
duration_ms=6000
if [ "${1:-}" = "--duration-ms" ]; then duration_ms="$2"; fi
cargo build --release --locked -p rdma-engine -p rdma-tools --bin rdma-engine --bin rdma-bench --bin volgen
release="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"
work="$(mktemp -d)"
engine_pid=""
trap '[ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/vol"
"$release/volgen" --dir "$work/vol" --volume-id 7 --count 192 --sizes 4096,65536,1048576 --fids-out "$work/all-fids"
# Needles cycle 4096, 65536, 1048576: every third is a 4 KiB one.
awk 'NR % 3 == 1' "$work/all-fids" >"$work/fids-4k"
"$release/rdma-engine" --socket "$work/engine.sock" --poller-cpu 0 --volume-dir "$work/vol" 2>"$work/engine.log" &
engine_pid=$!
for _ in $(seq 200); do [ -S "$work/engine.sock" ] && break; sleep 0.05; done
echo "== Rust client: rdma-bench nop" >&2
"$release/rdma-bench" nop --socket "$work/engine.sock" --duration-ms "$duration_ms"
echo "== Rust client: rdma-bench read (local)" >&2
"$release/rdma-bench" read --socket "$work/engine.sock" --transport local --volume-dir "$work/vol" --duration-ms "$duration_ms"
echo "== Go client: go test -bench (one queue pair, the same engine; pinned to CPU 1, off the poller's CPU 0, as rdma-bench pins its client threads)" >&2
(cd client/go && GOTOOLCHAIN=local go test -c -o "$work/go-bench" .)
RDMA_BENCH_SOCKET="$work/engine.sock" RDMA_BENCH_FIDS="$work/fids-4k" \
    taskset -c 1 "$work/go-bench" -test.run '^$' -test.bench 'Nop|Read4KiB' -test.benchtime 2s -test.count 3
echo "== Rust Reader: rdma-bench reader (the 'c threads of read_file_id' column is the Go Reader's counterpart)" >&2
"$release/rdma-bench" reader --socket "$work/engine.sock" --volume-dir "$work/vol"
echo "== Go Reader: ReadFileID of the 4 KiB needles, 1 and 32 goroutines" >&2
RDMA_BENCH_SOCKET="$work/engine.sock" RDMA_BENCH_FIDS="$work/fids-4k" \
    "$work/go-bench" -test.run '^$' -test.bench 'ReaderReadFileID' -test.benchtime 2s -test.count 3
