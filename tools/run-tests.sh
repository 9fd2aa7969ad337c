#!/usr/bin/env bash
# `make test`: installs what it needs, then runs every leg and prints each leg's pytest summary.
#   lint          ruff
#   types         mypy (platform linux) and mypy --platform win32
#   linux-native         pytest with the Linux python (Windows-only tests skip there, with a reason)
#   build-speedups       cross-builds the C speedups, Debug and optimized (tools/build-speedups.sh)
#   wine-ctypes          pytest with the official Windows CPython 3.11 under Wine 8.0, pure ctypes
#   wine-cffi-debug      the same suite with the Debug build of the speedups on the path
#   wine-cffi-optimized  the same suite with the optimized build
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

leg linux-native "$venv/python" -m pytest -p no:cacheprovider tests
summaries+=("linux-native: $(summary_of linux-native)")

winpath() { printf 'Z:%s' "${1//\//\\}"; }

wine_leg() {  # wine_leg NAME IMPLEMENTATION [SPEEDUPS_DIR]
    local name=$1 implementation=$2 dir=${3:-}
    NTAFD_WINDOWS_LEG=1 NTAFD_EXPECT_IMPLEMENTATION=$implementation \
        NTAFD_WINE_PYTHONPATH=${dir:+$(winpath "$dir")} \
        leg "$name" tools/winpy -m pytest -p no:cacheprovider tests
    local summary
    summary=$(summary_of "$name")
    summaries+=("$name: ${summary:-no pytest summary}")
    if ! grep -qE '[1-9][0-9]* passed' <<<"$summary"; then
        failed+=("$name (ran no test)")
    fi
}

wine_leg wine-ctypes ctypes
if leg build-speedups bash tools/build-speedups.sh debug optimized; then
    wine_leg wine-cffi-debug cffi-debug "$here/.cache/speedups/debug"
    wine_leg wine-cffi-optimized cffi-optimized "$here/.cache/speedups/optimized"
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
