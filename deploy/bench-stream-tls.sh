#!/usr/bin/env bash
# What mutual TLS costs the stream transport, in one go: `rdma-bench read --transport stream`
# (every size and depth, against its bare TCP floor) with an exporter and a reader in
# plaintext, then with both on certificates made here the way an operator makes them
# (openssl: a CA, a volume server's and a client's certificate, names that are host names,
# not the addresses dialled). The floor is plaintext TCP both times, so the two ratios differ
# by what TLS costs. Results: docs/benchmarks.md, "Mutual TLS".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p rdma-engine -p rdma-tools --bin rdma-engine --bin rdma-bench --bin volgen
bin=$PWD/target/release
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/vol"
"$bin/volgen" --dir "$work/vol" --volume-id 1 --count 300 --sizes 4096,65536,1048576 >/dev/null

# The operator's certificates (PEM, P-256), as SeaweedFS's security.toml names them.
certificate() { # name subject-alt-name
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
        -keyout "$work/$1.key" -out "$work/$1.csr" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
        -extfile <(printf 'subjectAltName=DNS:%s' "$2") -out "$work/$1.pem" 2>/dev/null
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench CA" -days 2 \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
certificate volume volume01
certificate client client01
cat >"$work/security.toml" <<EOF
[grpc]
ca = "$work/ca.pem"
[grpc.volume]
cert = "$work/volume.pem"
key = "$work/volume.key"
[grpc.client]
cert = "$work/client.pem"
key = "$work/client.key"
EOF

run() { # label, then the engines' extra flags
    local label=$1 port
    shift
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$bin/rdma-engine" --socket "$work/exp.sock" --export-dir "$work/vol" --listen "127.0.0.1:$port" "$@" \
        2>"$work/exporter-$label.log" &
    pids+=($!)
    "$bin/rdma-engine" --socket "$work/rd.sock" --peer "127.0.0.1:$port" "$@" 2>"$work/reader-$label.log" &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$work/rd.sock" ] && break; sleep 0.1; done
    echo "== $label" >&2
    grep -h "runs over mutual TLS\|runs in plaintext" "$work/exporter-$label.log" >&2 || true
    "$bin/rdma-bench" read --socket "$work/rd.sock" --transport stream --peer "127.0.0.1:$port" --volume-dir "$work/vol"
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
}
run plaintext
run mutual-tls --security-toml "$work/security.toml"
