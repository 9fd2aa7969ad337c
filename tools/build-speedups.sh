#!/usr/bin/env bash
# Cross-builds the cffi speedups (_ntafd_speedups) for the Windows CPython 3.11 under Wine:
#     tools/build-speedups.sh debug|optimized|all
# into .cache/speedups/<variant>/_ntafd_speedups.cp311-win_amd64.pyd (put that folder on the
# Windows python's path: NTAFD_WINE_PYTHONPATH, see tools/winpy).
#   debug      -O0 -g -DNTAFD_DEBUG=1  (internal assertions raise Python exceptions)
#   optimized  -O2 -DNDEBUG
# The C source is emitted by speedups/build.py with the venv's cffi, which is the version of the
# cffi wheel installed for the Windows python (tools/install-wine-python.sh pins it), then built
# with mingw-w64 against the CPython 3.11 headers and linked straight to python311.dll.
# Installs what it needs (tools/install-mingw.sh); rebuilds only when an input changed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || { echo "usage: $0 debug|optimized|all" >&2; exit 2; }
[ "${variants[0]}" = all ] && variants=(debug optimized)

bash "$here/tools/install-linux.sh"
bash "$here/tools/install-wine-python.sh"
bash "$here/tools/install-mingw.sh"
venv_python="$here/.cache/venv/bin/python"
headers="$here/.cache/cpython-headers"
pydir="$here/.cache/winpython/python"
cffi_version=$("$venv_python" -c 'import cffi; print(cffi.__version__)')

for variant in "${variants[@]}"; do
    case "$variant" in
        debug) flags=(-O0 -g -DNTAFD_DEBUG=1) ;;
        optimized) flags=(-O2 -DNDEBUG) ;;
        *) echo "build-speedups: unknown variant $variant (debug|optimized|all)" >&2; exit 2 ;;
    esac
    out="$here/.cache/speedups/$variant"
    pyd="$out/_ntafd_speedups.cp311-win_amd64.pyd"
    stamp=$(cat "$here/speedups/build.py" "$here/speedups/ntafd_speedups.c" \
        | sha1sum | cut -c1-16)-$cffi_version-$(echo "${flags[*]}" | sha1sum | cut -c1-8)
    if [ -f "$pyd" ] && [ "$(cat "$out/STAMP" 2>/dev/null)" = "$stamp" ]; then
        echo "build-speedups: $variant is up to date ($pyd)"
        continue
    fi
    mkdir -p "$out"
    rm -f "$pyd" "$out/STAMP"
    "$venv_python" "$here/speedups/build.py" "$out/_ntafd_speedups.c" >/dev/null
    echo "build-speedups: $variant: x86_64-w64-mingw32-gcc ${flags[*]}"
    x86_64-w64-mingw32-gcc -shared -DMS_WIN64 "${flags[@]}" -Wall -Wextra -Wno-unused-parameter -Wno-unused-function \
        -I"$headers/Include" -I"$headers/PC" \
        "$out/_ntafd_speedups.c" -o "$pyd" -L"$pydir" -lpython311
    echo "$stamp" >"$out/STAMP"
    echo "build-speedups: built $pyd"
done
