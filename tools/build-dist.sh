#!/usr/bin/env bash
# `make dist`: builds what users install, into dist/ (emptied first):
#   ntafd-V.tar.gz                        the sdist (packages, the tests, the C speedups' source and
#                                         speedups/build.py, which setup.py builds on Windows)
#   ntafd-V-py3-none-any.whl              the pure wheel (ctypes only), from that sdist
#   ntafd-V-cp311-cp311-win_amd64.whl     the pure wheel plus the optimized C speedups, cross-built
#                                         with mingw-w64 (tools/build-speedups.sh, tools/win_wheel.py)
# then checks them: `twine check` (metadata and README rendering), the sdist carries the C source
# and builder, the wheels carry every module of the source tree, and only the Windows wheel
# carries the extension. Installs what it needs first (tools/install-linux.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/install-linux.sh
bash tools/build-speedups.sh optimized
venv="$here/.cache/venv/bin"
dist="$here/dist"
rm -rf "$dist" "$here/build"
mkdir -p "$dist" "$here/.cache/logs"

# No isolation: the venv has setuptools, wheel and build (the dev extra); on Linux setup.py adds no
# extension, so the wheel is pure. Without --sdist/--wheel, build makes the sdist first and the
# wheel from the unpacked sdist: a file the sdist lacks fails the wheel.
"$venv/python" -m build --no-isolation --outdir "$dist" . >"$here/.cache/logs/dist-build.log" 2>&1 \
    || { cat "$here/.cache/logs/dist-build.log"; echo "dist: python -m build failed" >&2; exit 1; }
version=$("$venv/python" -c 'import ntdll; print(ntdll.__version__)')
sdist="$dist/ntafd-$version.tar.gz"
pure="$dist/ntafd-$version-py3-none-any.whl"
[ -f "$sdist" ] && [ -f "$pure" ] || { echo "dist: expected $sdist and $pure" >&2; ls "$dist"; exit 1; }

cffi_version=$("$venv/python" -c 'import cffi; print(cffi.__version__)')
"$venv/python" tools/win_wheel.py "$pure" \
    "$here/.cache/speedups/optimized/_ntafd_speedups.cp311-win_amd64.pyd" "$cffi_version" "$dist" \
    >/dev/null
win="$dist/ntafd-$version-cp311-cp311-win_amd64.whl"

"$venv/twine" check --strict "$dist"/*

# What each file must carry.
"$venv/python" - "$here" "$sdist" "$pure" "$win" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

root, sdist, pure, win = Path(sys.argv[1]), *map(Path, sys.argv[2:])
packages = ["ntdll", "iocp", "afd", "execsession", "poc"]
modules = {str(p.relative_to(root)) for pkg in packages for p in (root / pkg).glob("*.py")}
modules |= {f"{pkg}/py.typed" for pkg in packages}
problems = []
with tarfile.open(sdist) as tar:
    top = f"{sdist.name[:-len('.tar.gz')]}/"
    names = {n[len(top):] for n in tar.getnames() if n.startswith(top)}
for needed in ["speedups/build.py", "speedups/ntafd_speedups.c", "setup.py", "pyproject.toml",
               "README.md", "tests/conftest.py", *sorted(modules)]:
    if needed not in names:
        problems.append(f"{sdist.name} lacks {needed}")
for wheel, extension in [(pure, False), (win, True)]:
    names = set(zipfile.ZipFile(wheel).namelist())
    problems += [f"{wheel.name} lacks {m}" for m in sorted(modules - names)]
    has = "_ntafd_speedups.cp311-win_amd64.pyd" in names
    if has != extension:
        problems.append(f"{wheel.name}: speedups module {'missing' if extension else 'present'}")
    if any(n.startswith(("tests/", "speedups/", "bench/")) for n in names):
        problems.append(f"{wheel.name} carries files that are not the library's")
for problem in problems:
    print("dist:", problem, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "dist: built and checked:"
ls -l "$dist" | sed -n '2,$p'
