#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for a bounded time. Exits non-zero
# when a target finds a crash, a timeout, a memory leak or an out-of-memory input, after
# printing the input in base64 so that it can be recovered from a CI log.
#
# Usage: fuzz/run.sh [TARGET...]            (default: every target below)
#   FUZZ_SECONDS     run time of each target in seconds (default 60)
#   FUZZ_JOBS        number of targets that run at once (default: the number of cores)
#   FUZZ_TARGET_DIR  cargo target folder for the instrumented build (default fuzz/target)
#
# Toolchain: cargo-fuzz instruments the code with rustc's unstable -Z flags (sanitizer
# coverage and AddressSanitizer), which only a nightly compiler accepts. RUSTC_BOOTSTRAP=1
# makes the installed stable compiler accept them, so no second toolchain is needed. The
# Rust project does not support that use, so a future stable release may need changes here.
#
# Inputs found while fuzzing go to fuzz/corpus-new/<target>/ (not committed). The seeds in
# fuzz/corpus/<target>/ are only read. Findings are written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(frame_decode handshake_decode mux_input config_load)
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
target_dir=$(realpath -m "${FUZZ_TARGET_DIR:-fuzz/target}")
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${ALL_TARGETS[@]}"); fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing. Install it with: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

# cargo-fuzz's defaults: release build with debug assertions, AddressSanitizer, one
# codegen unit per crate.
build_start=$SECONDS
if [ "$#" -eq 0 ]; then
    cargo fuzz build --target-dir "$target_dir"
else
    for target in "${targets[@]}"; do
        cargo fuzz build --target-dir "$target_dir" "$target"
    done
fi
echo "fuzz/run.sh: built ${#targets[@]} targets in $((SECONDS - build_start)) s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
# Findings older than this marker come from earlier runs and are not reported.
touch "$log_dir/start"

# Runs one target. Its output goes to a log file because targets run in parallel.
run_target() {
    local target=$1
    mkdir -p "fuzz/corpus-new/$target" "fuzz/artifacts/$target"
    "$bin_dir/$target" "fuzz/corpus-new/$target" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 \
        >"$log_dir/$target.log" 2>&1
}

# Prints the summary of a finished target, and on failure its log and every finding.
report_target() {
    local target=$1 status=$2 log="$log_dir/$1.log"
    local runs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        echo "fuzz/run.sh: $target: no finding in ${runs:-?} runs"
        return
    fi

    echo "fuzz/run.sh: $target FAILED (exit status $status); its log follows" >&2
    tail -n 60 "$log" >&2
    find "fuzz/artifacts/$target" -type f -newer "$log_dir/start" | while read -r finding; do
        echo "--- $finding, base64 (decode with: base64 -d > input):" >&2
        base64 "$finding" | head -c 20000 >&2
        echo >&2
        echo "--- reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $target $finding" >&2
    done
}

failed=()
fuzz_start=$SECONDS
for ((first = 0; first < ${#targets[@]}; first += jobs)); do
    batch=("${targets[@]:first:jobs}")
    pids=()
    for target in "${batch[@]}"; do
        run_target "$target" &
        pids+=("$!")
    done
    for index in "${!batch[@]}"; do
        status=0
        wait "${pids[$index]}" || status=$?
        report_target "${batch[$index]}" "$status"
        [ "$status" -eq 0 ] || failed+=("${batch[$index]}")
    done
done
echo "fuzz/run.sh: fuzzed ${#targets[@]} targets for ${seconds} s each in $((SECONDS - fuzz_start)) s"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/run.sh: findings in: ${failed[*]}" >&2
    exit 1
fi
