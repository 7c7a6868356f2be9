#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs it too).
# Builds the whole workspace in release mode (the end-to-end tests run the
# built trace-collector, trace-query and libtrace_shim.so under a real QEMU),
# then runs every test, and ends with the total of all test binaries.
# Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Outside the clone, so that a machine that built before builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
cargo build --release --workspace --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --locked 2>&1 | tee "$log" || status=$?
# cargo prints one summary per test binary, the last often a doc-test run of
# 0 tests: say the total on the last line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
