#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time each:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s; default all targets)
#
# Targets: shm_ring (the shared-memory ring reader/writer), frame_stream (the stream frame
# decoder, close marker included), typed_decode (postcard decoding into a typed message),
# shm_setup (the shm set-up replies), endpoint_parse (endpoints and every transport's
# options), udp_tags (the udp datagram tags and the listener's peer table). The
# total is SECONDS_PER_TARGET times the number of targets, plus building them once (about a
# minute). A crash stops the script with libFuzzer's report and the input under
# fuzz/artifacts/TARGET/.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer wants nightly flags; on a
# stable toolchain RUSTC_BOOTSTRAP=1 unlocks them, which is what this script does. Without
# cargo-fuzz it runs the deterministic sweeps of the same checks instead and says so (exit 0),
# so a machine without the fuzzer still checks the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(shm_ring frame_stream typed_decode shm_setup endpoint_parse udp_tags stream_start)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed; running the deterministic sweeps instead"
    cargo test -p ductwork-codec --lib
    exec cargo test -p ductwork-transports --lib shm::ring
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
for t in "${targets[@]}"; do
    case "$t" in
        shm_ring) max_len=8192 ;;
        *) max_len=65536 ;;
    esac
    mkdir -p "corpus/$t"
    echo "fuzz: $t for $secs s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len="$max_len" \
        -rss_limit_mb=1024 -print_final_stats=1
done
