#!/usr/bin/env bash
# The main job, end to end on one machine: generate a SeaweedFS volume, start
# the engine on it, read every needle through the shared-memory rings (each
# one checked: cookie, id, size, CRC-32C), then the same over UCX from a
# second engine that exports the volume, and print the benchmark tables
# (engine vs its floors, as ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --workspace --bins

work=$(mktemp -d /tmp/rdma-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bin=target/release
wait_for_socket() {
    for _ in $(seq 1 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "demo: engine socket $1 did not appear; see $work/*.log" >&2
    return 1
}

mkdir -p "$work/volumes"
echo "== generating a SeaweedFS volume (4 KiB, 64 KiB and 1 MiB needles)" >&2
"$bin/volgen" --dir "$work/volumes" --volume-id 1 --count 300 --sizes 4096,65536,1048576 --fids-out "$work/fids.txt"

echo "== starting rdma-engine on it (log: $work/local-engine.log)" >&2
"$bin/rdma-engine" --socket "$work/local.sock" --volume-dir "$work/volumes" --poller-cpu 0 2>"$work/local-engine.log" &
pids+=($!)
wait_for_socket "$work/local.sock"

read_all() {
    local socket=$1 label=$2 count=0
    : > "$work/cat-$label.log"
    while read -r fid; do
        "$bin/rdma-cat" --socket "$socket" "$fid" > /dev/null 2>>"$work/cat-$label.log"
        count=$((count + 1))
    done < "$work/fids.txt"
    echo "read $count needles through the rings, every one checked; last: $(tail -n 1 "$work/cat-$label.log")" >&2
}

echo "== reading every needle through the rings, local transport (rdma-cat)" >&2
read_all "$work/local.sock" local

echo "== NOP round trips vs floors (rdma-bench nop)" >&2
"$bin/rdma-bench" nop --socket "$work/local.sock"

echo "== needle reads vs pread floor (rdma-bench read --transport local), and the live ring state halfway (ringstat)" >&2
"$bin/rdma-bench" read --socket "$work/local.sock" --transport local --volume-dir "$work/volumes" > "$work/read-local.txt" &
bench=$!
sleep 5
"$bin/ringstat" --socket "$work/local.sock"
wait "$bench"
cat "$work/read-local.txt"

echo "== RDMA: an exporting engine and a reading engine, UCX over tcp (this machine has no RDMA NIC)" >&2
export UCX_TLS=${UCX_TLS:-tcp}
port=$((20000 + RANDOM % 20000))
"$bin/rdma-engine" --socket "$work/export.sock" --export-dir "$work/volumes" --listen "127.0.0.1:$port" 2>"$work/export-engine.log" &
pids+=($!)
wait_for_socket "$work/export.sock"
"$bin/rdma-engine" --socket "$work/reader.sock" --peer "127.0.0.1:$port" --poller-cpu 0 2>"$work/reader-engine.log" &
pids+=($!)
wait_for_socket "$work/reader.sock"
read_all "$work/reader.sock" rdma

echo "== needle reads over UCX vs a bare ucp_get floor (rdma-bench read --transport ucx)" >&2
"$bin/rdma-bench" read --socket "$work/reader.sock" --transport ucx --peer "127.0.0.1:$port" --volume-dir "$work/volumes"
