"""The package as users install it: where it is imported from, its version, its command, and the
Windows source build without a compiler.

``make test`` runs two legs against *installed* wheels (``tools/run-tests.sh``): linux-native
installs the pure wheel in a fresh venv, wine-cffi-optimized installs the ``win_amd64`` wheel with
the Windows python's own pip into a fresh target; both run a copy of this suite from a folder
that holds only ``tests/``, so the repository root is not on ``sys.path`` and a module the wheel
lacks fails. The leg says where the package must come from (``NTAFD_INSTALLED_AT``) and where
its entry points are (``NTAFD_INSTALLED_SCRIPTS``); the other legs import the source tree, and
these tests check that instead.

Tests marked ``dist`` need ``make dist``'s files (``NTAFD_DIST_DIR``) and, on Windows, a pip for
the Windows python (``NTAFD_PIP_PATH``): the installed-wheel legs provide them, the other legs
deselect them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ntdll import __version__, speedups
from tests.exec_support import stop_server_process

PACKAGES = ("ntdll", "iocp", "afd", "execsession", "poc")
INSTALLED_AT = os.environ.get("NTAFD_INSTALLED_AT")
INSTALLED_SCRIPTS = os.environ.get("NTAFD_INSTALLED_SCRIPTS")
DIST_DIR = os.environ.get("NTAFD_DIST_DIR")
PIP_PATH = os.environ.get("NTAFD_PIP_PATH")
TREE = Path(__file__).resolve().parent.parent
WAIT = 60.0
ON_WINDOWS = sys.platform == "win32"


def _holds_the_package(entry: str) -> bool:
    return (Path(entry or os.getcwd()) / "ntdll" / "__init__.py").is_file()


def test_the_package_is_imported_from_where_this_leg_put_it() -> None:
    """Installed legs: every package (and the speedups module, when loaded) comes from the
    install, and no other copy is reachable on ``sys.path``. Other legs: from the tree."""
    expected = Path(INSTALLED_AT).resolve() if INSTALLED_AT else TREE
    for name in PACKAGES:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().parent.parent == expected, (name, module.__file__)
    if INSTALLED_AT:
        others = [entry for entry in sys.path
                  if _holds_the_package(entry) and Path(entry or os.getcwd()).resolve() != expected]
        assert others == [], f"another copy of ntafd is on sys.path: {others}"
        if speedups.native is not None:
            module = sys.modules[speedups.MODULE]
            assert module.__file__ is not None
            assert Path(module.__file__).resolve().parent == expected, module.__file__


def test_the_version_is_written_once() -> None:
    """``ntdll.__version__`` is the one place: the installed metadata carries it, and the source
    tree's ``pyproject.toml`` reads it from there instead of spelling a version of its own."""
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    if INSTALLED_AT:
        assert importlib.metadata.version("ntafd") == __version__
        return
    text = (TREE / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.MULTILINE), "pyproject.toml spells a version"
    assert re.search(r'^dynamic\s*=\s*\[[^]]*"version"', project, re.MULTILINE)
    assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"ntdll\.__version__"\s*\}', text,
                     re.MULTILINE)


def _exec_command() -> list[str]:
    """``ntafd-exec`` as the leg installed it, or ``python -m execsession`` from the tree (the
    Wine legs on the tree have no entry point)."""
    if INSTALLED_SCRIPTS:
        script = Path(INSTALLED_SCRIPTS) / ("ntafd-exec.exe" if ON_WINDOWS else "ntafd-exec")
        assert script.is_file(), f"the installed entry point is missing: {script}"
        return [str(script)]
    return [sys.executable, "-m", "execsession"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_exec_command_serves_a_client() -> None:
    """The console entry point starts, serves one client through a native filter (``find "o"``
    on Windows, ``cat`` elsewhere), and exits 0 after it."""
    port = _free_port()
    child = ["find.exe", "o"] if ON_WINDOWS else ["cat"]
    server = subprocess.Popen([*_exec_command(), "-v", "-l", str(port), "-e", *child],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        assert server.stdout is not None
        seen = b""
        deadline = time.monotonic() + WAIT
        while b"listening on" not in seen and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            seen += line
        assert b"listening on" in seen, seen.decode(errors="replace")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"hello\nworld\n")
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := client.recv(65536):
                received += chunk
        assert received.replace(b"\r\n", b"\n") == b"hello\nworld\n"
        output, _ = server.communicate(timeout=WAIT)
        assert server.returncode == 0, (seen + output).decode(errors="replace")
    finally:
        stop_server_process(server)


def _sdist() -> Path:
    assert DIST_DIR, "NTAFD_DIST_DIR must name make dist's folder"
    found = sorted(Path(DIST_DIR).glob(f"ntafd-{__version__}.tar.gz"))
    assert found, f"no sdist of ntafd {__version__} in {DIST_DIR}: run make dist"
    return found[0]


def _pip_install_sdist(target: Path, **env: str) -> str:
    """``pip install <sdist>`` with the Windows python's own pip, no index, no build isolation
    (its build requirements are on ``NTAFD_PIP_PATH``), no cache (each call builds)."""
    assert PIP_PATH, "NTAFD_PIP_PATH must name the Windows python's pip and build requirements"
    environ = dict(os.environ, PYTHONPATH=PIP_PATH, PIP_DISABLE_PIP_VERSION_CHECK="1", **env)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-v", "--no-index", "--no-deps",
         "--no-build-isolation", "--no-cache-dir", "--target", str(target), str(_sdist())],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
        env=environ, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _implementation_in(target: Path) -> str:
    """What ``ntdll.speedups`` loads from ``target`` alone (cffi's runtime is on the path:
    a missing module, not a missing cffi, must be the reason for pure ctypes)."""
    code = ("import sys, ntdll, ntdll.speedups as s; "
            "print(ntdll.__file__); print(s.IMPLEMENTATION); print(s.LOAD_ERROR)")
    environ = {k: v for k, v in os.environ.items() if k != "NTAFD_PURE_CTYPES"}
    environ["PYTHONPATH"] = os.pathsep.join([str(target), PIP_PATH or ""])
    result = subprocess.run([sys.executable, "-c", code], cwd=str(target),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=environ, timeout=WAIT)
    assert result.returncode == 0, result.stdout + result.stderr
    location, implementation, _ = result.stdout.splitlines()[:3]
    assert Path(location).resolve().parent.parent == target.resolve()
    return implementation


@pytest.mark.windows
@pytest.mark.dist
def test_the_sdist_installs_pure_without_a_compiler_and_skips_the_build_when_told() -> None:
    """``setup.py``'s promise, with the Windows python's pip and no C compiler (none exists
    under Wine): the optional extension fails to build, a clear warning says the package is pure
    ctypes, the install succeeds and loads ``ctypes``; with ``NTAFD_SPEEDUPS=0`` no build of the
    extension is attempted at all."""
    with tempfile.TemporaryDirectory() as scratch:
        without_compiler = Path(scratch) / "built"
        output = _pip_install_sdist(without_compiler)
        assert "building '_ntafd_speedups' extension" in output, output
        assert "the optional C speedups (_ntafd_speedups) were NOT built" in output, output
        assert not list(without_compiler.glob("_ntafd_speedups*")), output
        assert _implementation_in(without_compiler) == "ctypes"

        skipped = Path(scratch) / "skipped"
        output = _pip_install_sdist(skipped, NTAFD_SPEEDUPS="0")
        assert "_ntafd_speedups" not in output, output
        assert not list(skipped.glob("_ntafd_speedups*"))
        assert _implementation_in(skipped) == "ctypes"
