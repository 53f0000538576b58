#!/usr/bin/env bash
# Builds SeaweedFS's `weed` binary from the Go module proxy, or reuses the
# cached build, and prints the binary's absolute path as the last line of its
# standard output.
#
# The version is pinned here and only here: the Go module proxy serves
# github.com/seaweedfs/seaweedfs at exactly this version (`weed version`
# prints "30GB 4.53"). `go install module@version` is refused because that
# module's go.mod carries a `replace`, so we build it from a throwaway module
# that requires it, repeats the replace and takes SeaweedFS's own go.sum.
# Nothing of SeaweedFS is written into this repository.
#
# Cold: `go mod tidy` (~80 s) and `go build` (~10 min on 2 cores, 2.2 GB peak
# memory); warm: no time. The cache lives outside the work tree, keyed by the
# version: ${SEAWEEDFS_CACHE_DIR:-$HOME/.cache/seaweedfs-rdma}/weed-<version>/weed.
set -euo pipefail

SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6

cache_root="${SEAWEEDFS_CACHE_DIR:-$HOME/.cache/seaweedfs-rdma}"
install_dir="$cache_root/weed-$SEAWEEDFS_VERSION"
binary="$install_dir/weed"

if [ -x "$binary" ] && "$binary" version >/dev/null 2>&1; then
    echo "install-seaweedfs: reusing $binary" >&2
    echo "$binary"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "install-seaweedfs: Go is needed to build weed and is not on PATH" >&2
    exit 1
fi

mkdir -p "$cache_root"
build_dir="$(mktemp -d "$cache_root/build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
started=$(date +%s)

echo "install-seaweedfs: downloading $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION" >&2
module_dir="$(cd "$build_dir" && GOFLAGS=-mod=mod go mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ ! -f "$module_dir/go.mod" ]; then
    echo "install-seaweedfs: the module download did not give a source directory" >&2
    exit 1
fi

# The replace directive that makes the module buildable, taken from the
# module's own go.mod so that it follows the pinned version.
replace_line="$(grep -E '^replace[[:space:]]+github.com/tyler-smith/go-bip39' "$module_dir/go.mod" || true)"
go_line="$(grep -E '^go [0-9]' "$module_dir/go.mod")"

cat >"$build_dir/go.mod" <<EOF
module seaweedfs-rdma/weed-build

$go_line

require $SEAWEEDFS_MODULE $SEAWEEDFS_VERSION

$replace_line
EOF
cat >"$build_dir/tools.go" <<EOF
//go:build tools

package tools

import _ "$SEAWEEDFS_MODULE/weed"
EOF
cp "$module_dir/go.sum" "$build_dir/go.sum"
chmod u+w "$build_dir/go.sum"

echo "install-seaweedfs: resolving dependencies (go mod tidy, about 80 s cold)" >&2
(cd "$build_dir" && go mod tidy)

echo "install-seaweedfs: building weed (about 10 minutes on 2 cores, once)" >&2
(cd "$build_dir" && CGO_ENABLED=0 go build -trimpath -o "$build_dir/weed" "$SEAWEEDFS_MODULE/weed")

"$build_dir/weed" version >&2
mkdir -p "$install_dir"
mv "$build_dir/weed" "$binary.partial"
mv "$binary.partial" "$binary"
echo "install-seaweedfs: built $binary in $(($(date +%s) - started)) s" >&2
echo "$binary"
