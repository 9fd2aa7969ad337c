#!/usr/bin/env bash
# Installs what the Linux side needs, idempotently:
#   - Debian packages: wine + wine64 (the Windows leg), ncat + socat (real clients for the exec
#     server's tests and benchmark), unless already present;
#   - a virtual environment in .cache/venv with the project's test and lint tools.
# Safe to run again: every step checks first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="$here/.cache"
mkdir -p "$cache"

need_apt=()
[ -x /usr/lib/wine/wine64 ] || need_apt+=(wine wine64)
command -v ncat >/dev/null || need_apt+=(ncat)
command -v socat >/dev/null || need_apt+=(socat)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-linux: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

venv="$cache/venv"
stamp="$venv/.installed-$(sha1sum "$here/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "install-linux: creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$here[test,dev,speedups]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
