"""The optional C speedups (``_ntafd_speedups``), built on Windows by ``pip install .``.

Everything else is declared in ``pyproject.toml``. On Windows, cffi (a build requirement there)
emits the C source of ``speedups/build.py`` and the platform compiler builds it; the extension
is optional: without a compiler the build is skipped with a warning and the package stays pure
ctypes. At run time the module needs cffi's runtime, which the ``speedups`` extra installs:
``pip install .[speedups]``. ``NTAFD_SPEEDUPS=0`` skips the build; ``NTAFD_DEBUG=1`` builds the
Debug variant (internal assertions). Elsewhere nothing is built: there are no NT calls to speed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup


def speedups() -> dict[str, Any]:
    if sys.platform != "win32" or os.environ.get("NTAFD_SPEEDUPS") == "0":
        return {}
    return {"cffi_modules": ["speedups/build.py:ffi"]}


setup(**speedups())
