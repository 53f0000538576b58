#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine:
# UCX (headers, library, tools), libclang for bindgen, pkg-config, iproute2 for
# the two-host tests, and a Rust toolchain when there is none.
# Safe to run again: it only installs what is missing.
set -euo pipefail

packages=(libucx-dev libucx0 ucx-utils libclang-dev clang pkg-config iproute2 build-essential curl ca-certificates)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
    echo "install-deps: installing Debian packages: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        echo "install-deps: cargo is in ~/.cargo/bin; add it to PATH" >&2
    else
        echo "install-deps: installing Rust with rustup" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
fi
