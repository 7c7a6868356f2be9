#!/usr/bin/env bash
# Soak test (not part of `cargo test`): captures the endless Cortex-M3 loop
# firmware (tests/firmware/m3loop, m3loop-0.elf: 5 accesses per 10
# instructions, forever) with `trace-collector run` for SECONDS (default
# 600), samples the collector's resident memory (VmRSS, /proc/<pid>/status)
# every second into a CSV, then stops the capture with SIGINT (the collector
# asks QEMU to exit and finishes the capture) and prints min/median/max RSS
# and the events captured.
#
#   scripts/soak.sh [SECONDS]
#
# Environment:
#   CARGO_TARGET_DIR  as for scripts/test.sh (default ~/.cache/trace-collector/target)
#   SOAK_OUT          where capture/, rss.csv and collector.log go
#                     (default $CARGO_TARGET_DIR/release/soak)
#   SOAK_EVENTS       the collector's --events (default mem,mmio)
#   SOAK_PRUNE=1      delete the mem/mmio parts as they are written, to bound
#                     the disk use (otherwise about 5 bytes per event: some
#                     GB for 10 minutes)
#
# The machine should be otherwise idle: QEMU and the collector each keep a
# core busy.
set -euo pipefail

seconds="${1:-600}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "usage: $0 [SECONDS]   (a whole number of seconds, default 600)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
bin="$CARGO_TARGET_DIR/release"
out="${SOAK_OUT:-$bin/soak}"
events="${SOAK_EVENTS:-mem,mmio}"
prune="${SOAK_PRUNE:-0}"

cargo build --release --workspace --locked
make -s -C tests/firmware OUT="$bin/firmware"

mkdir -p "$out"
cap="$out/capture"
csv="$out/rss.csv"
log="$out/collector.log"

"$bin/trace-collector" run --overwrite --quiet --out "$cap" --events "$events" -- \
    qemu-system-arm -M lm3s6965evb -nographic -monitor none -serial null \
    -kernel "$bin/firmware/m3loop-0.elf" 2>"$log" &
pid=$!

# Stops the collector (SIGINT: it stops QEMU and finishes the capture); after
# 30 s, SIGKILL it and the QEMU it started. Returns the collector's status.
stop() {
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "soak: the collector did not stop within 30 s of SIGINT: killing it" >&2
        local qemu
        qemu=$(sed -n 's/^  "qemu_pid": \([0-9]*\),$/\1/p' "$cap/capture.json" 2>/dev/null || true)
        kill -KILL "$pid" 2>/dev/null || true
        [[ -n "$qemu" ]] && kill -KILL "$qemu" 2>/dev/null || true
    fi
    local rc=0
    wait "$pid" || rc=$?
    pid=""
    return "$rc"
}
trap '[[ -n "$pid" ]] && stop; exit 130' INT TERM
trap '[[ -n "$pid" ]] && stop' EXIT

# Rows written so far to `mem` (or `mmio`), from capture.json.
rows_so_far() {
    local t
    t=$(sed -n 's/^    "mem": \([0-9]*\),\{0,1\}$/\1/p' "$cap/capture.json" 2>/dev/null || true)
    [[ -z "$t" ]] && t=$(sed -n 's/^    "mmio": \([0-9]*\),\{0,1\}$/\1/p' "$cap/capture.json" 2>/dev/null || true)
    echo "${t:-0}"
}

echo "soak: capturing m3loop-0 (--events $events) for $seconds s; collector pid $pid; RSS samples in $csv"
echo "seconds,rss_kib,rows_written" >"$csv"
start=$(date +%s.%N)
for ((i = 1; i <= seconds; i++)); do
    # Sample at start + i seconds, whatever the loop's own cost.
    delay=$(awk -v s="$start" -v i="$i" -v now="$(date +%s.%N)" 'BEGIN { d = s + i - now; print (d > 0 ? d : 0) }')
    sleep "$delay"
    if ! rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || [[ -z "$rss" ]]; then
        echo "soak: the collector exited after $i s; its messages:" >&2
        cat "$log" >&2
        pid=""
        exit 1
    fi
    echo "$i,$rss,$(rows_so_far)" >>"$csv"
    if [[ "$prune" == 1 ]]; then
        find "$cap/mem" "$cap/mmio" -name 'part-*.parquet' -delete 2>/dev/null || true
    fi
    if ((i % 60 == 0)); then
        echo "soak: $i s, RSS $rss KiB, $(rows_so_far) rows written"
    fi
done

rc=0
stop || rc=$?
trap - EXIT
if ((rc != 0)); then
    echo "soak: the collector exited with status $rc; its messages:" >&2
    cat "$log" >&2
    exit 1
fi

echo "== collector summary"
cat "$log"
echo "== collector RSS over $seconds samples (KiB)"
tail -n +2 "$csv" | cut -d, -f2 | sort -n | awk '
    { v[NR] = $1 }
    END {
        median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "min %d  median %d  max %d  (%.1f / %.1f / %.1f MiB)\n", v[1], median, v[NR], v[1] / 1024, median / 1024, v[NR] / 1024
    }'
# The first and last minute, to show (no) growth.
tail -n +2 "$csv" | awk -F, -v n="$seconds" '
    $1 <= 60 { a += $2; na++ }
    $1 > n - 60 { b += $2; nb++ }
    END { if (na && nb) printf "mean RSS, first minute %.1f MiB, last minute %.1f MiB\n", a / na / 1024, b / nb / 1024 }'
drained=$(sed -n 's/^  events drained: \([0-9]*\)$/\1/p' "$log")
lost=$(sed -n 's/^  events lost: //p' "$log")
echo "events captured: ${drained:-?} (lost: ${lost:-?}) in $seconds s"
if [[ "$prune" != 1 ]]; then
    echo "capture size: $(du -sh "$cap" | cut -f1) in $cap"
fi
