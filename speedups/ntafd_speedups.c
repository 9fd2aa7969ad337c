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
#define NTAFD_ABI_VERSION 2
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

/* ---- the relay step: one direction (src -> dst) of a session's relay, driven in C ----------
 * ACTIVE_KB CR1-CR7. A relay owns one buffer and two OVERLAPPEDs (a read on src, a write to
 * dst), malloc'ed here; it reads, writes what it read (the rest again after a partial write),
 * and reads again, continuing at once when a request completed inline (skip-on-success, as the
 * caller says each handle has). Its requests' completions come through the caller's port with
 * the handles' own keys: a relay set recognises them by their OVERLAPPED addresses (a table of
 * the set's requests in flight) in ntafd_relay_remove_completions, which dequeues in place of
 * ntafd_remove_completions, continues relay entries in C and decodes every other entry as that
 * function does.
 *
 * A relay leaves C (an *event*, reported once as a decoded entry: key = the caller's token,
 * ApcContext 0, status = RELAY_EVENT_*, Information = its bytes written so far) when it read
 * EOF, when a request failed, when the caller stopped it, or (if opened with give_full) after
 * a read that filled its buffer, or brought fewer than give_small bytes (the bytes held: the
 * caller's flow control and growing or shrinking buffers act on them; C relays the rest) - and only once none of its
 * requests is pending, so the caller may then use both handles itself. Memory rules: a relay
 * is freed only when none of its requests is pending (ntafd_relay_close on an idle relay, or
 * the dequeue that sees a closed relay's last completion); a relay whose completion never comes
 * is kept, never freed (ntafd_relay_set_pending counts them, for the port's close to report).
 *
 * Inline budget: one dequeue call continues at most set->budget inline completions; past it, a
 * continuation is posted to the port (NtSetIoCompletion with the request's OVERLAPPED as
 * ApcContext) and resumes from the queue, behind what is already there. One thread drives a
 * set (the loop's): the functions here take no lock. */
#ifndef WSAAPI
#define WSAAPI WINAPI
#endif
typedef struct {
    ULONG len;
    char *buf;
} NTAFD_WSABUF;
typedef int (WSAAPI *wsa_recv_fn)(UINT_PTR, NTAFD_WSABUF *, DWORD, DWORD *, DWORD *, void *,
                                  void *);
typedef int (WSAAPI *wsa_send_fn)(UINT_PTR, NTAFD_WSABUF *, DWORD, DWORD *, DWORD, void *,
                                  void *);
typedef int (WSAAPI *wsa_error_fn)(void);
typedef int32_t (NTAPI *set_completion_fn)(HANDLE, void *, void *, int32_t, ULONG_PTR);

static wsa_recv_fn p_WSARecv;
static wsa_send_fn p_WSASend;
static wsa_error_fn p_WSAGetLastError;
static set_completion_fn p_NtSetIoCompletion;

#define RELAY_MAGIC 0x52454C59u
#define RELAY_DEAD 0xDEADDEADu
#define RELAY_READ 0
#define RELAY_WRITE 1
/* states */
#define RELAY_IDLE 0     /* opened or reported: the caller owns both handles */
#define RELAY_RUNNING 1  /* C owns it: a request may be pending */
#define RELAY_ENDED 2    /* EOF, error or stop seen; its event is due once nothing is pending */
/* events (the status of the decoded entry) */
#define RELAY_EVENT_EOF 1
#define RELAY_EVENT_ERROR 2
#define RELAY_EVENT_STOPPED 3
#define RELAY_EVENT_FULL 4 /* a read filled the buffer: held, not written (the caller may grow) */
#define RELAY_EVENT_SMALL 5 /* a read brought fewer than give_small bytes: held (it may shrink) */
#define RELAY_MAX_CALLS 64 /* kernel calls per dequeue call before returning empty-handed */
#define NTAFD_STATUS_ASSERT_RELAY ((int32_t)0xE0AF0004) /* a relay invariant broke */
#define NTAFD_STATUS_PIPE_BROKEN ((int32_t)0xC000014B)
#define NTAFD_STATUS_END_OF_FILE ((int32_t)0xC0000011)

struct ntafd_relay;
struct ntafd_relay_set;
typedef struct {
    OVERLAPPED ov; /* first: the ApcContext is this address */
    struct ntafd_relay *relay;
    int which;
    int pending;
} relay_op;

typedef struct ntafd_relay {
    uint32_t magic;
    struct ntafd_relay_set *set;
    uint64_t token;
    HANDLE src, dst;
    int src_sock, dst_sock, src_skip, dst_skip;
    relay_op rd, wr;
    char *buf;
    DWORD size, have, off;
    uint64_t moved, inline_done, dequeued;
    int state, event, closed, queued;
    int failed; /* RELAY_EVENT_ERROR: which request failed (RELAY_READ or RELAY_WRITE) */
    int give_full; /* end with RELAY_EVENT_FULL after a read that filled the buffer */
    DWORD give_small; /* end with RELAY_EVENT_SMALL after a read of fewer bytes (0: never) */
    int32_t status; /* the failing request's status (RELAY_EVENT_ERROR) */
    struct ntafd_relay *next_event;
    struct ntafd_relay *prev, *next; /* every relay of the set */
} ntafd_relay;

typedef struct ntafd_relay_set {
    uint32_t magic;
    HANDLE port;
    relay_op **table; /* open addressing on &op->ov; NULL empty, TOMBSTONE deleted */
    size_t capacity, used, live;
    ntafd_relay *events, *events_tail; /* ended relays whose event is due */
    ntafd_relay *relays;               /* every relay not yet freed */
    uint32_t budget, spent;
    int32_t broken; /* an assertion that failed in the Debug build, reported once */
} ntafd_relay_set;

#define RELAY_TOMBSTONE ((relay_op *)1)

static int relay_init(void)
{
    HMODULE ws2, ntdll;
    if (p_WSARecv != NULL)
        return 0;
    ws2 = LoadLibraryW(L"ws2_32.dll");
    ntdll = GetModuleHandleW(L"ntdll.dll");
    if (ws2 == NULL || ntdll == NULL)
        return -1;
    p_WSASend = (wsa_send_fn)(void (*)(void))GetProcAddress(ws2, "WSASend");
    p_WSAGetLastError = (wsa_error_fn)(void (*)(void))GetProcAddress(ws2, "WSAGetLastError");
    p_NtSetIoCompletion = (set_completion_fn)(void (*)(void))GetProcAddress(
        ntdll, "NtSetIoCompletion");
    if (!p_WSASend || !p_WSAGetLastError || !p_NtSetIoCompletion)
        return -2;
    p_WSARecv = (wsa_recv_fn)(void (*)(void))GetProcAddress(ws2, "WSARecv");
    return p_WSARecv ? 0 : -2;
}

#ifdef NTAFD_DEBUG
#define RELAY_ASSERT(set, cond) do { if (!(cond) && !(set)->broken) \
    (set)->broken = NTAFD_STATUS_ASSERT_RELAY; } while (0)
#else
#define RELAY_ASSERT(set, cond) do { } while (0)
#endif

static size_t relay_slot(const relay_op *op, size_t capacity)
{
    return (size_t)(((uintptr_t)op >> 4) * 0x9E3779B97F4A7C15ull) & (capacity - 1);
}

static int relay_table_grow(ntafd_relay_set *set)
{
    size_t capacity = set->capacity ? set->capacity * 2 : 64, i, s;
    relay_op **table = calloc(capacity, sizeof *table);
    if (table == NULL)
        return -1;
    for (i = 0; i < set->capacity; i++) {
        relay_op *op = set->table[i];
        if (op == NULL || op == RELAY_TOMBSTONE)
            continue;
        for (s = relay_slot(op, capacity); table[s]; s = (s + 1) & (capacity - 1))
            ;
        table[s] = op;
    }
    free(set->table);
    set->table = table;
    set->capacity = capacity;
    set->used = set->live;
    return 0;
}

/* Records op as pending (before its call: a completion may be dequeued by the time it
 * returns... on this thread it cannot, but the rule is the port's). */
static int relay_track(ntafd_relay_set *set, relay_op *op)
{
    size_t s;
    RELAY_ASSERT(set, !op->pending);
    if ((set->used + 1) * 2 > set->capacity && relay_table_grow(set) != 0)
        return -1;
    for (s = relay_slot(op, set->capacity); set->table[s] && set->table[s] != RELAY_TOMBSTONE;
         s = (s + 1) & (set->capacity - 1))
        ;
    if (set->table[s] == NULL)
        set->used++;
    set->table[s] = op;
    set->live++;
    op->pending = 1;
    return 0;
}

static relay_op *relay_find(ntafd_relay_set *set, const void *apc, int remove)
{
    size_t s;
    if (set->capacity == 0 || apc == NULL)
        return NULL;
    for (s = relay_slot((const relay_op *)apc, set->capacity); set->table[s];
         s = (s + 1) & (set->capacity - 1)) {
        relay_op *op = set->table[s];
        if (op != RELAY_TOMBSTONE && (const void *)&op->ov == apc) {
            if (remove) {
                set->table[s] = RELAY_TOMBSTONE;
                set->live--;
                op->pending = 0;
            }
            return op;
        }
    }
    return NULL;
}

static void relay_untrack(ntafd_relay_set *set, relay_op *op)
{
    relay_op *found = relay_find(set, &op->ov, 1);
    RELAY_ASSERT(set, found == op);
    (void)found;
}

static void relay_free(ntafd_relay *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->set->relays = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->magic = RELAY_DEAD;
    free(r->buf);
    free(r);
}

static int relay_pending(const ntafd_relay *r)
{
    return r->rd.pending + r->wr.pending;
}

/* Ends r (EOF, error or stop); its event is queued once nothing of it is pending. */
static void relay_end(ntafd_relay *r, int event, int32_t status, int which)
{
    if (r->state == RELAY_RUNNING) {
        r->state = RELAY_ENDED;
        r->event = event;
        r->status = status;
        r->failed = which;
    }
}

static void relay_settle(ntafd_relay *r)
{
    ntafd_relay_set *set = r->set;
    if (r->state != RELAY_ENDED || relay_pending(r) || r->queued)
        return;
    if (r->closed) {
        relay_free(r);
        return;
    }
    r->queued = 1;
    r->next_event = NULL;
    if (set->events_tail)
        set->events_tail->next_event = r;
    else
        set->events = r;
    set->events_tail = r;
}

/* Starts r's read or write. Returns 1 if it completed at once with no packet coming (*status,
 * *count set), 0 if a packet will come (pending, or an at-once success without skip), -1 if
 * it failed at once (*status set; no packet). */
static int relay_start(ntafd_relay *r, int which, int32_t *status, ULONG_PTR *count)
{
    relay_op *op = which == RELAY_READ ? &r->rd : &r->wr;
    HANDLE h = which == RELAY_READ ? r->src : r->dst;
    int is_sock = which == RELAY_READ ? r->src_sock : r->dst_sock;
    int skip = which == RELAY_READ ? r->src_skip : r->dst_skip;
    char *data = which == RELAY_READ ? r->buf : r->buf + r->off;
    DWORD size = which == RELAY_READ ? r->size : r->have - r->off;
    DWORD error = 0, n = 0, flags = 0;
    BOOL ok;
    memset(&op->ov, 0, sizeof op->ov);
    op->ov.Internal = (ULONG_PTR)(uint32_t)NTAFD_STATUS_PENDING;
    if (relay_track(r->set, op) != 0) {
        *status = (int32_t)0xC0000017; /* STATUS_NO_MEMORY */
        return -1;
    }
    if (is_sock) {
        NTAFD_WSABUF wb = {size, data};
        int rc = which == RELAY_READ
            ? p_WSARecv((UINT_PTR)h, &wb, 1, &n, &flags, &op->ov, NULL)
            : p_WSASend((UINT_PTR)h, &wb, 1, &n, 0, &op->ov, NULL);
        ok = rc == 0;
        if (!ok)
            error = (DWORD)p_WSAGetLastError();
    } else {
        ok = which == RELAY_READ ? ReadFile(h, data, size, NULL, &op->ov)
                                 : WriteFile(h, data, size, NULL, &op->ov);
        if (!ok)
            error = GetLastError();
    }
    if (ok) {
        if (!skip)
            return 0;
        relay_untrack(r->set, op);
        r->inline_done++;
        *status = (int32_t)(op->ov.Internal & 0xFFFFFFFFu);
        *count = op->ov.InternalHigh;
        return 1;
    }
    if (error == ERROR_IO_PENDING)
        return 0;
    relay_untrack(r->set, op);
    if (which == RELAY_READ && (error == ERROR_BROKEN_PIPE || error == ERROR_HANDLE_EOF)) {
        /* The writer closed and the pipe is empty: end of data, nothing queued (F12). */
        *status = 0;
        *count = 0;
        r->inline_done++;
        return 1;
    }
    /* A Win32 error as an NTSTATUS-like failure (customer bit clear, severity error). */
    *status = (int32_t)(0xC0070000u | (error & 0xFFFFu));
    return -1;
}

/* Continues r from a completion of its request `which` for as long as requests complete at
 * once, within the set's inline budget (past it the continuation is posted to the port). */
static void relay_continue(ntafd_relay *r, int which, int32_t status, ULONG_PTR count)
{
    ntafd_relay_set *set = r->set;
    for (;;) {
        int started;
        if (r->state != RELAY_RUNNING)
            break;
        if (which == RELAY_READ && (status == NTAFD_STATUS_PIPE_BROKEN
                                    || status == NTAFD_STATUS_END_OF_FILE)) {
            status = 0; /* a pending read ends so when the writer closes (F12) */
            count = 0;
        }
        if (status < 0) {
            relay_end(r, RELAY_EVENT_ERROR, status, which);
            break;
        }
        if (which == RELAY_READ) {
            if (count == 0) {
                relay_end(r, RELAY_EVENT_EOF, 0, which);
                break;
            }
            RELAY_ASSERT(set, count <= r->size);
            r->have = (DWORD)count;
            r->off = 0;
            if (count == r->size && r->give_full) {
                relay_end(r, RELAY_EVENT_FULL, 0, which);
                break;
            }
            if (count < r->give_small) {
                relay_end(r, RELAY_EVENT_SMALL, 0, which);
                break;
            }
            which = RELAY_WRITE;
        } else {
            RELAY_ASSERT(set, count <= r->have - r->off);
            r->off += (DWORD)count;
            r->moved += count;
            which = r->off < r->have ? RELAY_WRITE : RELAY_READ;
            if (which == RELAY_READ)
                r->have = r->off = 0;
        }
        started = relay_start(r, which, &status, &count);
        if (started == 0)
            return;
        if (started < 0) {
            relay_end(r, RELAY_EVENT_ERROR, status, which);
            break;
        }
        if (++set->spent > set->budget) {
            relay_op *op = which == RELAY_READ ? &r->rd : &r->wr;
            /* Resume from the queue: the completion goes round the port as a posted packet. */
            if (relay_track(set, op) == 0) {
                op->ov.Internal = (ULONG_PTR)(uint32_t)status;
                op->ov.InternalHigh = count;
                if (p_NtSetIoCompletion(set->port, (void *)(uintptr_t)r->token, &op->ov,
                                        status, count) >= 0)
                    return;
                relay_untrack(set, op);
            }
            /* Could not post: continue here rather than lose the completion. */
        }
    }
    relay_settle(r);
}

/* ---- the relay functions the Python side calls ---- */
static uintptr_t ntafd_relay_set_new(uintptr_t port, uint32_t budget)
{
    ntafd_relay_set *set;
    if (relay_init() != 0 || p_NtRemoveIoCompletionEx == NULL)
        return 0;
    set = calloc(1, sizeof *set);
    if (set == NULL)
        return 0;
    set->magic = RELAY_MAGIC;
    set->port = (HANDLE)port;
    set->budget = budget ? budget : 1;
    return (uintptr_t)set;
}

/* How many of the set's requests are pending (the port's close drains until 0). */
static uint64_t ntafd_relay_set_pending(uintptr_t set_address)
{
    ntafd_relay_set *set = (ntafd_relay_set *)set_address;
    return set->live;
}

/* Frees the set and its relays if none of their requests is pending; else keeps all of it (the
 * kernel may still write into them) and returns how many are pending. */
static uint64_t ntafd_relay_set_free(uintptr_t set_address)
{
    ntafd_relay_set *set = (ntafd_relay_set *)set_address;
    size_t live = set->live;
    if (live == 0) {
        while (set->relays) /* none has a request pending: their memory is the caller's */
            relay_free(set->relays);
        set->magic = RELAY_DEAD;
        free(set->table);
        free(set);
    }
    return live;
}

static uintptr_t ntafd_relay_open(uintptr_t set_address, uint64_t token, uintptr_t src,
                                  int src_sock, int src_skip, uintptr_t dst, int dst_sock,
                                  int dst_skip, uint32_t size, int give_full,
                                  uint32_t give_small)
{
    ntafd_relay_set *set = (ntafd_relay_set *)set_address;
    ntafd_relay *r;
    if (set == NULL || set->magic != RELAY_MAGIC || size == 0)
        return 0;
    r = calloc(1, sizeof *r);
    if (r == NULL)
        return 0;
    r->buf = malloc(size);
    if (r->buf == NULL) {
        free(r);
        return 0;
    }
    r->magic = RELAY_MAGIC;
    r->set = set;
    r->token = token;
    r->src = (HANDLE)src; r->src_sock = src_sock; r->src_skip = src_skip;
    r->dst = (HANDLE)dst; r->dst_sock = dst_sock; r->dst_skip = dst_skip;
    r->size = size;
    r->give_full = give_full;
    r->give_small = give_small;
    r->rd.relay = r->wr.relay = r;
    r->rd.which = RELAY_READ;
    r->wr.which = RELAY_WRITE;
    r->next = set->relays;
    if (set->relays)
        set->relays->prev = r;
    set->relays = r;
    return (uintptr_t)r;
}

/* Ends r as STOPPED and cancels its pending request (its completion still comes: C keeps r's
 * memory until it is seen). */
static void relay_cancel(ntafd_relay *r)
{
    relay_end(r, RELAY_EVENT_STOPPED, 0, 0);
    if (r->rd.pending)
        CancelIoEx(r->src, &r->rd.ov);
    if (r->wr.pending)
        CancelIoEx(r->dst, &r->wr.ov);
}

/* Hands r to C: it reads src (and relays) until an event. Only from RELAY_IDLE with nothing
 * held (ntafd_relay_take first). Returns 0, or an assertion status. An EOF or error met at once
 * is reported by the next dequeue, like any event. */
static int32_t ntafd_relay_run(uintptr_t relay)
{
    ntafd_relay *r = (ntafd_relay *)relay;
    int32_t status = 0;
    ULONG_PTR count = 0;
    int started;
    if (r->magic != RELAY_MAGIC || r->state != RELAY_IDLE || r->closed || r->have != r->off
        || relay_pending(r))
        return NTAFD_STATUS_ASSERT_RELAY;
    r->state = RELAY_RUNNING;
    r->have = r->off = 0;
    r->set->spent = 0;
    started = relay_start(r, RELAY_READ, &status, &count);
    if (started > 0)
        relay_continue(r, RELAY_READ, status, count);
    else if (started < 0) {
        relay_end(r, RELAY_EVENT_ERROR, status, RELAY_READ);
        relay_settle(r);
    }
    return 0;
}

/* Asks C to give r back: its pending request is cancelled, and a STOPPED event follows once its
 * completion was seen (bytes a read brought meanwhile stay for ntafd_relay_take). Returns 1 if
 * it was running, 0 if not (already ended: its event is on its way, or it is idle). */
static int ntafd_relay_stop(uintptr_t relay)
{
    ntafd_relay *r = (ntafd_relay *)relay;
    if (r->magic != RELAY_MAGIC || r->state != RELAY_RUNNING)
        return 0;
    relay_cancel(r);
    relay_settle(r);
    return 1;
}

/* r's counters: out[0] state, out[1] event, out[2] status (unsigned), out[3] bytes written,
 * out[4] bytes held (read, not yet written), out[5] requests pending, out[6] requests that
 * completed inline, out[7] completions dequeued, out[8] after RELAY_EVENT_ERROR: which request
 * failed (0 the read of src, 1 the write to dst). */
static int32_t ntafd_relay_info(uintptr_t relay, uint64_t *out)
{
    ntafd_relay *r = (ntafd_relay *)relay;
    if (r->magic != RELAY_MAGIC)
        return NTAFD_STATUS_ASSERT_RELAY;
    out[0] = (uint64_t)r->state;
    out[1] = (uint64_t)r->event;
    out[2] = (uint32_t)r->status;
    out[3] = r->moved;
    out[4] = r->have - r->off;
    out[5] = (uint64_t)relay_pending(r);
    out[6] = r->inline_done;
    out[7] = r->dequeued;
    out[8] = (uint64_t)r->failed;
    return 0;
}

/* After r's event: copies the bytes it read but did not write (at most room) into out, makes
 * it IDLE again and returns how many were copied (the rest stays for the next call). */
static int64_t ntafd_relay_take(uintptr_t relay, char *out, uint32_t room)
{
    ntafd_relay *r = (ntafd_relay *)relay;
    DWORD n;
    if (r->magic != RELAY_MAGIC || relay_pending(r) || r->state == RELAY_RUNNING
        || (r->state == RELAY_ENDED && r->queued))
        return -1;
    n = r->have - r->off;
    if (n > room)
        n = room;
    memcpy(out, r->buf + r->off, n);
    r->off += n;
    r->state = RELAY_IDLE;
    return n;
}

/* The caller gives r up. Idle or reported: freed now (returns 1). Running: its requests are
 * cancelled and the dequeue that sees the last completion frees it (returns 0): no event. */
static int ntafd_relay_close(uintptr_t relay)
{
    ntafd_relay *r = (ntafd_relay *)relay;
    ntafd_relay_set *set = r->set;
    if (r->magic != RELAY_MAGIC || r->closed)
        return -1;
    r->closed = 1;
    if (r->queued) { /* its event is queued: unlink it */
        ntafd_relay **link = &set->events, *prev = NULL;
        while (*link && *link != r) {
            prev = *link;
            link = &(*link)->next_event;
        }
        if (*link == r) {
            *link = r->next_event;
            if (set->events_tail == r)
                set->events_tail = prev;
        }
        r->queued = 0;
    }
    if (!relay_pending(r)) {
        relay_free(r);
        return 1;
    }
    relay_cancel(r);
    return 0;
}

/* Cancels every pending request of the set's relays (the port is closing). */
static void ntafd_relay_set_cancel(uintptr_t set_address)
{
    ntafd_relay_set *set = (ntafd_relay_set *)set_address;
    size_t i;
    for (i = 0; i < set->capacity; i++) {
        relay_op *op = set->table[i];
        if (op == NULL || op == RELAY_TOMBSTONE)
            continue;
        relay_end(op->relay, RELAY_EVENT_STOPPED, 0, 0);
        CancelIoEx(op->which == RELAY_READ ? op->relay->src : op->relay->dst, &op->ov);
    }
}

/* ntafd_remove_completions for a port with relays: relay completions are continued here, other
 * entries and relay events are decoded into decoded[] (at most max_entries in all; *count).
 * Waits again while it dequeued only relay entries (at most RELAY_MAX_CALLS kernel calls, and
 * within the timeout), so a round trip relayed wholly in C costs no return to Python. */
static int32_t ntafd_relay_remove_completions(uintptr_t set_address, uint32_t max_entries,
                                              int has_timeout, int64_t timeout,
                                              uint64_t *decoded, uint32_t *count)
{
    ntafd_relay_set *set = (ntafd_relay_set *)set_address;
    NTAFD_FILE_IO_COMPLETION_INFORMATION stack_entries[NTAFD_STACK_ENTRIES];
    NTAFD_FILE_IO_COMPLETION_INFORMATION *entries = stack_entries;
    LARGE_INTEGER due;
    ULONGLONG deadline = 0;
    ULONG removed = 0, i;
    uint32_t out = 0, calls = 0;
    int32_t status = 0;

    *count = 0;
    if (p_NtRemoveIoCompletionEx == NULL || set == NULL)
        return NTAFD_STATUS_NOT_INITIALISED;
    if (set->magic != RELAY_MAGIC)
        return NTAFD_STATUS_ASSERT_RELAY;
    if (max_entries > NTAFD_STACK_ENTRIES) {
        entries = malloc(sizeof *entries * max_entries);
        if (entries == NULL)
            return (int32_t)0xC0000017; /* STATUS_NO_MEMORY */
    }
    if (has_timeout && timeout < 0)
        deadline = GetTickCount64() + (ULONGLONG)(-timeout / 10000);
    set->spent = 0;
    while (out == 0) {
        int64_t wait = timeout;
        if (set->events != NULL)
            wait = 0; /* events are due: only take what is already queued */
        else if (has_timeout && timeout < 0 && calls > 0) {
            ULONGLONG now = GetTickCount64();
            wait = now >= deadline ? 0 : -(int64_t)(deadline - now) * 10000;
        }
        due.QuadPart = wait;
        status = p_NtRemoveIoCompletionEx(set->port, entries, max_entries, &removed,
                                          (has_timeout || set->events) ? &due : NULL, FALSE);
        calls++;
        if (status < 0 || status == NTAFD_STATUS_TIMEOUT)
            removed = 0;
#ifdef NTAFD_DEBUG
        if (removed > max_entries) {
            status = NTAFD_STATUS_ASSERT_COUNT;
            removed = 0;
        }
#endif
        for (i = 0; i < removed; i++) {
            relay_op *op = relay_find(set, entries[i].ApcContext, 1);
            if (op == NULL) {
                ntafd_decode_completions((uintptr_t)&entries[i], 1, decoded + 4 * (size_t)out);
#ifdef NTAFD_DEBUG
                if (entries[i].ApcContext)
                    in_flight_remove((uintptr_t)entries[i].ApcContext);
#endif
                out++;
                continue;
            }
            RELAY_ASSERT(set, op->relay->magic == RELAY_MAGIC);
            op->relay->dequeued++;
            if (op->relay->state == RELAY_RUNNING)
                relay_continue(op->relay, op->which, entries[i].IoStatusBlock.Status,
                               (ULONG_PTR)entries[i].IoStatusBlock.Information);
            else {
                /* Ended (stopped or closed): keep what a read brought for the caller. */
                if (op->which == RELAY_READ && entries[i].IoStatusBlock.Status >= 0) {
                    op->relay->have = (DWORD)entries[i].IoStatusBlock.Information;
                    op->relay->off = 0;
                } else if (op->which == RELAY_WRITE && entries[i].IoStatusBlock.Status >= 0) {
                    op->relay->off += (DWORD)entries[i].IoStatusBlock.Information;
                    op->relay->moved += entries[i].IoStatusBlock.Information;
                }
                relay_settle(op->relay);
            }
        }
        /* Events fill the room the relay entries left. */
        while (set->events != NULL && out < max_entries) {
            ntafd_relay *r = set->events;
            uint64_t *o = decoded + 4 * (size_t)out;
            set->events = r->next_event;
            if (set->events == NULL)
                set->events_tail = NULL;
            r->queued = 0;
            o[0] = r->token;
            o[1] = 0;
            o[2] = (uint64_t)r->event;
            o[3] = r->moved;
            out++;
        }
        if (status < 0 || status == NTAFD_STATUS_TIMEOUT || calls >= RELAY_MAX_CALLS
            || (has_timeout && timeout == 0))
            break;
        if (has_timeout && timeout < 0 && GetTickCount64() >= deadline)
            break;
    }
    if (entries != stack_entries)
        free(entries);
    if (set->broken) {
        status = set->broken;
        set->broken = 0;
    }
    *count = out;
    if (out && status == NTAFD_STATUS_TIMEOUT)
        status = 0;
    return status;
}
