#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what is missing
# (Debian packages, Rust, SeaweedFS's weed), then the workspace tests (unit, proptest, real
# multi-process tests with real UCX) and the loom model of the ring protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

# A real SeaweedFS for the end-to-end tests: built once (about 10 minutes on
# a fresh machine), then reused from its cache.
if [ -z "${WEED_BINARY:-}" ]; then
    WEED_BINARY="$(deploy/install-seaweedfs.sh | tail -n 1)"
    export WEED_BINARY
fi
echo "== SeaweedFS: $WEED_BINARY" >&2

echo "== workspace tests (unit, proptest, multi-process, UCX)" >&2
cargo test --workspace --locked -- --test-threads 2

echo "== loom: the SPSC ring and NEED_WAKEUP protocol under every interleaving" >&2
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --locked -p shm-layout --test loom --release
