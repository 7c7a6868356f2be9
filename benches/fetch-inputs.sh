#!/usr/bin/env bash
# Fetches and prepares the inputs of the end-to-end benchmark (benches/e2e.sh),
# idempotently, under $BENCH_INPUTS (default $HOME/.cache/trace-collector/bench-inputs):
#
#   Image            Debian's arm64 kernel (linux-image-<abi>-arm64), decompressed
#   initrd.cpio.gz   a tiny initramfs: Debian's busybox-static:arm64 and an /init
#                    that prints a line and powers the machine off (`poweroff -f`)
#   kernel-version   which kernel package Image came from
#
# Nothing is installed for arm64 on this machine: the arm64 package lists live in
# a private apt state directory under the cache, and `apt-get download` only
# downloads the two .deb files. Needs: apt-get, dpkg-deb, gzip, cpio (installed
# with apt-get when missing; root or sudo).
#
# Usage: bash benches/fetch-inputs.sh [--check]
#   --check   also boot the kernel under plain QEMU (-smp 1 and 2) and report
#             that it exits by itself, and how long it takes.
set -euo pipefail

INPUTS="${BENCH_INPUTS:-$HOME/.cache/trace-collector/bench-inputs}"
mkdir -p "$INPUTS"
cd "$INPUTS"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v cpio >/dev/null; then
    echo "fetch-inputs: installing cpio" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cpio >/dev/null \
        || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cpio >/dev/null; }
fi

# A private apt "root" for arm64: lists and archives in the cache, no dpkg state.
APT_DIR="$INPUTS/apt-arm64"
APT_OPTS=(
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64
    -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
    -o Dir::State::status=/dev/null -o Debug::NoLocking=1
    -o APT::Sandbox::User=root
)

apt_ready=0
apt_lists() {
    if [ "$apt_ready" -eq 0 ]; then
        mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
        echo "fetch-inputs: updating the arm64 package lists (private, under $APT_DIR)" >&2
        apt-get "${APT_OPTS[@]}" update -qq >/dev/null
        apt_ready=1
    fi
}

# ---------------------------------------------------------------- the kernel
if [ ! -s Image ] || [ ! -s kernel-version ]; then
    apt_lists
    pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-arm64 \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "fetch-inputs: cannot resolve linux-image-arm64's kernel package" >&2; exit 1; }
    echo "fetch-inputs: downloading $pkg" >&2
    work=$(mktemp -d "$INPUTS/.kernel.XXXXXX")
    (cd "$work" && apt-get "${APT_OPTS[@]}" download -qq "$pkg:arm64" >/dev/null)
    dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
    vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -n1)
    # Debian's arm64 vmlinuz is a gzip'd Image; QEMU loads either, the plain
    # Image saves the decompression at every boot.
    if gzip -t "$vmlinuz" 2>/dev/null; then
        gzip -dc "$vmlinuz" > "$work/Image"
    else
        cp "$vmlinuz" "$work/Image"
    fi
    mv "$work/Image" Image
    dpkg-deb --showformat='${Package} ${Version}\n' -W "$work"/linux-image-*.deb > kernel-version
    rm -rf "$work"
fi

# ------------------------------------------------------------- the initramfs
if [ ! -s initrd.cpio.gz ] || [ ! -s busybox-version ]; then
    echo "fetch-inputs: downloading busybox-static:arm64" >&2
    work=$(mktemp -d "$INPUTS/.initrd.XXXXXX")
    apt_lists
    (cd "$work" && apt-get "${APT_OPTS[@]}" download -qq busybox-static:arm64 >/dev/null)
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
    root="$work/root"
    mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
    cp "$work/deb/bin/busybox" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox echo "trace-collector bench: booted $(/bin/busybox uname -r), $(/bin/busybox grep -c ^processor /proc/cpuinfo) cpu(s), up $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
/bin/busybox poweroff -f
EOF
    chmod 755 "$root/init"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
        | gzip -9n > "$work/initrd.cpio.gz"
    mv "$work/initrd.cpio.gz" initrd.cpio.gz
    dpkg-deb --showformat='${Package}:arm64 ${Version}\n' -W "$work"/busybox-static_*.deb > busybox-version
    rm -rf "$work"
fi

echo "fetch-inputs: $INPUTS: Image ($(cat kernel-version)), initrd.cpio.gz ($(cat busybox-version))" >&2

if [ "${1:-}" = "--check" ]; then
    for smp in 1 2; do
        start=$(date +%s%N)
        out=$(timeout 300 qemu-system-aarch64 -M virt -cpu cortex-a57 -m 512 -smp "$smp" -nographic -nic none \
            -kernel Image -initrd initrd.cpio.gz \
            -append "console=ttyAMA0 panic=-1 quiet rdinit=/init" </dev/null 2>&1) || {
            echo "fetch-inputs: the boot with -smp $smp did not exit cleanly:" >&2
            echo "$out" | tail -20 >&2
            exit 1
        }
        end=$(date +%s%N)
        echo "$out" | grep -q "trace-collector bench: booted" || { echo "$out" | tail -20 >&2; exit 1; }
        printf 'fetch-inputs: -smp %s boot exits by itself in %.2f s: %s\n' "$smp" \
            "$(awk -v a="$start" -v b="$end" 'BEGIN {print (b - a) / 1e9}')" "$(echo "$out" | grep 'trace-collector bench' | tr -d '\r')" >&2
    done
fi
