#!/usr/bin/env bash
# Fuzzes the shared-memory ring reader/writer (fuzz/fuzz_targets/shm_ring.rs) for a bounded
# time: `scripts/fuzz-shm.sh [SECONDS]` (default 60).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer wants nightly flags; on a stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks them, which is what this script does. Without
# cargo-fuzz it runs the deterministic randomized ring tests instead and says so (exit 0), so
# a machine without the fuzzer still checks the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-shm: cargo-fuzz is not installed; running the randomized ring tests instead"
    exec cargo test -p ductwork-transports --lib shm::ring
fi

mkdir -p fuzz/corpus/shm_ring
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz run shm_ring corpus/shm_ring -- -max_total_time="$secs" -max_len=8192 -rss_limit_mb=1024
