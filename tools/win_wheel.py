"""Make the ``cp311-cp311-win_amd64`` wheel from the pure wheel and a cross-built speedups module.

    python tools/win_wheel.py PURE.whl _ntafd_speedups.cp311-win_amd64.pyd CFFI_VERSION OUTDIR

The pure wheel (``py3-none-any``, built by ``python -m build``) has every Python file; the
Windows wheel is the same files plus the optimized ``_ntafd_speedups`` extension that
``tools/build-speedups.sh`` built with mingw-w64, as a top-level module (where ``ntdll.speedups``
imports it from). What changes, as the wheel format (PEP 427 / the binary distribution format
spec) requires of a wheel carrying an extension module:

- ``WHEEL``: ``Root-Is-Purelib: false`` and the tag ``cp311-cp311-win_amd64`` (the module is
  built for CPython 3.11's ABI on 64-bit Windows, and for nothing else);
- ``METADATA``: cffi becomes a plain requirement (the module needs ``_cffi_backend`` at run time,
  at least the version whose emitted C it was built from), and the ``speedups`` extra stays
  for the pure wheel's users;
- ``RECORD``: rewritten with every file's sha256 and size.

Everything else (entry points, the README as the long description) is the pure wheel's, so the
two wheels cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

TAG = "cp311-cp311-win_amd64"
USAGE = "python tools/win_wheel.py PURE.whl _ntafd_speedups.cp311-win_amd64.pyd CFFI_VERSION OUTDIR"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _windows_wheel_file(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: false"
        elif line.startswith("Tag:") or not line.strip():
            continue
        lines.append(line)
    lines.append(f"Tag: {TAG}")
    return "\n".join(lines) + "\n"


def _windows_metadata(text: str, cffi_version: str) -> str:
    """Add ``Requires-Dist: cffi>=VERSION`` after the header's last ``Requires-Dist``/
    ``Provides-Extra`` line (the header ends at the first blank line: the description follows)."""
    header, sep, body = text.partition("\n\n")
    lines = header.split("\n")
    requirement = f"Requires-Dist: cffi>={cffi_version}"
    if requirement in lines:
        return text
    anchor = max((i for i, line in enumerate(lines)
                  if line.startswith(("Requires-Dist:", "Provides-Extra:", "Requires-Python:"))),
                 default=len(lines) - 1)
    lines.insert(anchor + 1, requirement)
    return "\n".join(lines) + sep + body


def build(pure: Path, pyd: Path, cffi_version: str, outdir: Path) -> Path:
    name, version, *tags = pure.stem.split("-")
    if tags != ["py3", "none", "any"]:
        raise SystemExit(f"win_wheel: {pure.name} is not a py3-none-any wheel")
    if not pyd.name.endswith(".cp311-win_amd64.pyd"):
        raise SystemExit(f"win_wheel: {pyd.name} is not a cp311-win_amd64 extension module")
    dist_info = f"{name}-{version}.dist-info"
    target = outdir / f"{name}-{version}-{TAG}.whl"
    files: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(pure) as source:
        for info in source.infolist():
            if info.filename == f"{dist_info}/RECORD":
                continue
            data = source.read(info.filename)
            if info.filename == f"{dist_info}/WHEEL":
                data = _windows_wheel_file(data.decode("utf-8")).encode("utf-8")
            elif info.filename == f"{dist_info}/METADATA":
                data = _windows_metadata(data.decode("utf-8"), cffi_version).encode("utf-8")
            files.append((info.filename, data))
    # The module goes first, dist-info last (readers expect the metadata at the end).
    files.insert(0, (pyd.name, pyd.read_bytes()))
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files]
    record.append(f"{dist_info}/RECORD,,")
    files.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode("utf-8")))
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files:
            entry = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    pure, pyd, cffi_version, outdir = argv
    print(build(Path(pure), Path(pyd), cffi_version, Path(outdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
