#!/usr/bin/env bash
# The style checks .ci/run makes after the tests: formatting, and clippy with
# every warning an error, over the whole workspace and all its targets.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "lint: clean"
