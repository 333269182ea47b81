#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh [seconds-per-target] (default 60).
# Prints each target's executions; exits 1 if any target found a crash (its log is printed and
# the input saved under fuzz/artifacts/<target>/). See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
# cargo-fuzz needs nightly-only flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# Rust code is memory safe, so coverage guidance without AddressSanitizer finds the panics and
# logic failures these targets look for, and builds far faster; FUZZ_SANITIZER=address for ASan.
san="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-2}"
CARGO_BUILD_JOBS="$jobs" cargo fuzz build --release --sanitizer "$san"
status=0
for t in $(cargo fuzz list); do
    mkdir -p "corpus/$t" "target/logs"
    log="target/logs/$t.log"
    if CARGO_BUILD_JOBS="$jobs" cargo fuzz run --release --sanitizer "$san" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        echo "$t: ${execs:-?} executions in ${secs}s, no crash"
    else
        echo "$t: CRASH (log follows)"
        tail -40 "$log"
        status=1
    fi
done
exit "$status"
