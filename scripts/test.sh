#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run runs it too).
# Builds the whole workspace in release mode (the end-to-end tests run the
# built trace-collector, trace-query and libtrace_shim.so under a real QEMU),
# then runs every test. Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Outside the clone, so that a machine that built before builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
cargo build --release --workspace --locked
cargo test --release --workspace --locked
