#!/usr/bin/env bash
# The main job, end to end on one machine: generate a SeaweedFS volume, start
# the engine on it, read every needle through the shared-memory rings and
# verify it, then print the benchmark tables (engine vs its floors).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --workspace --bins

work=$(mktemp -d /tmp/rdma-demo.XXXXXX)
engine_pid=""
cleanup() {
    [ -n "$engine_pid" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

bin=target/release
mkdir -p "$work/volumes"
echo "== generating a SeaweedFS volume (4 KiB, 64 KiB and 1 MiB needles)" >&2
"$bin/volgen" --dir "$work/volumes" --volume-id 1 --count 300 --sizes 4096,65536,1048576 --fids-out "$work/fids.txt"

echo "== starting rdma-engine on it" >&2
"$bin/rdma-engine" --socket "$work/engine.sock" --volume-dir "$work/volumes" &
engine_pid=$!
for _ in $(seq 1 100); do [ -S "$work/engine.sock" ] && break; sleep 0.1; done

echo "== reading and verifying every needle through the rings (rdma-cat)" >&2
count=0
while read -r fid; do
    "$bin/rdma-cat" --socket "$work/engine.sock" "$fid" > /dev/null 2>>"$work/cat.log"
    count=$((count + 1))
done < "$work/fids.txt"
echo "read and verified $count needles; last: $(tail -n 1 "$work/cat.log")" >&2

echo "== ring state (ringstat)" >&2
"$bin/ringstat" --socket "$work/engine.sock" || true

echo "== NOP round trips vs floors (rdma-bench nop)" >&2
"$bin/rdma-bench" nop --socket "$work/engine.sock"

echo "== needle reads vs pread floor (rdma-bench read --transport local)" >&2
"$bin/rdma-bench" read --socket "$work/engine.sock" --transport local --volume-dir "$work/volumes"
