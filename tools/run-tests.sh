#!/usr/bin/env bash
# `make test`: installs what it needs, then runs every leg and prints each leg's pytest summary.
#   lint          ruff
#   types         mypy (platform linux) and mypy --platform win32
#   dist                 make dist: the sdist, the pure wheel, the win_amd64 wheel with the
#                        optimized speedups (tools/build-dist.sh; also cross-builds the speedups)
#   linux-native         pytest with the Linux python against the pure wheel, installed with its
#                        [test,speedups] extras in a fresh venv (Windows-only tests skip there,
#                        with a reason)
#   build-speedups       cross-builds the C speedups, Debug and optimized (tools/build-speedups.sh)
#   wine-ctypes          pytest with the official Windows CPython 3.11 under Wine 8.0, pure ctypes,
#                        on the source tree
#   wine-cffi-debug      the same suite on the tree with the Debug build of the speedups on the path
#   wine-cffi-optimized  the same suite against the win_amd64 wheel, installed by the Windows
#                        python's own pip into a fresh target (it carries the optimized build), plus
#                        the sdist built by that pip without a compiler (tests marked `dist`)
# The two installed legs run copies of tests/ and speedups/ (the cffi builder, which test_speedups
# reads; it ships in the sdist only) from a folder that holds nothing else, with the repository
# root off sys.path: a module missing from a wheel fails them (tests/test_packaging.py checks
# where every package was imported from).
# Fails if any leg fails or if a Wine leg ran no test. In the Wine legs (NTAFD_WINDOWS_LEG=1)
# tests/conftest.py turns the skip of any test meant for that leg into a failure, and
# NTAFD_EXPECT_IMPLEMENTATION makes a leg that loaded another implementation (a cffi leg that
# fell back to ctypes) fail before running a test.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/install-linux.sh || exit 1
bash tools/install-wine-python.sh || exit 1
# CPython's asyncio tests for the conformance run of the Wine legs (tests/test_asyncio_conformance.py).
bash tools/install-cpython-tests.sh || exit 1
# Tornado, pyzmq and aiodns for tests/test_real_libraries.py (Windows: on tools/winpy's path).
bash tools/install-real-libraries.sh || exit 1
venv="$here/.cache/venv/bin"
logs="$here/.cache/logs"
mkdir -p "$logs"
failed=()
summaries=()

leg() {  # leg NAME COMMAND... : run, keep the output, remember the verdict
    local name=$1; shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
    return "$rc"
}

summary_of() {  # the last pytest summary line of a leg, without the ===== decoration
    # The Windows python ends lines with CRLF, and may colour them.
    tr -d '\r' <"$logs/$1.log" | sed -E 's/\x1b\[[0-9;]*m//g' \
        | grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' \
        | tail -n1 | sed -E 's/^=+ //; s/ =+$//'
}

leg lint "$venv/ruff" check .
leg types-linux "$venv/mypy" --platform linux
leg types-win32 "$venv/mypy" --platform win32

winpath() { printf 'Z:%s' "${1//\//\\}"; }
wheel_legs="$here/.cache/wheel-legs"

stage_tests() {  # stage_tests DIR: DIR holds copies of tests/, speedups/ and pytest's configuration
    # speedups/ is the C extension's source and cffi builder (in the sdist, not a package of the
    # wheels): test_speedups checks the builder's cdef layouts against the installed ctypes ones.
    rm -rf "$1"; mkdir -p "$1"
    cp -r "$here/tests" "$1/tests"
    cp -r "$here/speedups" "$1/speedups"
    cp "$here/pyproject.toml" "$1/pyproject.toml"
    find "$1" -name __pycache__ -prune -exec rm -rf {} +
    # test_exec_server's Windows-server test finds tools/winpy and the Wine python through the
    # folder above tests/ (its Wine side imports execsession from the tree: NTAFD_WINE_PYTHONPATH).
    ln -s "$here/tools" "$1/tools"
    ln -s "$here/.cache" "$1/.cache"
}

install_linux_wheel() {  # a fresh venv with the pure wheel and its [test,speedups] extras
    local leg=$wheel_legs/linux
    rm -rf "$leg/venv"; mkdir -p "$leg"
    python3 -m venv "$leg/venv" || return 1
    "$leg/venv/bin/pip" install -q --disable-pip-version-check \
        "$(ls "$here"/dist/ntafd-*-py3-none-any.whl)[test,speedups]" || return 1
    stage_tests "$leg/run"
}

linux_installed_leg() {
    local leg=$wheel_legs/linux site
    site=$("$leg/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cd "$leg/run" || return 1
    NTAFD_INSTALLED_AT=$site NTAFD_INSTALLED_SCRIPTS=$leg/venv/bin NTAFD_DIST_DIR=$here/dist \
        NTAFD_WINE_PYTHONPATH=$(winpath "$here") PYTHONPATH="$here/.cache/real-libraries/linux" \
        "$leg/venv/bin/python" -m pytest -p no:cacheprovider tests
}

if leg dist bash tools/build-dist.sh && leg install-linux-wheel install_linux_wheel; then
    leg linux-native linux_installed_leg
    summaries+=("linux-native (installed pure wheel): $(summary_of linux-native)")
else
    failed+=("linux-native (no wheel)")
fi

wine_leg() {  # wine_leg NAME IMPLEMENTATION [SPEEDUPS_DIR]: the suite on the source tree
    local name=$1 implementation=$2 dir=${3:-}
    NTAFD_WINDOWS_LEG=1 NTAFD_EXPECT_IMPLEMENTATION=$implementation \
        NTAFD_WINE_PYTHONPATH=${dir:+$(winpath "$dir")} \
        leg "$name" tools/winpy -m pytest -p no:cacheprovider -m "not dist" tests
    wine_summary "$name"
}

install_windows_wheel() {  # the win_amd64 wheel, by the Windows python's pip, into a fresh target
    local leg=$wheel_legs/win
    bash tools/install-wine-pip.sh || return 1
    rm -rf "$leg/target"; mkdir -p "$leg"
    NTAFD_WINE_REPO=0 NTAFD_WINE_PYTHONPATH=$(winpath "$here/.cache/winpython/pip") \
        tools/winpy -m pip install --disable-pip-version-check --no-index \
        --find-links "$(winpath "$here/.cache/winpython/wheelhouse")" \
        --target "$(winpath "$leg/target")" "$(winpath "$(ls "$here"/dist/ntafd-*-win_amd64.whl)")" \
        || return 1
    stage_tests "$leg/run"
}

in_dir() {  # in_dir DIR COMMAND...: run COMMAND in DIR (for leg, which must run in this shell)
    local dir=$1; shift
    (cd "$dir" && "$@")
}

wine_installed_leg() {  # wine_installed_leg NAME IMPLEMENTATION
    local name=$1 implementation=$2 leg=$wheel_legs/win
    local target pip_path
    target=$(winpath "$leg/target")
    pip_path="$(winpath "$here/.cache/winpython/pip");$(winpath "$here/.cache/winpython/buildtools")"
    leg "$name" in_dir "$leg/run" env NTAFD_WINDOWS_LEG=1 \
        NTAFD_EXPECT_IMPLEMENTATION="$implementation" NTAFD_WINE_REPO=0 \
        NTAFD_WINE_PYTHONPATH="$target" NTAFD_INSTALLED_AT="$target" \
        NTAFD_INSTALLED_SCRIPTS="$target\\bin" NTAFD_DIST_DIR="$(winpath "$here/dist")" \
        NTAFD_PIP_PATH="$pip_path" "$here/tools/winpy" -m pytest -p no:cacheprovider tests
    wine_summary "$name"
}

wine_summary() {
    local name=$1 summary
    summary=$(summary_of "$name")
    summaries+=("$name: ${summary:-no pytest summary}")
    if ! grep -qE '[1-9][0-9]* passed' <<<"$summary"; then
        failed+=("$name (ran no test)")
    fi
}

wine_leg wine-ctypes ctypes
if leg build-speedups bash tools/build-speedups.sh debug optimized; then
    wine_leg wine-cffi-debug cffi-debug "$here/.cache/speedups/debug"
    if leg install-windows-wheel install_windows_wheel; then
        wine_installed_leg wine-cffi-optimized cffi-optimized
    else
        failed+=("wine-cffi-optimized (the wheel did not install)")
    fi
else
    failed+=("wine-cffi-debug, wine-cffi-optimized (not built)")
fi

echo
echo "=== summaries"
for line in "${summaries[@]}"; do echo "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED legs: ${failed[*]}"
    exit 1
fi
echo "all legs passed"
