#!/usr/bin/env bash
# Fuzzes the shared-memory ring reader/writer (fuzz/fuzz_targets/shm_ring.rs) for a bounded
# time: `scripts/fuzz-shm.sh [SECONDS]` (default 60). Kept for existing callers; every
# target: scripts/fuzz.sh.
set -euo pipefail
exec bash "$(dirname "$0")/fuzz.sh" "${1:-60}" shm_ring
