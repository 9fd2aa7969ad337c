"""The cffi builder of ``_ntafd_speedups`` (API mode): the cdef and the C source.

Used by ``setup.py`` (``cffi_modules``: Windows, the platform compiler) and by
``tools/build-speedups.sh`` (here: the C source is emitted on Linux and cross-built with
mingw-w64 for the Windows python under Wine). ``NTAFD_DEBUG=1`` in the environment adds the
``NTAFD_DEBUG`` define (the Debug build's internal assertions) to a setup.py build.

    python speedups/build.py OUT.c    # write the C source only
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cffi

MODULE = "_ntafd_speedups"
HERE = Path(__file__).resolve().parent

# The NT/AFD structures the extension uses, as in ntafd_speedups.c (cffi checks that the two
# agree when compiling; tests/test_speedups.py checks them against the ctypes layouts).
CDEF = """
typedef struct {
    union { int32_t Status; void *Pointer; };
    uint64_t Information;
} NTAFD_IO_STATUS_BLOCK;

typedef struct {
    void *KeyContext;
    void *ApcContext;
    NTAFD_IO_STATUS_BLOCK IoStatusBlock;
} NTAFD_FILE_IO_COMPLETION_INFORMATION;

typedef struct {
    uint64_t Internal;
    uint64_t InternalHigh;
    union { struct { uint32_t Offset; uint32_t OffsetHigh; }; void *Pointer; };
    void *hEvent;
} NTAFD_OVERLAPPED;

typedef struct {
    void *Handle;
    uint32_t Events;
    int32_t Status;
} NTAFD_AFD_POLL_HANDLE_INFO;

typedef struct {
    int64_t Timeout;
    uint32_t NumberOfHandles;
    uint32_t Exclusive;
    NTAFD_AFD_POLL_HANDLE_INFO Handles[1];
} NTAFD_AFD_POLL_INFO;

int ntafd_init(void);
int ntafd_debug(void);
int ntafd_abi_version(void);
int ntafd_in_flight(uintptr_t address);
void ntafd_decode_completions(uintptr_t entries, uint32_t count, uint64_t *decoded);
int32_t ntafd_remove_completions(uintptr_t port, uint32_t max_entries, int has_timeout,
                                 int64_t timeout, uint64_t *decoded, uint32_t *count);
int32_t ntafd_afd_poll(uintptr_t helper, uintptr_t overlapped, uintptr_t info,
                       uint64_t base_handle, uint32_t events, int64_t timeout,
                       uint32_t exclusive);
uint32_t ntafd_afd_poll_events(uintptr_t info, uint32_t capacity);
int32_t ntafd_cancel(uintptr_t handle, uintptr_t overlapped);
uintptr_t ntafd_relay_set_new(uintptr_t port, uint32_t budget);
uint64_t ntafd_relay_set_pending(uintptr_t set);
uint64_t ntafd_relay_set_free(uintptr_t set);
void ntafd_relay_set_cancel(uintptr_t set);
uintptr_t ntafd_relay_open(uintptr_t set, uint64_t token, uintptr_t src, int src_sock,
                           int src_skip, uintptr_t dst, int dst_sock, int dst_skip,
                           uint32_t size, int give_full, uint32_t give_small);
int32_t ntafd_relay_run(uintptr_t relay);
int ntafd_relay_stop(uintptr_t relay);
int32_t ntafd_relay_info(uintptr_t relay, uint64_t *out);
int64_t ntafd_relay_take(uintptr_t relay, char *out, uint32_t room);
int ntafd_relay_close(uintptr_t relay);
int32_t ntafd_relay_remove_completions(uintptr_t set, uint32_t max_entries, int has_timeout,
                                       int64_t timeout, uint64_t *decoded, uint32_t *count);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
ffi.set_source(
    MODULE,
    (HERE / "ntafd_speedups.c").read_text(encoding="utf-8"),
    define_macros=[("NTAFD_DEBUG", "1")] if os.environ.get("NTAFD_DEBUG") == "1" else [],
    # A failed build (no compiler) leaves the pure-ctypes package installed.
    optional=True,
)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ffi.emit_c_code(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
