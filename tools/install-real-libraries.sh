#!/usr/bin/env bash
# Installs the real libraries that tests/test_real_libraries.py runs on the loop (libraries that
# need add_reader on Windows and otherwise start a helper thread or refuse the Proactor loop),
# idempotently, into folders that hold nothing else (so they can never shadow ntafd):
#   .cache/real-libraries/win/    win_amd64 / pure wheels for the Windows python (tools/winpy puts
#                                 this folder last on its path)
#   .cache/real-libraries/linux/  the same versions for the Linux python, without dependencies
#                                 (tools/run-tests.sh puts it on the Linux leg's PYTHONPATH, which
#                                 comes before site-packages: the venv's own cffi must win)
# Pinned: tornado 6.6.1, pyzmq 27.3.0 (bundles libzmq), aiodns 4.0.4 with pycares 5.2.1 (bundles
# c-ares; needs cffi: pip installs it into the Windows folder too, which the Windows python sees
# after the test wheels' cffi; the Linux venv has cffi through ntafd's [speedups] extra).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
hostpy=${HOST_PYTHON:-python3}
[ -x "$here/.cache/venv/bin/python" ] && hostpy=${HOST_PYTHON:-$here/.cache/venv/bin/python}
root="$here/.cache/real-libraries"
libraries=(tornado==6.6.1 pyzmq==27.3.0 aiodns==4.0.4 pycares==5.2.1)
stamp_name=".installed-$(echo "${libraries[*]}" | sha1sum | cut -c1-12)"

install() {  # install DIR PIP_OPTIONS...: a fresh DIR unless its stamp says it is current
    local dir=$1; shift
    [ -f "$dir/$stamp_name" ] && return 0
    echo "install-real-libraries: installing into $dir: ${libraries[*]}"
    rm -rf "$dir.tmp"
    "$hostpy" -m pip install -q --disable-pip-version-check --target "$dir.tmp" \
        --only-binary=:all: "$@" "${libraries[@]}"
    touch "$dir.tmp/$stamp_name"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

mkdir -p "$root"
install "$root/win" --platform win_amd64 --python-version 3.11 --implementation cp
install "$root/linux" --no-deps
