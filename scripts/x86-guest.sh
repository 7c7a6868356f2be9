#!/usr/bin/env bash
# Fetches and prepares the x86-64 test guest (tests/tests/x86_64.rs),
# idempotently, under $X86_GUEST (default $HOME/.cache/trace-collector/x86-guest),
# and prints the directory:
#
#   vmlinuz          Debian bookworm's amd64 kernel (linux-image-<abi>-amd64's bzImage)
#   vmlinux          the same kernel decompressed (the bzImage's xz payload): an ELF
#                    QEMU boots through its PVH entry point, without the 1.2 billion
#                    instructions of the bzImage's own decompression under TCG
#   initrd.cpio.gz   a tiny initramfs: Debian bookworm's busybox-static (amd64) and an
#                    /init that runs a small known workload and tests/guest/fill.c
#                    (built here, static), and powers the machine off by itself
#                    (`poweroff -f`)
#   versions         the two packages they came from
#
# Boot it with (vmlinuz works too, slower):
#   qemu-system-x86_64 -M q35 -m 256 -nographic -no-reboot -nic none -vga none \
#       -kernel DIR/vmlinux -initrd DIR/initrd.cpio.gz \
#       -append 'console=ttyS0 quiet panic=-1 rdinit=/init'
#
# Nothing is installed: bookworm's package lists live in a private apt state
# under the cache (signed by Debian's archive key, as apt checks them), and
# `apt-get download` only downloads the two .deb files, like
# benches/fetch-inputs.sh does for arm64. Needs apt-get, dpkg-deb, gzip and
# cpio and xz (installed with apt-get when missing; root or sudo), gcc with a
# static libc (libc6-dev; setup.sh installs it) for tests/guest/fill.c, and,
# the first time, the network. A no-op once cached.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
GUEST="${X86_GUEST:-$HOME/.cache/trace-collector/x86-guest}"
NAME=x86-guest
# shellcheck source=guest-lib.sh
. "$REPO/scripts/guest-lib.sh"
mkdir -p "$GUEST"
cd "$GUEST"

# Bump when the initramfs's /init changes: a cached guest of another
# version is rebuilt.
INIT_VERSION=2

if [ -s vmlinuz ] && [ -s vmlinux ] && [ -s initrd.cpio.gz ] && [ -s versions ] \
    && [ "$(cat init-version 2>/dev/null)" = "$INIT_VERSION" ]; then
    echo "$GUEST"
    exit 0
fi

work=$(mktemp -d "$GUEST/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- the kernel
guest_download bookworm amd64 "$work"
dpkg-deb --fsys-tarfile "$work"/linux-image-*.deb \
    | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
cp "$(ls "$work"/boot/vmlinuz-* | head -n1)" "$work/vmlinuz"
# The bzImage's compressed kernel (Documentation/arch/x86/boot.rst): it
# starts payload_offset (header field at 0x248) bytes into the protected-mode
# code, which follows the (setup_sects + 1) * 512 bytes of the real-mode part
# (setup_sects at 0x1f1), and is payload_length (0x24c) bytes long.
field() { od -An -t"u$2" -j "$1" -N "$2" "$work/vmlinuz" | tr -d ' '; }
setup_sects=$(field $((0x1f1)) 1)
payload_offset=$(field $((0x248)) 4)
payload_length=$(field $((0x24c)) 4)
start=$(( (setup_sects + 1) * 512 + payload_offset ))
if [ "$(od -An -tx1 -j "$start" -N 6 "$work/vmlinuz" | tr -d ' ')" != "fd377a585a00" ]; then
    echo "x86-guest: the kernel's payload is not xz-compressed" >&2
    exit 1
fi
head -c $((start + payload_length)) "$work/vmlinuz" | tail -c +$((start + 1)) | xz -dc --single-stream > "$work/vmlinux"

# ------------------------------------------------------------- the initramfs
guest_root "$work"
# A process whose buffer a test asks bufmon for (its address is fixed: static,
# not position-independent).
gcc -static -no-pie -O1 -o "$work/root/bin/fill" "$REPO/tests/guest/fill.c"
guest_initramfs "$work" x86 /bin/fill

mv "$work/vmlinuz" vmlinuz
mv "$work/vmlinux" vmlinux
mv "$work/initrd.cpio.gz" initrd.cpio.gz
mv "$work/versions" versions
echo "$INIT_VERSION" > init-version
echo "x86-guest: $GUEST: $(tr '\n' ' ' < versions)" >&2
echo "$GUEST"
