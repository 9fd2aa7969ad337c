#!/usr/bin/env bash
# `make bench`: installs what the benchmarks need, runs every benchmark in bench/ (the Windows
# ones under Wine with the official Windows CPython, the Linux ones natively), each writing its
# raw results as JSON into .cache/bench/results/, then bench/report.py turns them into
# bench/results/{results.json,results.md,*.png} and rewrites the README's results section.
# Every benchmark bounds its loops in time and count and stays on 127.0.0.1.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/install-bench.sh || exit 1
results="$here/.cache/bench/results"
rm -rf "$results"
mkdir -p "$results"
winpath() { printf 'Z:%s' "${1//\//\\}"; }
failed=()
started=$(date +%s)
# The Windows benchmarks run ntafd as the win_amd64 wheel ships it: with the C speedups
# (optimized build, cross-built here). bench.speedups alternates pure ctypes against them.
export NTAFD_WINE_PYTHONPATH
NTAFD_WINE_PYTHONPATH="$(winpath "$here/.cache/winbench/site-packages")"
if bash tools/build-speedups.sh optimized; then
    NTAFD_WINE_PYTHONPATH="$NTAFD_WINE_PYTHONPATH;$(winpath "$here/.cache/speedups/optimized")"
else
    failed+=("speedups (not built: the Windows benchmarks ran pure ctypes)")
fi

wine_bench() {  # wine_bench NAME MODULE ARGS...: one Windows benchmark under Wine
    local name=$1 module=$2; shift 2
    echo "=== bench $name (Wine): python -m $module $*"
    tools/winpy -m "$module" --json "$(winpath "$results/$name.json")" "$@" \
        || failed+=("$name")
}

linux_bench() {  # linux_bench NAME MODULE ARGS...: one benchmark with the Linux python
    local name=$1 module=$2; shift 2
    echo "=== bench $name (Linux): python -m $module $*"
    "$here/.cache/venv/bin/python" -m "$module" --json "$results/$name.json" "$@" \
        || failed+=("$name")
}

wine_bench poller bench.poller
wine_bench echo bench.echo
# Pure ctypes against the C speedups, alternated in one run.
wine_bench speedups bench.speedups
# wineserver requests per echo round trip, server side, every echo subject (Linux drives Wine).
echo "=== bench echo_requests (Linux client, Wine server): python -m bench.echo_requests"
"$here/.cache/venv/bin/python" -m bench.echo_requests --round-trips 1000 \
    --json "$results/echo_requests.json" || failed+=(echo_requests)
wine_bench exec_relay-wine bench.exec_relay
# Wineserver requests per MiB and per round trip of each Wine exec server (N vs 2N operations,
# each a Wine session of its own under ../shared/tools/wine-requests): driven from Linux.
linux_bench exec_relay-requests bench.exec_relay --wine-requests
linux_bench exec_relay-linux bench.exec_relay

echo "=== report"
"$here/.cache/venv/bin/python" -m bench.report "$results" bench/results --readme README.md \
    || failed+=(report)
echo "=== make bench took $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
