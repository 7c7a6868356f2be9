#!/usr/bin/env bash
# The main job (README "The two commands"): build everything, capture the
# bundled example firmware (tests/firmware/m3: prints "Hello", programs
# SysTick, fills a RAM buffer, pokes two unimplemented devices) from its first
# instruction, and query the capture.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trace-collector/target}"
bin="$CARGO_TARGET_DIR/release"
out="${1:-trace-demo}"

cargo build --release --workspace --locked
make -s -C tests/firmware OUT="$bin/firmware"

echo "== capturing $bin/firmware/m3.elf into $out/"
"$bin/trace-collector" run --overwrite --out "$out" --events mem,mmio,insn -- \
    qemu-system-arm -M lm3s6965evb -nographic -monitor none -serial stdio \
    -semihosting-config enable=on,target=native -kernel "$bin/firmware/m3.elf"

echo "== MMIO accesses per device"
"$bin/trace-query" --trace "$out" \
    "select device, type, count(*) as accesses from mmio group by device, type order by device, type"

echo "== the SysTick accesses, as PANDA's mmio_trace would log them"
"$bin/trace-query" mmio-json --trace "$out" | grep systick
