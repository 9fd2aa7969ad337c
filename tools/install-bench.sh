#!/usr/bin/env bash
# Installs what bench/ needs, idempotently, beside (not into) the test set-up:
#   .cache/winbench/site-packages/  win_amd64 / pure wheels for the Windows python: trio 0.35 and
#                                   its Windows dependencies (cffi is Windows-only in trio's
#                                   metadata, so it is named here: pip evaluates markers on Linux);
#                                   winloop 0.8.2 (libuv; its win_amd64 wheel runs under Wine 8)
# The tests never see these (tools/winpy adds them only through NTAFD_WINE_PYTHONPATH).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/tools/install-linux.sh"
bash "$here/tools/install-wine-python.sh"
site="$here/.cache/winbench/site-packages"
wheels=(trio==0.35.0 attrs sortedcontainers idna outcome sniffio cffi winloop==0.8.2)
stamp="$site/.installed-$(echo "${wheels[*]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "install-bench: installing win_amd64 wheels: ${wheels[*]}"
    rm -rf "$site"
    "$here/.cache/venv/bin/python" -m pip install -q --target "$site" --only-binary=:all: \
        --platform win_amd64 --python-version 3.11 --implementation cp "${wheels[@]}"
    touch "$stamp"
fi
# matplotlib draws the charts on the Linux side (bench/report.py); bench-only.
if ! "$here/.cache/venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    echo "install-bench: installing matplotlib into the Linux venv"
    "$here/.cache/venv/bin/python" -m pip install -q matplotlib
fi
