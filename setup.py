"""The optional C speedups (``_ntafd_speedups``), built on Windows by ``pip install``.

Everything else is declared in ``pyproject.toml``. On Windows, cffi (a build requirement there)
emits the C source of ``speedups/build.py`` and the platform compiler builds it; the extension
is optional: without a compiler the build is skipped with a warning (shown by ``pip install -v``)
and the package stays pure ctypes. At run time the module needs cffi's runtime, which the
``speedups`` extra installs: ``pip install ntafd[speedups]``. ``NTAFD_SPEEDUPS=0`` skips the
build; ``NTAFD_DEBUG=1`` builds the Debug variant (internal assertions). Elsewhere nothing is
built: there are no NT calls to speed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

SKIP_ENV = "NTAFD_SPEEDUPS"


class BuildOptionalSpeedups(build_ext):
    """``build_ext`` that says, after setuptools' own warning, what a failed optional build
    means for the user (setuptools skips an ``optional`` extension that fails to build)."""

    def run(self) -> None:
        super().run()
        for extension in self.extensions:
            if not os.path.exists(self.get_ext_fullpath(extension.name)):
                self.warn(
                    f"ntafd: the optional C speedups ({extension.name}) were NOT built (no "
                    f"working C compiler; see the warning above). ntafd is installed as pure "
                    f"ctypes and works the same, slower on its hot paths. To build them, "
                    f"install Microsoft C++ Build Tools and reinstall; {SKIP_ENV}=0 skips "
                    f"this attempt.")


def speedups() -> dict[str, Any]:
    if sys.platform != "win32" or os.environ.get(SKIP_ENV) == "0":
        return {}
    return {"cffi_modules": ["speedups/build.py:ffi"],
            "cmdclass": {"build_ext": BuildOptionalSpeedups}}


setup(**speedups())
