#!/usr/bin/env bash
# The arm64 Linux test guest (tests/tests/aarch64_virt.rs): the end-to-end
# benchmark's inputs (benches/fetch-inputs.sh: Debian's arm64 kernel Image
# and a busybox initramfs that prints a line and powers off), fetched once
# and cached under $BENCH_INPUTS (default
# $HOME/.cache/trace-collector/bench-inputs). Prints that directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_INPUTS="${BENCH_INPUTS:-$HOME/.cache/trace-collector/bench-inputs}"
bash benches/fetch-inputs.sh >&2
echo "$BENCH_INPUTS"
