#!/usr/bin/env bash
# Installs everything trace-collector needs on Debian 12 (bookworm), idempotently:
#   - the bookworm-backports suite (for QEMU 10.0.2 with TCG plugin support)
#   - qemu-system-arm (lm3s6965evb, virt), qemu-system-aarch64,
#     qemu-system-x86 (q35, for the x86-64 guest) and qemu-system-riscv
#     (qemu-system-riscv64's virt machine, for the RISC-V 64 guest; it
#     depends on opensbi >> 1.5.1, QEMU's default firmware for virt,
#     /usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin, which
#     bookworm-backports has and bookworm's 1.1 is not)
#   - the bare-metal cross toolchains for the test firmware
#   - capnproto (the Cap'n Proto schema compiler used by schema/build.rs)
#   - QEMU's execlog and mem plugins, built from the installed QEMU's source (qemu-execlog.sh)
#   - the x86-64 test guest: Debian's amd64 kernel and a busybox initramfs (x86-guest.sh)
#   - the arm64 test guest: Debian's arm64 kernel and a busybox initramfs
#     (arm64-guest.sh, the benchmark's inputs)
#   - the RISC-V 64 test guest: Debian trixie's riscv64 kernel and a busybox
#     initramfs (riscv-guest.sh)
#   - Perfetto's compiled trace protos (the `perfetto` Python package, pinned
#     with its protobuf runtime by version and sha256 in
#     tests/perfetto/requirements.txt), in ~/.cache/trace-collector/python
# Run as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES_MAIN=(capnproto gcc libc6-dev gcc-arm-none-eabi libnewlib-arm-none-eabi gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu pkg-config libclang-dev libglib2.0-dev curl cpio xz-utils)
PACKAGES_BACKPORTS=(qemu-system-arm qemu-system-aarch64 qemu-system-x86 qemu-system-riscv opensbi qemu-utils)

have_backports() {
    grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

add_backports() {
    # Reuse the mirror this machine already uses for bookworm, so the script works
    # behind whatever mirror or proxy the machine is configured with.
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ /bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        echo "setup.sh: cannot find the bookworm mirror in apt's sources; add bookworm-backports by hand" >&2
        exit 1
    fi
    echo "setup.sh: adding bookworm-backports from $uri"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
        | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
}

need_install=0
for p in "${PACKAGES_MAIN[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need_install=1; done
for p in "${PACKAGES_BACKPORTS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need_install=1; done
for q in qemu-system-arm qemu-system-x86_64 qemu-system-riscv64; do
    if ! "$q" --version 2>/dev/null | grep -q "version 10\."; then need_install=1; fi
done

if [ "$need_install" -eq 1 ]; then
    have_backports || add_backports
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES_MAIN[@]}"
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${PACKAGES_BACKPORTS[@]}"
fi

# DuckDB (Python), for the tests that cross-check trace-query's SQL answers.
if ! python3 -c "import duckdb" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check duckdb
fi

# Perfetto's trace protos (Python), for the test that reads
# `trace-query perfetto`'s output back (tests/perfetto/check_trace.py), in
# a directory of their own, outside the repository and the system's Python.
PERFETTO_PY="$HOME/.cache/trace-collector/python/perfetto-0.59.1"
if ! PYTHONPATH="$PERFETTO_PY" python3 -c "from perfetto.protos.perfetto.trace import perfetto_trace_pb2" 2>/dev/null; then
    rm -rf "$PERFETTO_PY"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
        --target "$PERFETTO_PY" -r "$(dirname "$0")/../tests/perfetto/requirements.txt"
fi

# QEMU's own execlog plugin, built from the installed QEMU's source, for the
# tests that compare `trace-query execlog` with it, and its mem plugin, for
# the x86-64 test's count of accesses.
bash "$(dirname "$0")/qemu-execlog.sh" >/dev/null
bash "$(dirname "$0")/qemu-execlog.sh" mem >/dev/null

# The x86-64 test guest (Debian's kernel and busybox, cached).
bash "$(dirname "$0")/x86-guest.sh" >/dev/null
bash "$(dirname "$0")/arm64-guest.sh" >/dev/null
# The RISC-V 64 test guest (Debian trixie's kernel and busybox, cached).
bash "$(dirname "$0")/riscv-guest.sh" >/dev/null

qemu-system-arm --version | head -n1
qemu-system-x86_64 --version | head -n1
qemu-system-riscv64 --version | head -n1
capnp --version
arm-none-eabi-gcc --version | head -n1
