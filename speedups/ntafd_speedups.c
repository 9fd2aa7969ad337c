/* _ntafd_speedups: the hot paths of ntafd in C (cffi API mode; the cdef is in build.py).
 *
 * Dequeue a batch of completions and decode it, issue one AFD poll, cancel a request, read what
 * a poll reported. Every buffer the kernel writes into is owned by a Python object of the caller
 * (an iocp.Operation's OVERLAPPED, an AFD_POLL_INFO): the functions here take its address and
 * never keep it, so the ownership rules of the pure-ctypes implementation hold unchanged (the
 * memory stays alive until the completion is dequeued: ACTIVE_KB D2-D5).
 *
 * ntdll's functions are looked up at run time (ntafd_init), as ctypes does: no import library
 * is needed, with MSVC or mingw-w64 alike.
 *
 * With NTAFD_DEBUG defined (the Debug build), internal assertions are on: they make a function
 * return an NTAFD_STATUS_ASSERT_* status, which the Python side raises as an exception.
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- structures (Windows x64 layouts; declared identically in the cdef) ------------------ */
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
    uint64_t Internal;      /* IO_STATUS_BLOCK.Status: STATUS_PENDING until completed */
    uint64_t InternalHigh;  /* IO_STATUS_BLOCK.Information */
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

/* Our OVERLAPPED is the SDK's, and its first 16 bytes are an IO_STATUS_BLOCK (D2). */
#define NTAFD_CHECK(name, cond) typedef char ntafd_check_##name[(cond) ? 1 : -1]
NTAFD_CHECK(overlapped_size, sizeof(NTAFD_OVERLAPPED) == sizeof(OVERLAPPED));
NTAFD_CHECK(overlapped_internal, offsetof(NTAFD_OVERLAPPED, InternalHigh)
            == offsetof(OVERLAPPED, InternalHigh));
NTAFD_CHECK(overlapped_event, offsetof(NTAFD_OVERLAPPED, hEvent) == offsetof(OVERLAPPED, hEvent));
NTAFD_CHECK(iosb_in_overlapped, offsetof(NTAFD_IO_STATUS_BLOCK, Information)
            == offsetof(NTAFD_OVERLAPPED, InternalHigh));
NTAFD_CHECK(entry_size, sizeof(NTAFD_FILE_IO_COMPLETION_INFORMATION) == 32);
NTAFD_CHECK(poll_info_size, sizeof(NTAFD_AFD_POLL_INFO) == 32);

/* ---- statuses ---------------------------------------------------------------------------- */
#define NTAFD_STATUS_TIMEOUT ((int32_t)0x00000102)
#define NTAFD_STATUS_PENDING ((int32_t)0x00000103)
#define NTAFD_STATUS_NOT_FOUND ((int32_t)0xC0000225)
#define NTAFD_IOCTL_AFD_POLL 0x00012024u
/* Our own statuses carry the customer bit (0x20000000), so no NT status can be mistaken for
 * them. */
#define NTAFD_STATUS_NOT_INITIALISED ((int32_t)0xE0AF0000)
#define NTAFD_STATUS_ASSERT_BUSY ((int32_t)0xE0AF0001)   /* re-issued while in flight */
#define NTAFD_STATUS_ASSERT_COUNT ((int32_t)0xE0AF0002)  /* kernel count > room */
#define NTAFD_STATUS_ASSERT_ALIGN ((int32_t)0xE0AF0003)  /* kernel buffer misaligned */

/* ---- ntdll entry points ------------------------------------------------------------------ */
typedef int32_t (NTAPI *remove_ex_fn)(HANDLE, NTAFD_FILE_IO_COMPLETION_INFORMATION *, ULONG,
                                      ULONG *, LARGE_INTEGER *, BOOLEAN);
typedef int32_t (NTAPI *device_io_control_fn)(HANDLE, HANDLE, void *, void *,
                                              NTAFD_IO_STATUS_BLOCK *, ULONG, void *, ULONG,
                                              void *, ULONG);
typedef int32_t (NTAPI *cancel_ex_fn)(HANDLE, NTAFD_IO_STATUS_BLOCK *, NTAFD_IO_STATUS_BLOCK *);

static remove_ex_fn p_NtRemoveIoCompletionEx;
static device_io_control_fn p_NtDeviceIoControlFile;
static cancel_ex_fn p_NtCancelIoFileEx;

static int ntafd_init(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    if (ntdll == NULL)
        return -1;
    p_NtRemoveIoCompletionEx = (remove_ex_fn)(void (*)(void))GetProcAddress(
        ntdll, "NtRemoveIoCompletionEx");
    p_NtDeviceIoControlFile = (device_io_control_fn)(void (*)(void))GetProcAddress(
        ntdll, "NtDeviceIoControlFile");
    p_NtCancelIoFileEx = (cancel_ex_fn)(void (*)(void))GetProcAddress(ntdll, "NtCancelIoFileEx");
    if (!p_NtRemoveIoCompletionEx || !p_NtDeviceIoControlFile || !p_NtCancelIoFileEx)
        return -2;
    return 0;
}

/* ---- Debug: the set of requests issued here whose completion has not been dequeued ------- */
#ifdef NTAFD_DEBUG
static SRWLOCK in_flight_lock = SRWLOCK_INIT;
static uintptr_t *in_flight;       /* open addressing; 0 = empty, 1 = deleted */
static size_t in_flight_capacity;  /* a power of two */
static size_t in_flight_used;      /* live + deleted slots */

static size_t slot_of(uintptr_t address, size_t capacity)
{
    return (size_t)((address >> 4) * 0x9E3779B97F4A7C15ull) & (capacity - 1);
}

static int in_flight_grow(void)
{
    size_t old_capacity = in_flight_capacity, i;
    size_t capacity = old_capacity ? old_capacity * 2 : 1024;
    uintptr_t *old = in_flight, *table = calloc(capacity, sizeof *table);
    if (table == NULL)
        return -1;
    in_flight_used = 0;
    for (i = 0; i < old_capacity; i++) {
        if (old[i] > 1) {
            size_t s = slot_of(old[i], capacity);
            while (table[s])
                s = (s + 1) & (capacity - 1);
            table[s] = old[i];
            in_flight_used++;
        }
    }
    free(old);
    in_flight = table;
    in_flight_capacity = capacity;
    return 0;
}

/* Adds address; returns 0, 1 if it was there already, -1 if out of memory. */
static int in_flight_add(uintptr_t address)
{
    size_t s, tomb = (size_t)-1;
    int result = 0;
    AcquireSRWLockExclusive(&in_flight_lock);
    if ((in_flight_used + 1) * 2 > in_flight_capacity && in_flight_grow() != 0) {
        result = -1;
        goto out;
    }
    for (s = slot_of(address, in_flight_capacity); in_flight[s];
         s = (s + 1) & (in_flight_capacity - 1)) {
        if (in_flight[s] == address) {
            result = 1;
            goto out;
        }
        if (in_flight[s] == 1 && tomb == (size_t)-1)
            tomb = s;
    }
    if (tomb != (size_t)-1)
        s = tomb;
    else
        in_flight_used++;
    in_flight[s] = address;
out:
    ReleaseSRWLockExclusive(&in_flight_lock);
    return result;
}

static void in_flight_remove(uintptr_t address)
{
    size_t s;
    AcquireSRWLockExclusive(&in_flight_lock);
    if (in_flight_capacity) {
        for (s = slot_of(address, in_flight_capacity); in_flight[s];
             s = (s + 1) & (in_flight_capacity - 1)) {
            if (in_flight[s] == address) {
                in_flight[s] = 1;
                break;
            }
        }
    }
    ReleaseSRWLockExclusive(&in_flight_lock);
}

static int ntafd_in_flight(uintptr_t address)
{
    size_t s;
    int found = 0;
    AcquireSRWLockExclusive(&in_flight_lock);
    if (in_flight_capacity) {
        for (s = slot_of(address, in_flight_capacity); in_flight[s];
             s = (s + 1) & (in_flight_capacity - 1)) {
            if (in_flight[s] == address) {
                found = 1;
                break;
            }
        }
    }
    ReleaseSRWLockExclusive(&in_flight_lock);
    return found;
}
static const int ntafd_debug_build = 1;
#else
static int ntafd_in_flight(uintptr_t address)
{
    (void)address;
    return -1; /* not tracked in the optimized build */
}
static const int ntafd_debug_build = 0;
#endif

static int ntafd_debug(void)
{
    return ntafd_debug_build;
}

/* Bumped whenever a function's meaning or signature changes: a stale build is refused. */
#define NTAFD_ABI_VERSION 1
static int ntafd_abi_version(void)
{
    return NTAFD_ABI_VERSION;
}

/* ---- dequeue ----------------------------------------------------------------------------- */
/* Decodes count entries (as NtRemoveIoCompletionEx wrote them) into 4 words each of decoded[]:
 * KeyContext, ApcContext, the status as an unsigned 32-bit value (the upper half of the
 * IO_STATUS_BLOCK's first word is the unused rest of its Pointer member), Information. */
static void ntafd_decode_completions(uintptr_t entries_address, uint32_t count,
                                     uint64_t *decoded)
{
    const NTAFD_FILE_IO_COMPLETION_INFORMATION *entries =
        (const NTAFD_FILE_IO_COMPLETION_INFORMATION *)entries_address;
    uint32_t i;
    for (i = 0; i < count; i++) {
        uint64_t *out = decoded + 4 * (size_t)i;
        out[0] = (uint64_t)(uintptr_t)entries[i].KeyContext;
        out[1] = (uint64_t)(uintptr_t)entries[i].ApcContext;
        out[2] = (uint32_t)entries[i].IoStatusBlock.Status;
        out[3] = entries[i].IoStatusBlock.Information;
    }
}

#define NTAFD_STACK_ENTRIES 256

/* Dequeues up to max_entries packets from port (NtRemoveIoCompletionEx, not alertable) and
 * decodes each into 4 words of decoded[]: KeyContext, ApcContext, the status as an unsigned
 * 32-bit value, Information. *count is how many; 0 on STATUS_TIMEOUT, whose count the kernel
 * does not write meaningfully. has_timeout = 0 waits forever; otherwise timeout is an NT time
 * (negative: relative, 100-ns units). Returns the NTSTATUS. */
static int32_t ntafd_remove_completions(uintptr_t port, uint32_t max_entries, int has_timeout,
                                        int64_t timeout, uint64_t *decoded, uint32_t *count)
{
    NTAFD_FILE_IO_COMPLETION_INFORMATION stack_entries[NTAFD_STACK_ENTRIES];
    NTAFD_FILE_IO_COMPLETION_INFORMATION *entries = stack_entries;
    LARGE_INTEGER due;
    ULONG removed = 0;
    int32_t status;

    *count = 0;
    if (p_NtRemoveIoCompletionEx == NULL)
        return NTAFD_STATUS_NOT_INITIALISED;
    if (max_entries > NTAFD_STACK_ENTRIES) {
        entries = malloc(sizeof *entries * max_entries);
        if (entries == NULL)
            return (int32_t)0xC0000017; /* STATUS_NO_MEMORY */
    }
    due.QuadPart = timeout;
    status = p_NtRemoveIoCompletionEx((HANDLE)port, entries, max_entries, &removed,
                                      has_timeout ? &due : NULL, FALSE);
    if (status >= 0 && status != NTAFD_STATUS_TIMEOUT) {
#ifdef NTAFD_DEBUG
        if (removed > max_entries) {
            status = NTAFD_STATUS_ASSERT_COUNT;
            removed = 0;
        }
#endif
        ntafd_decode_completions((uintptr_t)entries, removed, decoded);
#ifdef NTAFD_DEBUG
        {
            ULONG i;
            for (i = 0; i < removed; i++)
                if (entries[i].ApcContext)
                    in_flight_remove((uintptr_t)entries[i].ApcContext);
        }
#endif
        *count = removed;
    }
    if (entries != stack_entries)
        free(entries);
    return status;
}

/* ---- AFD polls --------------------------------------------------------------------------- */
/* Fills the one-handle AFD_POLL_INFO at info and issues IOCTL_AFD_POLL on the helper handle,
 * with ApcContext = the OVERLAPPED at overlapped, whose first 16 bytes are the status block
 * (preset to STATUS_PENDING so that "still pending?" can be read before cancelling, D5).
 * Returns the NTSTATUS: an error means no completion will be queued. */
static int32_t ntafd_afd_poll(uintptr_t helper, uintptr_t overlapped, uintptr_t info,
                              uint64_t base_handle, uint32_t events, int64_t timeout,
                              uint32_t exclusive)
{
    NTAFD_OVERLAPPED *request = (NTAFD_OVERLAPPED *)overlapped;
    NTAFD_AFD_POLL_INFO *poll = (NTAFD_AFD_POLL_INFO *)info;
    int32_t status;

    if (p_NtDeviceIoControlFile == NULL)
        return NTAFD_STATUS_NOT_INITIALISED;
#ifdef NTAFD_DEBUG
    if ((overlapped | info) & 7)
        return NTAFD_STATUS_ASSERT_ALIGN;
    switch (in_flight_add(overlapped)) {
    case 0:
        break;
    case 1:
        return NTAFD_STATUS_ASSERT_BUSY; /* the kernel may still write this memory */
    default:
        return (int32_t)0xC0000017; /* STATUS_NO_MEMORY */
    }
#endif
    poll->Timeout = timeout;
    poll->NumberOfHandles = 1;
    poll->Exclusive = exclusive;
    poll->Handles[0].Handle = (void *)(uintptr_t)base_handle;
    poll->Handles[0].Events = events;
    poll->Handles[0].Status = 0;
    request->Internal = (uint64_t)NTAFD_STATUS_PENDING;
    request->InternalHigh = 0;
    status = p_NtDeviceIoControlFile((HANDLE)helper, NULL, NULL, request,
                                     (NTAFD_IO_STATUS_BLOCK *)request, NTAFD_IOCTL_AFD_POLL,
                                     poll, sizeof *poll, poll, sizeof *poll);
#ifdef NTAFD_DEBUG
    if (((uint32_t)status >> 30) == 3)  /* error severity: nothing will be queued */
        in_flight_remove(overlapped);
#endif
    return status;
}

/* The events a completed poll reported: the OR over its first min(NumberOfHandles, capacity)
 * entries (the kernel rewrites NumberOfHandles to how many fired). */
static uint32_t ntafd_afd_poll_events(uintptr_t info, uint32_t capacity)
{
    const NTAFD_AFD_POLL_INFO *poll = (const NTAFD_AFD_POLL_INFO *)info;
    uint32_t i, count = poll->NumberOfHandles < capacity ? poll->NumberOfHandles : capacity;
    uint32_t events = 0;
    for (i = 0; i < count; i++)
        events |= poll->Handles[i].Events;
    return events;
}

/* ---- cancelling -------------------------------------------------------------------------- */
/* Cancels the request on handle whose status block is the OVERLAPPED at overlapped, if the
 * block still reads STATUS_PENDING (trio#52, wepoll: never cancel what has completed); returns
 * STATUS_NOT_FOUND otherwise, as the kernel does for a request it no longer has. */
static int32_t ntafd_cancel(uintptr_t handle, uintptr_t overlapped)
{
    NTAFD_OVERLAPPED *request = (NTAFD_OVERLAPPED *)overlapped;
    volatile uint64_t *internal = &request->Internal;
    NTAFD_IO_STATUS_BLOCK io_status;
    if (p_NtCancelIoFileEx == NULL)
        return NTAFD_STATUS_NOT_INITIALISED;
    /* volatile: the kernel may be completing the request on another CPU right now */
    if ((int32_t)(uint32_t)(*internal & 0xFFFFFFFFu) != NTAFD_STATUS_PENDING)
        return NTAFD_STATUS_NOT_FOUND;
    return p_NtCancelIoFileEx((HANDLE)handle, (NTAFD_IO_STATUS_BLOCK *)request, &io_status);
}

/* ---- SPIKE (used only by `python -m bench.c_relay_spike`): one session's relay wholly in C --
 * Measures how much user CPU per round trip a C relay step would save (ACTIVE_KB CR1-CR6, the
 * C relay spike). Not production code: it blocks the caller's loop for the session's life (one
 * session only: other completions are set aside and re-posted at the end), has no inline
 * budget, and ends at the first EOF or error. Memory the kernel writes into (two OVERLAPPEDs
 * and one buffer per direction) is malloc'ed here and freed only once no request is pending:
 * at the end every pending request is cancelled and its completion drained first. */
#ifndef WSAAPI
#define WSAAPI WINAPI
#endif
typedef struct {
    ULONG len;
    char *buf;
} NTAFD_WSABUF;
typedef int (WSAAPI *wsa_io_fn)(UINT_PTR, NTAFD_WSABUF *, DWORD, DWORD *, DWORD *, void *,
                                void *);
typedef int (WSAAPI *wsa_send_fn)(UINT_PTR, NTAFD_WSABUF *, DWORD, DWORD *, DWORD, void *,
                                  void *);
typedef int (WSAAPI *wsa_error_fn)(void);
typedef int32_t (NTAPI *set_completion_fn)(HANDLE, void *, void *, int32_t, ULONG_PTR);

#define SPIKE_BUFFER 65536
#define SPIKE_READ 0
#define SPIKE_WRITE 1

struct spike_dir;
typedef struct {
    OVERLAPPED ov; /* first: the ApcContext is this address */
    struct spike_dir *dir;
    int which;
    int pending;
} spike_op;

typedef struct spike_dir {
    HANDLE src, dst;
    int src_sock, dst_sock, src_skip, dst_skip;
    spike_op rd, wr;
    char *buf;
    DWORD have, off;
    int done;
} spike_dir;

static wsa_io_fn p_WSARecv;
static wsa_send_fn p_WSASend;
static wsa_error_fn p_WSAGetLastError;
static set_completion_fn p_NtSetIoCompletion;

/* Starts a read or write; returns 1 if it completed at once with no packet coming (*status,
 * *count set), 0 if a packet will come (pending, or at-once success without skip), -1 on an
 * immediate failure (*status set). */
static int spike_start(spike_dir *d, int which, int32_t *status, ULONG_PTR *count)
{
    spike_op *op = which == SPIKE_READ ? &d->rd : &d->wr;
    HANDLE h = which == SPIKE_READ ? d->src : d->dst;
    int is_sock = which == SPIKE_READ ? d->src_sock : d->dst_sock;
    int skip = which == SPIKE_READ ? d->src_skip : d->dst_skip;
    char *data = which == SPIKE_READ ? d->buf : d->buf + d->off;
    DWORD size = which == SPIKE_READ ? SPIKE_BUFFER : d->have - d->off;
    DWORD error = 0, n = 0, flags = 0;
    BOOL ok;
    memset(&op->ov, 0, sizeof op->ov);
    op->pending = 1;
    if (is_sock) {
        NTAFD_WSABUF wb = {size, data};
        int rc = which == SPIKE_READ
            ? p_WSARecv((UINT_PTR)h, &wb, 1, &n, &flags, &op->ov, NULL)
            : p_WSASend((UINT_PTR)h, &wb, 1, &n, 0, &op->ov, NULL);
        ok = rc == 0;
        if (!ok)
            error = (DWORD)p_WSAGetLastError();
    } else {
        ok = which == SPIKE_READ ? ReadFile(h, data, size, NULL, &op->ov)
                                 : WriteFile(h, data, size, NULL, &op->ov);
        if (!ok)
            error = GetLastError();
    }
    if (ok) {
        if (!skip)
            return 0;
        op->pending = 0;
        *status = (int32_t)(op->ov.Internal & 0xFFFFFFFFu);
        *count = op->ov.InternalHigh;
        return 1;
    }
    if (error == ERROR_IO_PENDING)
        return 0;
    op->pending = 0;
    *status = (int32_t)error ? (int32_t)(0xC0000000u | error) : -1;
    return -1;
}

/* Continues a direction from a completion (which, status, count) for as long as its requests
 * complete at once. */
static void spike_continue(spike_dir *d, int which, int32_t status, ULONG_PTR count)
{
    for (;;) {
        int r;
        if (d->done)
            return;
        if (status < 0 || (which == SPIKE_READ && count == 0)) {
            d->done = 1;
            return;
        }
        if (which == SPIKE_READ) {
            d->have = (DWORD)count;
            d->off = 0;
            which = SPIKE_WRITE;
        } else {
            d->off += (DWORD)count;
            which = d->off < d->have ? SPIKE_WRITE : SPIKE_READ;
        }
        r = spike_start(d, which, &status, &count);
        if (r == 0)
            return;
        if (r < 0) {
            d->done = 1;
            return;
        }
    }
}

static int spike_pending(spike_dir *dirs)
{
    return dirs[0].rd.pending + dirs[0].wr.pending + dirs[1].rd.pending + dirs[1].wr.pending;
}

/* Relays sock <-> (in_pipe, out_pipe) until EOF or an error on either side; returns 0, or a
 * negative value: -1..-3 it could not start, -4 requests were left pending (the port failed; their
 * memory is kept, never freed). counts[0..1]: completions dequeued, foreign entries
 * re-posted. */
static int32_t ntafd_relay_spike(uintptr_t port, uintptr_t sock, int sock_skip,
                                 uintptr_t in_pipe, int in_skip, uintptr_t out_pipe,
                                 int out_skip, uint64_t *counts)
{
    NTAFD_FILE_IO_COMPLETION_INFORMATION entry, *foreign = NULL;
    ULONG removed, nforeign = 0, foreign_room = 0, i;
    spike_dir *dirs;
    int k, left;
    if (p_WSARecv == NULL) {
        HMODULE ws2 = LoadLibraryW(L"ws2_32.dll");
        HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
        if (ws2 == NULL || ntdll == NULL)
            return -1;
        p_WSASend = (wsa_send_fn)(void (*)(void))GetProcAddress(ws2, "WSASend");
        p_WSAGetLastError = (wsa_error_fn)(void (*)(void))GetProcAddress(ws2, "WSAGetLastError");
        p_NtSetIoCompletion = (set_completion_fn)(void (*)(void))GetProcAddress(
            ntdll, "NtSetIoCompletion");
        p_WSARecv = (wsa_io_fn)(void (*)(void))GetProcAddress(ws2, "WSARecv");
        if (!p_WSARecv || !p_WSASend || !p_WSAGetLastError || !p_NtSetIoCompletion)
            return -2;
    }
    dirs = calloc(2, sizeof *dirs);
    if (dirs == NULL)
        return -3;
    dirs[0].src = (HANDLE)sock; dirs[0].src_sock = 1; dirs[0].src_skip = sock_skip;
    dirs[0].dst = (HANDLE)in_pipe; dirs[0].dst_skip = in_skip;
    dirs[1].src = (HANDLE)out_pipe; dirs[1].src_skip = out_skip;
    dirs[1].dst = (HANDLE)sock; dirs[1].dst_sock = 1; dirs[1].dst_skip = sock_skip;
    for (k = 0; k < 2; k++) {
        dirs[k].rd.dir = dirs[k].wr.dir = &dirs[k];
        dirs[k].rd.which = SPIKE_READ;
        dirs[k].wr.which = SPIKE_WRITE;
        dirs[k].buf = malloc(SPIKE_BUFFER);
        if (dirs[k].buf == NULL) {
            free(dirs[0].buf);
            free(dirs);
            return -3;
        }
    }
    for (k = 0; k < 2; k++) {
        int32_t status;
        ULONG_PTR count;
        int r = spike_start(&dirs[k], SPIKE_READ, &status, &count);
        if (r > 0)
            spike_continue(&dirs[k], SPIKE_READ, status, count);
        else if (r < 0)
            dirs[k].done = 1;
    }
    counts[0] = counts[1] = 0;
    for (;;) {
        int draining = dirs[0].done || dirs[1].done;
        if (draining) {
            if (spike_pending(dirs) == 0)
                break;
            for (k = 0; k < 2; k++) {
                if (dirs[k].rd.pending)
                    CancelIoEx(dirs[k].src, &dirs[k].rd.ov);
                if (dirs[k].wr.pending)
                    CancelIoEx(dirs[k].dst, &dirs[k].wr.ov);
            }
        }
        if (p_NtRemoveIoCompletionEx((HANDLE)port, &entry, 1, &removed, NULL, FALSE) < 0)
            break; /* the port is gone: leak the state rather than free memory in flight */
        counts[0]++;
        {
            spike_op *op = NULL;
            for (k = 0; k < 2 && op == NULL; k++) {
                if (entry.ApcContext == &dirs[k].rd)
                    op = &dirs[k].rd;
                else if (entry.ApcContext == &dirs[k].wr)
                    op = &dirs[k].wr;
            }
            if (op == NULL) {
                if (nforeign == foreign_room) {
                    ULONG room = foreign_room ? foreign_room * 2 : 64;
                    void *grown = realloc(foreign, room * sizeof *foreign);
                    if (grown == NULL) { /* hand it back now rather than lose it */
                        p_NtSetIoCompletion((HANDLE)port, entry.KeyContext, entry.ApcContext,
                                            entry.IoStatusBlock.Status,
                                            (ULONG_PTR)entry.IoStatusBlock.Information);
                        break;
                    }
                    foreign = grown;
                    foreign_room = room;
                }
                foreign[nforeign++] = entry;
                counts[1]++;
                continue;
            }
            op->pending = 0;
            if (op->dir->done)
                continue;
            spike_continue(op->dir, op->which, entry.IoStatusBlock.Status,
                           (ULONG_PTR)entry.IoStatusBlock.Information);
        }
    }
    left = spike_pending(dirs);
    if (left == 0) { /* else the kernel may still write them: kept, never freed */
        free(dirs[0].buf);
        free(dirs[1].buf);
        free(dirs);
    }
    for (i = 0; i < nforeign; i++)
        p_NtSetIoCompletion((HANDLE)port, foreign[i].KeyContext, foreign[i].ApcContext,
                            foreign[i].IoStatusBlock.Status,
                            (ULONG_PTR)foreign[i].IoStatusBlock.Information);
    free(foreign);
    return left == 0 ? 0 : -4;
}
