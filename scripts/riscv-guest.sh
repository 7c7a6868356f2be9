#!/usr/bin/env bash
# Fetches and prepares the RISC-V 64 test guest (tests/tests/riscv64.rs),
# idempotently, under $RISCV_GUEST (default $HOME/.cache/trace-collector/riscv-guest),
# and prints the directory:
#
#   Image            Debian trixie's riscv64 kernel (linux-image-<abi>-riscv64's
#                    /boot/vmlinux-<abi>, an uncompressed RISC-V Linux Image)
#   initrd.cpio.gz   a tiny initramfs: Debian trixie's busybox-static (riscv64) and an
#                    /init that runs a small known workload and powers the machine
#                    off by itself (`poweroff -f`)
#   versions         the two packages they came from
#
# Boot it with (QEMU's default firmware, OpenSBI's fw_dynamic.bin from the
# `opensbi` package setup.sh installs with qemu-system-riscv, starts the kernel
# in S-mode):
#   qemu-system-riscv64 -M virt -m 512 -nographic -no-reboot -nic none \
#       -kernel DIR/Image -initrd DIR/initrd.cpio.gz \
#       -append 'console=ttyS0 quiet panic=-1 rdinit=/init'
#
# riscv64 is an official Debian architecture from trixie (13) on, not in
# bookworm, so the packages come from trixie. Nothing is installed:
# trixie's package lists live in a private apt state under the cache (signed
# by Debian's archive key, as apt checks them), and `apt-get download` only
# downloads the two .deb files, as scripts/x86-guest.sh does for amd64.
# Needs apt-get, dpkg-deb, gzip and cpio (installed with apt-get when
# missing; root or sudo), and, the first time, the network. A no-op once cached.
set -euo pipefail

GUEST="${RISCV_GUEST:-$HOME/.cache/trace-collector/riscv-guest}"
NAME=riscv-guest
# shellcheck source=guest-lib.sh
. "$(dirname "$0")/guest-lib.sh"
mkdir -p "$GUEST"
cd "$GUEST"

# Bump when the initramfs's /init changes: a cached guest of another
# version is rebuilt.
INIT_VERSION=1

if [ -s Image ] && [ -s initrd.cpio.gz ] && [ -s versions ] \
    && [ "$(cat init-version 2>/dev/null)" = "$INIT_VERSION" ]; then
    echo "$GUEST"
    exit 0
fi

work=$(mktemp -d "$GUEST/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- the kernel
guest_download trixie riscv64 "$work"
dpkg-deb --fsys-tarfile "$work"/linux-image-*.deb \
    | tar -x -C "$work" --wildcards './boot/vmlinu*'
kernel=$(ls "$work"/boot/vmlinu* | head -n1)
# A RISC-V Linux Image: "RISCV\0\0\0" at 0x30, "RSC\x05" at 0x38
# (Documentation/arch/riscv/boot-image-header.rst).
if [ "$(od -An -c -j 48 -N 5 "$kernel" | tr -d ' ')" != "RISCV" ]; then
    echo "riscv-guest: $kernel is not a RISC-V Linux Image" >&2
    exit 1
fi
cp "$kernel" "$work/Image"

# ------------------------------------------------------------- the initramfs
guest_root "$work"
guest_initramfs "$work" riscv

mv "$work/Image" Image
mv "$work/initrd.cpio.gz" initrd.cpio.gz
mv "$work/versions" versions
echo "$INIT_VERSION" > init-version
echo "riscv-guest: $GUEST: $(tr '\n' ' ' < versions)" >&2
echo "$GUEST"
