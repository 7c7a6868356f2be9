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

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v cpio >/dev/null; then
    echo "riscv-guest: installing cpio" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cpio >/dev/null \
        || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cpio >/dev/null; }
fi

# The mirror this machine installs bookworm from (else Debian's); it carries trixie too.
uri=$(apt-get indextargets --format '$(REPO_URI)' "Release: bookworm" 2>/dev/null | head -n1 || true)
uri=${uri:-http://deb.debian.org/debian/}

# A private apt state for trixie's riscv64 packages: its own sources list,
# lists and archives in the cache, no dpkg state.
APT_DIR="$GUEST/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$APT_DIR/sources.list"
APT_OPTS=(
    -o APT::Architecture=riscv64 -o APT::Architectures::=riscv64
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
    -o Dir::State::status=/dev/null -o Debug::NoLocking=1
    -o APT::Sandbox::User=root
)
echo "riscv-guest: updating trixie's package lists (private, under $APT_DIR)" >&2
apt-get "${APT_OPTS[@]}" update -qq >/dev/null

work=$(mktemp -d "$GUEST/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- the kernel
pkg=$(apt-cache "${APT_OPTS[@]}" depends linux-image-riscv64 \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "riscv-guest: cannot resolve linux-image-riscv64's kernel package" >&2; exit 1; }
echo "riscv-guest: downloading $pkg and busybox-static" >&2
(cd "$work" && apt-get "${APT_OPTS[@]}" download -qq "$pkg:riscv64" busybox-static:riscv64 >/dev/null)
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
dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
root="$work/root"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
# trixie's is /usr/bin/busybox (merged /usr), bookworm's /bin/busybox.
bb="$work/deb/usr/bin/busybox"
[ -f "$bb" ] || bb="$work/deb/bin/busybox"
cp "$bb" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
# The workload: a file written and read back in user space (tmpfs), its
# checksum printed, then the machine powered off by the kernel (SBI).
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox seq 1 2000 > /tmp/numbers
/bin/busybox echo "trace-collector riscv guest: $(/bin/busybox uname -m) $(/bin/busybox wc -l < /tmp/numbers) lines, md5 $(/bin/busybox md5sum < /tmp/numbers | /bin/busybox cut -d' ' -f1)"
/bin/busybox poweroff -f
EOF
chmod 755 "$root/init"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
    | gzip -9n > "$work/initrd.cpio.gz"

for deb in "$work"/linux-image-*.deb "$work"/busybox-static_*.deb; do
    dpkg-deb --showformat='${Package}:${Architecture} ${Version}\n' -W "$deb"
done > "$work/versions"
mv "$work/Image" Image
mv "$work/initrd.cpio.gz" initrd.cpio.gz
mv "$work/versions" versions
echo "$INIT_VERSION" > init-version
echo "riscv-guest: $GUEST: $(tr '\n' ' ' < versions)" >&2
echo "$GUEST"
