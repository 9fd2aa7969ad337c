#!/usr/bin/env bash
# Gives the Windows python under Wine its own pip, and a local wheelhouse to install from without
# an index, idempotently (for the installed-wheel leg and the sdist build test):
#   .cache/winpython/wheelhouse/  win_amd64 / pure wheels: pip, setuptools, cffi (at the venv's
#                                 version), pycparser; downloaded by the Linux pip for win_amd64
#   .cache/winpython/pip/         pip, installed by the Windows python itself from pip's wheel
#                                 (`python -m pip install pip.whl` with the wheel on the path,
#                                 as ensurepip does; Windows pip refuses to replace itself unless
#                                 run as `-m pip`)
#   .cache/winpython/buildtools/  setuptools, cffi, pycparser installed by that pip from the wheelhouse:
#                                 the build requirements of the sdist, for `pip install
#                                 --no-build-isolation` (pip's isolated build environment drops
#                                 the embeddable python's own folder, where its _socket.pyd and
#                                 other extension modules are, from sys.path: see ACTIVE_KB W8)
# Nothing here is on the Windows python's path unless a caller puts it there
# (NTAFD_WINE_PYTHONPATH), so the other legs are unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root="$here/.cache/winpython"
house="$root/wheelhouse"
pipdir="$root/pip"
tooldir="$root/buildtools"
venv="$here/.cache/venv/bin"
winpath() { printf 'Z:%s' "${1//\//\\}"; }

cffi_version=$("$venv/python" -c 'import cffi; print(cffi.__version__)')
wanted=(pip setuptools "cffi==$cffi_version" pycparser)
stamp="$house/.downloaded-$(echo "${wanted[*]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "install-wine-pip: downloading win_amd64 wheels: ${wanted[*]}"
    rm -rf "$house"; mkdir -p "$house"
    "$venv/pip" download -q -d "$house" --only-binary=:all: \
        --platform win_amd64 --python-version 3.11 --implementation cp "${wanted[@]}"
    touch "$stamp"
fi

pip_wheel=$(ls "$house"/pip-*.whl | head -n1)
if [ ! -f "$pipdir/.from-$(basename "$pip_wheel")" ]; then
    echo "install-wine-pip: installing $(basename "$pip_wheel") into the Windows python (under Wine)"
    rm -rf "$pipdir"
    NTAFD_WINE_REPO=0 NTAFD_WINE_PYTHONPATH="$(winpath "$pip_wheel")" \
        "$here/tools/winpy" -m pip install -q \
        --disable-pip-version-check --no-index --target "$(winpath "$pipdir")" \
        "$(winpath "$pip_wheel")"
    [ -f "$pipdir/pip/__init__.py" ] || { echo "install-wine-pip: pip not installed" >&2; exit 1; }
    touch "$pipdir/.from-$(basename "$pip_wheel")"
fi

if [ ! -f "$tooldir/.from-$(basename "$stamp")" ]; then
    echo "install-wine-pip: installing setuptools and cffi for builds without isolation (under Wine)"
    rm -rf "$tooldir"
    NTAFD_WINE_REPO=0 NTAFD_WINE_PYTHONPATH="$(winpath "$pipdir")" \
        "$here/tools/winpy" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$(winpath "$house")" --target "$(winpath "$tooldir")" \
        setuptools "cffi==$cffi_version"
    [ -d "$tooldir/setuptools" ] || { echo "install-wine-pip: setuptools not installed" >&2; exit 1; }
    touch "$tooldir/.from-$(basename "$stamp")"
fi
