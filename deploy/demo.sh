#!/usr/bin/env bash
# The main job, end to end on one machine with a real SeaweedFS:
#  1. build (or reuse) `weed`, start a master and a volume server;
#  2. upload files through SeaweedFS's own API (assign + multipart POST);
#  3. start an exporting engine on the volume server's directory and a reading
#     engine that finds volumes through the master, both with default flags (the
#     stream transport: this machine has no RDMA NIC);
#  4. read every file through `rdma-cat` and through `rdma-sidecar`, each checked
#     byte for byte against the volume server's own GET;
#  5. print the comparison table (`rdma-bench compare`: HTTP vs local vs stream vs
#     UCX tcp vs UCX shared memory (the opt-in mode) vs the sidecar, same run).
# First run on a fresh machine: ~10 min for `weed` (built once, cached), ~4 min
# for the release build; then about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
weed="$(deploy/install-seaweedfs.sh | tail -n 1)"
cargo build --release --locked --workspace --bins

work=$(mktemp -d /tmp/rdma-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

bin=$PWD/target/release
free_port() { # a port whose gRPC twin (port + 10000, as weed uses) is free too
    local port
    while :; do
        port=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null && continue
        echo "$port"
        return
    done
}
wait_for() { # wait_for WHAT COMMAND...: up to 60 s
    local what=$1
    shift
    for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "demo: $what did not come up; logs in $work" >&2
    tail -n 20 "$work"/*.log >&2
    return 1
}

echo "== SeaweedFS: $("$weed" version | head -n 1)" >&2
master_port=$(free_port)
volume_port=$(free_port)
mkdir -p "$work/master" "$work/volume" "$work/files"
"$weed" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$master_port" -mdir="$work/master" >"$work/master.log" 2>&1 &
pids+=($!)
# -minFreeSpace: an absolute floor; the default (1 % of the disk) refuses every
# volume on a large shared disk that happens to be 99 % full.
"$weed" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$volume_port" -dir="$work/volume" \
    -master="127.0.0.1:$master_port" -max=8 -minFreeSpace=256MiB >"$work/volume.log" 2>&1 &
pids+=($!)
master=127.0.0.1:$master_port
volume=127.0.0.1:$volume_port
wait_for "the master and volume server" sh -c "curl -sf http://$master/dir/assign | grep -q fid"

echo "== uploading files through SeaweedFS's API (binary 4 KiB .. 1 MiB, and text, which weed stores gzipped)" >&2
: >"$work/fids.txt"
upload() { # upload FILE MIME
    local answer fid url
    answer=$(curl -sf "http://$master/dir/assign")
    fid=$(echo "$answer" | sed -n 's/.*"fid":"\([^"]*\)".*/\1/p')
    url=$(echo "$answer" | sed -n 's/.*"url":"\([^"]*\)".*/\1/p')
    curl -sf -F "file=@$1;type=$2" "http://$url/$fid" >/dev/null
    echo "$fid" >>"$work/fids.txt"
}
for size in 4096 65536 1048576; do
    for index in $(seq 1 20); do
        head -c "$size" /dev/urandom >"$work/files/blob-$size-$index.bin"
        upload "$work/files/blob-$size-$index.bin" application/octet-stream
    done
done
for index in $(seq 1 10); do
    for line in $(seq 1 500); do echo "SeaweedFS stores small files in large volumes; file $index, line $line"; done \
        >"$work/files/notes-$index.txt"
    upload "$work/files/notes-$index.txt" text/plain
done
echo "uploaded $(wc -l <"$work/fids.txt") files" >&2

echo "== engines: an exporter on the volume server's -dir, a reader that finds volumes through the master (defaults)" >&2
export_port=$(free_port)
"$bin/rdma-engine" --socket "$work/export.sock" --export-dir "$work/volume" --listen "127.0.0.1:$export_port" \
    2>"$work/export-engine.log" &
pids+=($!)
wait_for "the exporter" test -S "$work/export.sock"
"$bin/rdma-engine" --socket "$work/reader.sock" --master "$master" --export-port "$export_port" \
    --poller-cpu 0 2>"$work/reader-engine.log" &
pids+=($!)
wait_for "the reader" test -S "$work/reader.sock"
sidecar_port=$(free_port)
"$bin/rdma-sidecar" --socket "$work/reader.sock" --listen "127.0.0.1:$sidecar_port" 2>"$work/sidecar.log" &
pids+=($!)
wait_for "rdma-sidecar" curl -sf "http://127.0.0.1:$sidecar_port/health"

echo "== reading every file through rdma-cat and rdma-sidecar, each compared with the volume server's GET" >&2
count=0
sources=()
while read -r fid; do
    curl -sf "http://$volume/$fid" >"$work/expected"
    "$bin/rdma-cat" --socket "$work/reader.sock" "$fid" >"$work/got" 2>"$work/cat.err"
    cmp -s "$work/expected" "$work/got" || { echo "demo: rdma-cat $fid differs from the volume server's GET" >&2; exit 1; }
    sources+=("$(sed -n 's/.*source=\([a-z]*\).*/\1/p' "$work/cat.err")")
    curl -sf -D "$work/headers" "http://127.0.0.1:$sidecar_port/$fid" >"$work/got"
    cmp -s "$work/expected" "$work/got" || { echo "demo: rdma-sidecar $fid differs from the volume server's GET" >&2; exit 1; }
    count=$((count + 1))
done <"$work/fids.txt"
echo "read $count files twice (rdma-cat, rdma-sidecar), all byte-identical to SeaweedFS's GET; rdma-cat sources: $(printf '%s\n' "${sources[@]}" | sort | uniq -c | tr -s ' \n' ' ')" >&2
if printf '%s\n' "${sources[@]}" | grep -vqx stream; then
    echo "demo: some reads did not come over the stream transport (a default reader's remote path)" >&2
    exit 1
fi
"$bin/ringstat" --socket "$work/reader.sock"

echo "== the comparison: every path against SeaweedFS's own HTTP GET, same run (rdma-bench compare)" >&2
"$bin/rdma-bench" compare --weed "$weed" --plot target/compare.svg
echo "== the chart of that table: target/compare.svg" >&2
