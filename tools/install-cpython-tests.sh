#!/usr/bin/env bash
# Installs CPython's own asyncio tests for the conformance run (tests/test_asyncio_conformance.py),
# idempotently: Lib/test/{__init__.py,*.pem,support/,test_asyncio/} from Debian's python3.11 source
# package (3.11.2, as tools/install-mingw.sh takes the C headers), into .cache/cpython-tests/test/.
# The embeddable Windows python has no `test` package; the runner puts .cache/cpython-tests first
# on its path.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/.cache/cpython-tests"
[ -f "$dest/test/test_asyncio/test_events.py" ] && [ -f "$dest/test/ssl_cert.pem" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -y -qq)
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n%s\n%s\n' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
        >/etc/apt/sources.list.d/ntafd-deb-src.sources
    apt-get "${apt_opts[@]}" update
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "install-cpython-tests: apt-get source --download-only python3.11"
(cd "$tmp" && apt-get -qq source --download-only python3.11 >/dev/null)
orig=$(ls "$tmp"/python3.11_*.orig.tar.* | head -n1)
[ -n "$orig" ] || { echo "install-cpython-tests: no python3.11 orig tarball" >&2; exit 1; }
top=$(tar -tf "$orig" | sed -n '1s|/.*||p')
tar -xf "$orig" -C "$tmp" "$top/Lib/test/__init__.py" "$top/Lib/test/support" "$top/Lib/test/test_asyncio"
# The certificates and keys test_asyncio's utils load at import (Lib/test/*.pem).
tar -xf "$orig" -C "$tmp" --wildcards --no-wildcards-match-slash "$top/Lib/test/*.pem"
rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
mv "$tmp/$top/Lib/test" "$dest.tmp/test"
basename "$orig" >"$dest.tmp/SOURCE"
rm -rf "$dest"; mv "$dest.tmp" "$dest"
