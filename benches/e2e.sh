#!/usr/bin/env bash
# The end-to-end benchmark: trace-collector against its yardsticks, on real
# guests, side by side. See benches/README.md.
#
#   bash benches/e2e.sh                 # the full matrix -> benches/RESULTS.md
#   bash benches/e2e.sh --quick         # a short smoke run (m3loop only, 1 run) -> $WORK/RESULTS-quick.md
#
# Options (after the mode):
#   --runs N                 runs per configuration (default 3; --quick: 1)
#   --workloads a,b          of boot-smp1, boot-smp2, m3loop (default: all three; --quick: m3loop)
#   --configs a,b            of none, floor-mem, floor-exec, floor-mem-inline, floor-mem-insn-add,
#                            floor-mem-ask-io, floor-mem-ask-data, floor-block, textlog,
#                            shim-detached, shim-idle-free, shim-idle-lazy,
#                            shim-idle-count, null-mmio, ours-mmio, null-mem, ours-mem, null-insn, ours-insn,
#                            ours-all (default: all)
#   --m3loop-iterations N    (default 10000000; --quick: 200000)
#   --results FILE           where the Markdown goes (default benches/RESULTS.md; --quick: $WORK/RESULTS-quick.md)
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/trace-collector/target),
# BENCH_INPUTS (default $HOME/.cache/trace-collector/bench-inputs),
# BENCH_WORK (default $HOME/.cache/trace-collector/bench-work: run directories,
# the raw JSON lines of every run, and the last capture of each configuration).
#
# Run it on a quiet machine: the summary reports how much CPU other processes
# used during the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
INPUTS="${BENCH_INPUTS:-$HOME/.cache/trace-collector/bench-inputs}"
WORK="${BENCH_WORK:-$HOME/.cache/trace-collector/bench-work}"
export BENCH_INPUTS="$INPUTS"

ARGS_TEXT="$*"
quick=0
runs=""
workloads=""
configs=""
iterations=""
results=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --runs) runs="$2"; shift ;;
        --workloads) workloads="$2"; shift ;;
        --configs) configs="$2"; shift ;;
        --m3loop-iterations) iterations="$2"; shift ;;
        --results) results="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "e2e.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
raw="$WORK/e2e-raw.jsonl"
if [ "$quick" -eq 1 ]; then
    runs="${runs:-1}"; workloads="${workloads:-m3loop}"; iterations="${iterations:-200000}"
    results="${results:-$WORK/RESULTS-quick.md}"
    raw="$WORK/e2e-raw-quick.jsonl"
fi
runs="${runs:-3}"
workloads="${workloads:-boot-smp1,boot-smp2,m3loop}"
configs="${configs:-none,floor-mem,floor-exec,floor-mem-inline,floor-mem-insn-add,floor-mem-ask-io,floor-mem-ask-data,floor-block,textlog,shim-detached,shim-idle-free,shim-idle-lazy,shim-idle-count,null-mmio,ours-mmio,null-mem,ours-mem,null-insn,ours-insn,ours-all}"
iterations="${iterations:-10000000}"
results="${results:-$ROOT/benches/RESULTS.md}"
mkdir -p "$WORK"

# Everything in release mode (never a debug build).
# The whole workspace, as scripts/test.sh builds it: the same features, so
# the same artifacts (a build of some packages only would build polars a
# second time with their features), and every binary current (with `-p ...
# --bin null-collector`, cargo used to build that binary only and leave a
# stale trace-collector to be measured).
cargo build --release --workspace
T="$CARGO_TARGET_DIR/release"
for f in trace-collector trace-query libtrace_shim.so libbench_floor.so libbench_textlog.so null-collector; do
    [ -e "$T/$f" ] || { echo "e2e.sh: $T/$f was not built" >&2; exit 1; }
done

bash "$ROOT/benches/fetch-inputs.sh"

m3loop_args=()
if [[ ",$workloads," == *",m3loop,"* ]]; then
    if [ -d "$ROOT/tests/firmware/m3loop" ]; then
        make -s -C "$ROOT/tests/firmware" m3loop ITERATIONS="$iterations" OUT="$WORK/fw" >/dev/null
        m3loop_args=(--m3loop-elf "$WORK/fw/m3loop-$iterations.elf" --m3loop-iterations "$iterations")
    else
        echo "e2e.sh: tests/firmware/m3loop does not exist yet: m3loop skipped" >&2
    fi
fi

git_desc="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
dirty=$(git status --porcelain 2>/dev/null | awk '$2 !~ /^benches\// {print $2}' | paste -sd' ' || true)
[ -n "$dirty" ] && git_desc="$git_desc + uncommitted changes in: $dirty"

python3 "$ROOT/benches/e2e.py" \
    --inputs "$INPUTS" \
    --inputs-desc "$(cat "$INPUTS/kernel-version") (Image), $(cat "$INPUTS/busybox-version") (initrd)" \
    --work "$WORK/runs" --target-dir "$T" \
    --runs "$runs" --workloads "$workloads" --configs "$configs" \
    "${m3loop_args[@]}" \
    --results "$results" --raw "$raw" \
    --git="$git_desc" --cmdline="$ARGS_TEXT"
echo "e2e.sh: results in $results; every run in $raw" >&2
