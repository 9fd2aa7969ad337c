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
