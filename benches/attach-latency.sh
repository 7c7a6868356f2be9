#!/usr/bin/env bash
# How long `trace-collector attach` takes to get its first event from a QEMU
# that runs with the shim loaded and no collector (issue 17), per `idle`
# mode: QEMU is started with the shim, left to run, then
#
#   trace-collector attach --pid P --events mem --max-events 1
#
# ends as soon as the first access arrives. Reported per run: the attach
# command's wall time (process start, segment, attach, the shim's
# re-instrumentation, the first event, detach, the Parquet files), and
# capture.json's window, attached_at -> ended_at (the attach done -> the
# window over and detached: the shim noticing the attach, re-translating,
# the first event's chunk, the detach's flush).
#
#   bash benches/attach-latency.sh [--runs N] [--workloads m3loop,boot-smp1] [--idles free,lazy,count]
#
# Prints a Markdown table; appends nothing anywhere. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
INPUTS="${BENCH_INPUTS:-$HOME/.cache/trace-collector/bench-inputs}"
WORK="${BENCH_WORK:-$HOME/.cache/trace-collector/bench-work}"
export BENCH_INPUTS="$INPUTS"

runs=5
workloads=m3loop,boot-smp1
idles=free,lazy,count
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift ;;
        --workloads) workloads="$2"; shift ;;
        --idles) idles="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "attach-latency.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

# The whole workspace, as e2e.sh builds it (the same artifacts).
cargo build --release --workspace --locked
bash "$ROOT/benches/fetch-inputs.sh"
# A long m3loop: it must still run when the attach comes.
make -s -C "$ROOT/tests/firmware" m3loop ITERATIONS=100000000 OUT="$WORK/fw" >/dev/null

python3 - "$CARGO_TARGET_DIR/release" "$INPUTS" "$WORK/fw/m3loop-100000000.elf" "$WORK/attach-latency" \
    "$runs" "$workloads" "$idles" <<'EOF'
import json, os, shutil, statistics, subprocess, sys, time
from pathlib import Path

target, inputs, m3loop, work, runs, workloads, idles = sys.argv[1:]
target, inputs, work = Path(target), Path(inputs), Path(work)
runs = int(runs)
QEMU = {
    "m3loop": ["qemu-system-arm", "-M", "lm3s6965evb", "-nographic", "-monitor", "none",
               "-serial", "null", "-semihosting-config", "enable=on,target=native",
               "-kernel", m3loop],
    # Attached 0.4 s into a boot of about 1.3 s: the kernel is running.
    "boot-smp1": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512",
                  "-smp", "1", "-nographic", "-nic", "none", "-kernel", str(inputs / "Image"),
                  "-initrd", str(inputs / "initrd.cpio.gz"),
                  "-append", "console=ttyAMA0 panic=-1 quiet rdinit=/init"],
}
SETTLE = {"m3loop": 0.5, "boot-smp1": 0.4}

def one(workload, idle, n):
    out = work / f"{workload}-{idle}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    qemu = subprocess.Popen(QEMU[workload] + ["-plugin", f"{target}/libtrace_shim.so,idle={idle}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seg = Path(f"/dev/shm/trace-collector.{qemu.pid}")
        deadline = time.monotonic() + 10
        while not seg.exists():
            if time.monotonic() > deadline:
                sys.exit(f"{workload}: no segment after 10 s")
            time.sleep(0.005)
        time.sleep(SETTLE[workload])
        t0 = time.monotonic()
        r = subprocess.run([str(target / "trace-collector"), "attach", "--pid", str(qemu.pid),
                            "--out", str(out), "--events", "mem", "--max-events", "1", "--quiet"],
                           capture_output=True, text=True, timeout=60)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit(f"{workload} idle={idle}: attach failed: {r.stderr}")
        j = json.loads((out / "capture.json").read_text())
        if j["tables"]["mem"] != 1 or j["end"] != "window_ended":
            sys.exit(f"{workload} idle={idle}: not one event in a window: {j['tables']} {j['end']}")
        w = j["window"]
        return wall, w["ended_at"] - w["attached_at"]
    finally:
        qemu.kill()
        qemu.wait()

rows = []
for workload in workloads.split(","):
    for idle in idles.split(","):
        if workload == "m3loop" and idle == "lazy":
            # Its busy loop neither translates nor idles: a lazy shim never
            # notices the attach (README, `idle`).
            continue
        res = [one(workload, idle, n) for n in range(runs)]
        walls = [r[0] for r in res]
        windows = [r[1] for r in res]
        rows.append((workload, idle, statistics.median(walls), min(walls), max(walls),
                     statistics.median(windows), min(windows), max(windows)))

print(f"`trace-collector attach --events mem --max-events 1` on a running QEMU with the shim, "
      f"{runs} runs each, medians [min–max]; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
print("| workload | idle | attach command, wall ms | window: attached → first event, detached, ms |")
print("|---|---|---|---|")
for w, idle, m, lo, hi, wm, wlo, whi in rows:
    print(f"| {w} | {idle} | {m*1000:.0f} [{lo*1000:.0f}–{hi*1000:.0f}] | "
          f"{wm*1000:.0f} [{wlo*1000:.0f}–{whi*1000:.0f}] |")
EOF
