# What scripts/x86-guest.sh and scripts/riscv-guest.sh share, sourced by
# them: Debian's kernel and busybox-static for one architecture, downloaded
# through a private apt state (nothing installed), and the initramfs whose
# /init runs the guests' workload. The sourcing script sets GUEST (its cache
# directory) and NAME (its name in messages).

# guest_download SUITE ARCH WORK: downloads SUITE's linux-image-ARCH kernel
# package and busybox-static:ARCH into WORK. The package lists live under
# $GUEST/apt, signed by Debian's archive key (apt checks them).
guest_download() {
    local suite=$1 arch=$2 work=$3
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! command -v cpio >/dev/null || ! command -v xz >/dev/null; then
        echo "$NAME: installing cpio and xz-utils" >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends cpio xz-utils >/dev/null \
            || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends cpio xz-utils >/dev/null; }
    fi
    # The mirror this machine installs bookworm from (else Debian's); it
    # carries trixie too.
    local uri
    uri=$(apt-get indextargets --format '$(REPO_URI)' "Release: bookworm" 2>/dev/null | head -n1 || true)
    uri=${uri:-http://deb.debian.org/debian/}
    local apt_dir="$GUEST/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$apt_dir/sources.list"
    local opts=(
        -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
        -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
        -o Dir::State::status=/dev/null -o Debug::NoLocking=1
        -o APT::Sandbox::User=root
    )
    echo "$NAME: updating $suite's package lists (private, under $apt_dir)" >&2
    apt-get "${opts[@]}" update -qq >/dev/null
    local pkg
    pkg=$(apt-cache "${opts[@]}" depends "linux-image-$arch" \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "$NAME: cannot resolve linux-image-$arch's kernel package" >&2; exit 1; }
    echo "$NAME: downloading $pkg and busybox-static" >&2
    (cd "$work" && apt-get "${opts[@]}" download -qq "$pkg:$arch" "busybox-static:$arch" >/dev/null)
}

# guest_root WORK: the initramfs's root, WORK/root, with busybox-static
# from WORK's package; the caller may add files before guest_initramfs.
guest_root() {
    local work=$1
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
    mkdir -p "$work/root/bin" "$work/root/dev" "$work/root/proc" "$work/root/sys" "$work/root/tmp"
    # trixie's is /usr/bin/busybox (merged /usr), bookworm's /bin/busybox.
    local bb="$work/deb/usr/bin/busybox"
    [ -f "$bb" ] || bb="$work/deb/bin/busybox"
    cp "$bb" "$work/root/bin/busybox"
    ln -s busybox "$work/root/bin/sh"
}

# guest_initramfs WORK LABEL [COMMAND...]: WORK/root's /init runs the
# workload (a file written and read back in user space, in tmpfs, its
# checksum printed as `trace-collector LABEL guest: ...`), then each
# COMMAND, then powers the machine off; packed as WORK/initrd.cpio.gz, with
# WORK/versions the packages the guest came from.
guest_initramfs() {
    local work=$1 label=$2
    shift 2
    {
        echo '#!/bin/busybox sh'
        echo '/bin/busybox mount -t proc proc /proc'
        echo '/bin/busybox mount -t tmpfs tmpfs /tmp'
        echo '/bin/busybox seq 1 2000 > /tmp/numbers'
        echo "/bin/busybox echo \"trace-collector $label guest: \$(/bin/busybox uname -m) \$(/bin/busybox wc -l < /tmp/numbers) lines, md5 \$(/bin/busybox md5sum < /tmp/numbers | /bin/busybox cut -d' ' -f1)\""
        local command
        for command in "$@"; do echo "$command"; done
        echo '/bin/busybox poweroff -f'
    } > "$work/root/init"
    chmod 755 "$work/root/init"
    (cd "$work/root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
        | gzip -9n > "$work/initrd.cpio.gz"
    local deb
    for deb in "$work"/linux-image-*.deb "$work"/busybox-static_*.deb; do
        dpkg-deb --showformat='${Package}:${Architecture} ${Version}\n' -W "$deb"
    done > "$work/versions"
}
