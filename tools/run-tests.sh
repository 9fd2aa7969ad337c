#!/usr/bin/env bash
# `make test`: installs what it needs, then runs every leg and prints each leg's pytest summary.
#   lint          ruff
#   types         mypy (platform linux) and mypy --platform win32
#   linux-native  pytest with the Linux python (Windows-only tests skip there, with a reason)
#   wine-ctypes   pytest with the official Windows CPython 3.11 under Wine 8.0
# Fails if any leg fails or if the Wine leg ran no test. In the Wine leg (NTAFD_WINDOWS_LEG=1)
# tests/conftest.py turns the skip of any test not marked `posix` into a failure.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/install-linux.sh || exit 1
bash tools/install-wine-python.sh || exit 1
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

NTAFD_WINDOWS_LEG=1 leg wine-ctypes tools/winpy -m pytest -p no:cacheprovider tests
wine_summary=$(summary_of wine-ctypes)
summaries+=("wine-ctypes: $wine_summary")
if ! grep -qE '[1-9][0-9]* passed' <<<"$wine_summary"; then
    failed+=("wine-ctypes (ran no test)")
fi

echo
echo "=== summaries"
for line in "${summaries[@]}"; do echo "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED legs: ${failed[*]}"
    exit 1
fi
echo "all legs passed"
