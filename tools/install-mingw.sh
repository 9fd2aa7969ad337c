#!/usr/bin/env bash
# Installs what cross-building the speedups for the Windows python needs, idempotently:
#   - Debian's gcc-mingw-w64-x86-64 (x86_64-w64-mingw32-gcc);
#   - the CPython 3.11 headers (Include/ and PC/pyconfig.h) from Debian's python3.11 source
#     package (3.11.2, the same 3.11 ABI as the embeddable 3.11.9), in .cache/cpython-headers;
#     if apt has no deb-src entry, one is added beside the machine's own entries for its release
#     (same mirror, options and key: the repository names no mirror).
# See ../shared/WINDOWS_ON_LINUX.md. Safe to run again: every step checks first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
headers="$here/.cache/cpython-headers"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -y -qq)

add_deb_src() {
    # A deb-src twin of the machine's own entries for its release (the mirror, options and
    # signing key it already uses: no host name is written here), in ntafd-deb-src.sources/.list.
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || { echo "install-mingw: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
    python3 - "$codename" /etc/apt <<'PY' || { echo "install-mingw: no deb entry to copy" >&2; exit 1; }
import glob, os, re, sys

codename, etc = sys.argv[1], sys.argv[2]
stanzas, lines = [], []
for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
    for block in re.split(r"\n\s*\n", open(path, encoding="utf-8").read()):
        fields = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if ("deb" in fields.get("types", "").split() and codename in fields.get("suites", "").split()
                and "main" in fields.get("components", "").split()
                and fields.get("enabled", "yes").lower() != "no"):
            stanza = ["Types: deb-src", f"URIs: {fields['uris']}", f"Suites: {codename}",
                      "Components: main"]
            if "signed-by" in fields:
                stanza.append(f"Signed-By: {fields['signed-by']}")
            stanzas.append("\n".join(stanza))
for path in [os.path.join(etc, "sources.list"),
             *sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))]:
    if not os.path.exists(path):
        continue
    for line in open(path, encoding="utf-8"):
        match = re.match(r"deb\s+((?:\[[^]]*\]\s+)?)(\S+)\s+(\S+)\s+(.*)", line.strip())
        if match and match.group(3) == codename and "main" in match.group(4).split():
            lines.append(f"deb-src {match.group(1)}{match.group(2)} {codename} main")
if stanzas:
    target = os.path.join(etc, "sources.list.d", "ntafd-deb-src.sources")
    text = "\n\n".join(dict.fromkeys(stanzas)) + "\n"
elif lines:
    target = os.path.join(etc, "sources.list.d", "ntafd-deb-src.list")
    text = "\n".join(dict.fromkeys(lines)) + "\n"
else:
    sys.exit(1)
with open(target, "w", encoding="utf-8") as out:
    out.write(text)
print(f"install-mingw: added deb-src entries for {codename} main, copied from the machine's own "
      f"apt sources, in {target}")
PY
}

if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    echo "install-mingw: apt-get install gcc-mingw-w64-x86-64"
    apt-get "${apt_opts[@]}" update
    apt-get "${apt_opts[@]}" install --no-install-recommends gcc-mingw-w64-x86-64 >/dev/null
fi

if [ ! -f "$headers/Include/Python.h" ] || [ ! -f "$headers/PC/pyconfig.h" ]; then
    if ! grep -rqsE '^Types:.*deb-src|^deb-src' /etc/apt/sources.list.d/ \
        && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        add_deb_src
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
