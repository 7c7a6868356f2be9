#!/usr/bin/env bash
# Builds QEMU's own execlog plugin (contrib/plugins/execlog.c) from the
# source of the QEMU installed here, for tests/tests/execlog.rs, which runs
# it in the same QEMU run as a capture and compares its log line by line
# with `trace-query execlog`. Prints the plugin's path.
#
# `qemu-execlog.sh mem` builds and prints QEMU's test plugin that counts
# memory accesses (tests/tcg/plugins/mem.c) instead, from the same source,
# for tests/tests/x86_64.rs (`callback=true,haddr=true`: RAM and I/O
# accesses, counted apart).
#
# The source is Debian's: the upstream tarball of the installed
# qemu-system-arm's source package, found in the signed Sources index of
# the suite it came from and checked against that index's SHA-256. Only
# the plugin's source and the headers it includes are taken from it, as released upstream
# (Debian's packaging patches are not applied).
# Cached in $HOME/.cache/trace-collector/qemu-execlog/<version>/, so this is
# a no-op once built. Needs gcc, pkg-config and libglib2.0-dev (setup.sh
# installs them) and, the first time, the network.
set -euo pipefail

version=$(dpkg-query -W -f='${source:Version}' qemu-system-arm 2>/dev/null) || {
    echo "qemu-execlog.sh: qemu-system-arm is not installed (run scripts/setup.sh)" >&2
    exit 1
}
case "${1:-execlog}" in
    execlog) plugin_source=contrib/plugins/execlog.c; headers=(qemu-plugin.h) ;;
    # mem.c also takes two of QEMU's headers (macros only).
    mem) plugin_source=tests/tcg/plugins/mem.c; headers=(qemu-plugin.h compiler.h bswap.h) ;;
    *) echo "usage: qemu-execlog.sh [execlog|mem]" >&2; exit 2 ;;
esac
cache="$HOME/.cache/trace-collector/qemu-execlog/${version//:/_}"
plugin="$cache/lib${1:-execlog}.so"
if [ -f "$plugin" ]; then
    echo "$plugin"
    exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d)
chmod 755 "$work" # apt downloads as its own user
trap 'rm -rf "$work"' EXIT

# The mirror and suite apt installed QEMU from (bookworm-backports here).
suite=bookworm-backports
uri=$(apt-get indextargets --format '$(REPO_URI)' "Release: $suite" 2>/dev/null | head -n1 || true)
uri=${uri:-http://deb.debian.org/debian/}
uri=${uri%/}

# The suite's Sources index, through a private apt state (apt checks the
# index against the suite's signed InRelease).
mkdir -p "$work/lists/partial" "$work/cache"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$work/sources.list"
apt=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
apt-get "${apt[@]}" update -qq
index=$(find "$work/lists" -maxdepth 1 -name "*${suite}_main_source_Sources*" | head -n1)
[ -n "$index" ] || { echo "qemu-execlog.sh: no Sources index for $suite from $uri" >&2; exit 1; }

# qemu's stanza of that version: its upstream tarball and SHA-256.
read -r sha tarball < <(/usr/lib/apt/apt-helper cat-file "$index" | awk -v want="$version" '
    /^Package: / { pkg = $2 }
    /^Version: / { ver = $2 }
    /^Checksums-Sha256:/ { in_sums = 1; next }
    /^[^ ]/ { in_sums = 0 }
    /^$/ { pkg = ""; ver = "" }
    in_sums && pkg == "qemu" && ver == want && $3 ~ /\.orig\.tar\./ { print $1, $3; exit }')
[ -n "${tarball:-}" ] || { echo "qemu-execlog.sh: qemu $version is not in $suite's Sources" >&2; exit 1; }

curl -fsSL -o "$work/$tarball" "$uri/pool/main/q/qemu/$tarball"
echo "$sha  $work/$tarball" | sha256sum -c --quiet -
tar -xf "$work/$tarball" -C "$work" --wildcards "*/$plugin_source" "${headers[@]/#/*/include/qemu/}"
src=$(find "$work" -path "*/include/qemu/qemu-plugin.h")
src=$(dirname "$(dirname "$(dirname "$src")")")

# shellcheck disable=SC2046 # pkg-config's flags are words
gcc -shared -fPIC -O2 -I"$src/include/qemu" $(pkg-config --cflags glib-2.0) \
    "$src/$plugin_source" -o "$plugin.tmp" $(pkg-config --libs glib-2.0)
mv "$plugin.tmp" "$plugin"
echo "$plugin"
