#!/usr/bin/env bash
# Installs what cross-building the speedups for the Windows python needs, idempotently:
#   - Debian's gcc-mingw-w64-x86-64 (x86_64-w64-mingw32-gcc);
#   - the CPython 3.11 headers (Include/ and PC/pyconfig.h) from Debian's python3.11 source
#     package (3.11.2, the same 3.11 ABI as the embeddable 3.11.9), in .cache/cpython-headers.
# See ../shared/WINDOWS_ON_LINUX.md. Safe to run again: every step checks first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
headers="$here/.cache/cpython-headers"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -y -qq)

if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    echo "install-mingw: apt-get install gcc-mingw-w64-x86-64"
    apt-get "${apt_opts[@]}" update
    apt-get "${apt_opts[@]}" install --no-install-recommends gcc-mingw-w64-x86-64 >/dev/null
fi

if [ ! -f "$headers/Include/Python.h" ] || [ ! -f "$headers/PC/pyconfig.h" ]; then
    src_list=/etc/apt/sources.list.d/ntafd-deb-src.sources
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
        && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        echo "install-mingw: adding a deb-src entry for bookworm main ($src_list)"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n%s\n%s\n' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            >"$src_list"
        apt-get "${apt_opts[@]}" update
    fi
    tmp=$(mktemp -d)
    echo "install-mingw: apt-get source --download-only python3.11"
    (cd "$tmp" && apt-get -qq source --download-only python3.11 >/dev/null)
    orig=$(ls "$tmp"/python3.11_*.orig.tar.* | head -n1)
    [ -n "$orig" ] || { echo "install-mingw: no python3.11 orig tarball" >&2; exit 1; }
    top=$(tar -tf "$orig" | sed -n '1s|/.*||p')  # no head: SIGPIPE would fail pipefail
    tar -xf "$orig" -C "$tmp" "$top/Include" "$top/PC/pyconfig.h"
    rm -rf "$headers.tmp"; mkdir -p "$headers.tmp/PC"
    mv "$tmp/$top/Include" "$headers.tmp/Include"
    mv "$tmp/$top/PC/pyconfig.h" "$headers.tmp/PC/pyconfig.h"
    basename "$orig" >"$headers.tmp/SOURCE"
    rm -rf "$tmp" "$headers"; mv "$headers.tmp" "$headers"
fi
