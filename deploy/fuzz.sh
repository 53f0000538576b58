#!/usr/bin/env bash
# Builds the cargo fuzz targets (fuzz/, libFuzzer, on stable Rust: no sanitizer, with debug
# assertions and overflow checks) and runs each for a bounded time; fails on the first
# target that finds a crash, a panic, a hang or a leak-sized allocation, naming the input
# it saved. Usage: deploy/fuzz.sh [--seconds N] [target...]   (default: 60 s, every target)
# The seed corpus is fuzz/seeds/<target> (committed); what a run discovers goes to
# fuzz/corpus/<target> (not committed) and is reused by the next run. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=60
targets=()
while (($#)); do
    case "$1" in
        --seconds)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds needs a whole number of seconds above 0, not '${2:-}'" >&2; exit 2; }
            seconds="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) echo "fuzz.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz.sh: cargo-fuzz is not installed (deploy/install-deps.sh installs it)" >&2; exit 2; }
known=$(cargo fuzz list --fuzz-dir fuzz)
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$known"
fi
for target in "${targets[@]}"; do
    grep -qx "$target" <<<"$known" || { echo "fuzz.sh: no fuzz target '$target'; there are: $(echo $known)" >&2; exit 2; }
done

# The same flags for the build and every run, so `cargo fuzz run` finds the build done.
# No sanitizer: the code under test is safe Rust but for the ring's volatile slot copies,
# and AddressSanitizer needs a nightly compiler, which CI does not have.
target_dir="${CARGO_TARGET_DIR:-$PWD/fuzz/target}/fuzz"
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions --target-dir "$target_dir")
# The fuzz crate's own Cargo.lock is committed: refuse to build if it is out of date.
cargo fetch --locked --manifest-path fuzz/Cargo.toml
echo "== fuzz: building the fuzz targets" >&2
cargo fuzz build "${flags[@]}"

summary=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    log="$artifacts/last-run.log"
    echo "== fuzz: $target for ${seconds} s (corpus $corpus, seeds fuzz/seeds/$target)" >&2
    # -timeout: one input running 10 s is a hang; -rss_limit_mb: a run past 2 GiB is a leak.
    if ! cargo fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        found=$(ls -t "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* 2>/dev/null | head -n 1 || true)
        echo "== fuzz: $target FAILED on ${found:-an input libFuzzer did not save} (full log: $log)." >&2
        echo "   Reproduce: cargo fuzz run ${flags[*]} $target ${found:-<input>}" >&2
        exit 1
    fi
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    features=$(grep -oE 'ft: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    summary+=("$(printf '%-20s %12s runs %8s/s  cov %6s  ft %6s' "$target" "$executions" \
        "$((executions / seconds))" "$coverage" "$features")")
done
echo "== fuzz: no crash in ${#targets[@]} targets, ${seconds} s each:" >&2
printf '   %s\n' "${summary[@]}" >&2
