/*
 * Team sizes that survive a busy machine (bsk_team_* in bsk_internal.h),
 * compiled with baseline flags.
 *
 * An OpenMP region ends when its last thread ends.  When other processes
 * share the cores, one of the team is often descheduled for a whole
 * scheduler slice (milliseconds) while the others wait for it: on 2 cores
 * with two busy processes beside it, a BERT forward of ~140 short regions
 * ran 20-50x slower on 2 threads, where one thread would have run ~2x
 * slower.  So every region records when each thread entered and left it;
 * a region whose threads entered or left more than BSK_TEAM_SKEW_NS apart,
 * and apart by more than half its length, was held up by the scheduler.
 * BSK_TEAM_HELD (4) such regions among the last BSK_TEAM_WINDOW make the following
 * regions run on one thread for a back-off window (10 ms, doubled while
 * it keeps happening, up to 1.28 s) before the full team is tried again.
 * The first window is short because most bursts are: another library's
 * threads still spinning after its call, or the hypervisor, hold up a few
 * regions in a row and are gone within milliseconds; a first window of
 * 100 ms kept a BERT-Base call (11 ms) on one thread for whole rounds of a
 * benchmark interleaved with ONNX Runtime and OpenVINO in one process.
 * Other processes that keep the cores busy keep it doubling.
 *
 * One thread wins only while it has a core to itself.  With more busy
 * threads beside it than there are spare cores (two busy processes on 2
 * cores), it waits for a CPU too, and the full team, getting a bigger share
 * of the cores, is faster in spite of its waits (BERT-Base on 2 cores with
 * two busy processes: 1.65-2.7x its quiet time on the team against 2.5-3.5x
 * on one thread).  So while on one thread, each calling thread reads its own
 * scheduler statistics (Linux's /proc/thread-self/schedstat: time run and
 * time waited for a CPU) every BSK_TEAM_SHARE_SPAN_NS; when it waited more
 * than 1 / BSK_TEAM_SHARE_DIV of two such spans in a row, every core is shared: the
 * window ends and held-up regions are ignored for a team window (10 ms,
 * doubled while the one thread keeps finding its core shared, up to
 * 1.28 s); a span without waiting ends the doubling.  Where the file is
 * missing the one-thread windows run as before.
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bsk_internal.h"

#define BSK_TEAM_SKEW_NS 1000000      /* a scheduler slice, not a late wake-up */
#define BSK_TEAM_BACKOFF_NS 10000000  /* first window on one thread */
#define BSK_TEAM_BACKOFF_MAX 7        /* doublings: 10 ms .. 1.28 s */
#define BSK_TEAM_WINDOW 64            /* regions remembered */
#define BSK_TEAM_HELD 4               /* held-up regions among them that fall back */
#define BSK_TEAM_SHARE_SPAN_NS 4000000 /* one thread's span between schedstat reads */
#define BSK_TEAM_SHARE_DIV 5          /* waited > span / 5: its core is shared */

static _Atomic int64_t single_until; /* monotonic ns; run on one thread before it */
static _Atomic int64_t team_until;   /* monotonic ns; no fallback before it */
static _Atomic int64_t window_id;    /* one-thread windows begun */
static _Atomic int share_level;      /* doublings of the team window */
static _Atomic int64_t shared_core_ends; /* one-thread windows ended on a shared core */
static _Atomic uint64_t history;      /* bit i: the i-th last full-team region was held up */
static _Atomic int clean_run;         /* full-team regions since the last held-up one */
static _Atomic int backoff_level;
static _Atomic int64_t detections;
static _Atomic int adaptive = -1;     /* -1: not read from the environment yet */

int64_t bsk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int bsk_team_adaptive(void)
{
    int a = atomic_load_explicit(&adaptive, memory_order_relaxed);
    if (a < 0) {
        const char *env = getenv("BLOCKSPARSE_ADAPTIVE_THREADS");
        a = !(env && (strcmp(env, "0") == 0 || strcmp(env, "off") == 0 ||
                      strcmp(env, "false") == 0));
        atomic_store_explicit(&adaptive, a, memory_order_relaxed);
    }
    return a;
}

void bsk_team_set_adaptive(int on)
{
    atomic_store_explicit(&adaptive, on != 0, memory_order_relaxed);
    if (!on)
        atomic_store_explicit(&single_until, 0, memory_order_relaxed);
}

/* The calling thread's time on a CPU and time waiting for one, in ns, from
 * /proc/thread-self/schedstat; 0 where it cannot be read. */
static int read_schedstat(int64_t *run, int64_t *wait)
{
    char buf[96];
    int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    long long r, w;
    if (sscanf(buf, "%lld %lld", &r, &w) != 2)
        return 0;
    *run = r;
    *wait = w;
    return 1;
}

/* While on one thread: does this thread get a core of its own?  Each
 * calling thread compares its own statistics over spans of its own, begun
 * afresh in every one-thread window. */
static void check_shared_core(int64_t now)
{
    static _Thread_local int64_t id = -1, at, run0, wait0;
    static _Thread_local int strikes;
    const int64_t w = atomic_load_explicit(&window_id, memory_order_relaxed);
    int64_t run, wait;
    if (id != w || now - at >= 4 * BSK_TEAM_SHARE_SPAN_NS) { /* a new window or a stale span */
        if (read_schedstat(&run0, &wait0)) {
            id = w;
            at = now;
            strikes = 0;
        }
        return;
    }
    if (now - at < BSK_TEAM_SHARE_SPAN_NS || !read_schedstat(&run, &wait))
        return;
    const int64_t waited = wait - wait0;
    id = w;
    at = now;
    run0 = run;
    wait0 = wait;
    int level = atomic_load_explicit(&share_level, memory_order_relaxed);
    if (BSK_TEAM_SHARE_DIV * waited <= (run - run0) + waited) {
        strikes = 0;
        atomic_store_explicit(&share_level, 0, memory_order_relaxed);
        return;
    }
    /* two spans in a row: the first can hold the team's last spin-wait, or
     * one of the scheduler's moves of the busy processes */
    if (++strikes < 2)
        return;
    atomic_store_explicit(&team_until, now + ((int64_t)BSK_TEAM_BACKOFF_NS << level),
                          memory_order_relaxed);
    atomic_store_explicit(&single_until, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&shared_core_ends, 1, memory_order_relaxed);
    if (level < BSK_TEAM_BACKOFF_MAX)
        atomic_store_explicit(&share_level, level + 1, memory_order_relaxed);
}

int bsk_team_begin(bsk_team_clock *c, int nt)
{
    c->team = 0;
    c->barriers = 0;
    if (nt <= 1)
        return 1;
    if (!bsk_team_adaptive())
        return nt;
    int64_t now = bsk_now_ns();
    if (now < atomic_load_explicit(&single_until, memory_order_relaxed)) {
        check_shared_core(now);
        if (now < atomic_load_explicit(&single_until, memory_order_relaxed))
            return 1;
    }
    c->team = nt < BSK_TEAM_MAX ? nt : BSK_TEAM_MAX;
    c->start = now;
    for (int i = 0; i < c->team; i++)
        c->enter[i] = c->leave[i] = 0;
    return nt;
}

void bsk_team_end(bsk_team_clock *c)
{
    if (c->team <= 1)
        return;
    int64_t in_lo = INT64_MAX, in_hi = 0, out_lo = INT64_MAX, out_hi = 0;
    for (int i = 0; i < c->team; i++) {
        if (!c->enter[i])
            return; /* a thread of the team did not report: OpenMP gave fewer */
        in_lo = c->enter[i] < in_lo ? c->enter[i] : in_lo;
        in_hi = c->enter[i] > in_hi ? c->enter[i] : in_hi;
        out_lo = c->leave[i] < out_lo ? c->leave[i] : out_lo;
        out_hi = c->leave[i] > out_hi ? c->leave[i] : out_hi;
    }
    /* each phase (up to a timed barrier, and from the last one to the end)
     * is judged as a region: its threads finished more than a slice apart,
     * and apart by more than half its length; the first also by the entries */
    int held = 0;
    int64_t from = c->start, skew = in_hi - in_lo;
    for (int b = 0; b <= c->barriers; b++) {
        int64_t lo = out_lo, hi = out_hi;
        if (b < c->barriers) {
            lo = INT64_MAX;
            hi = 0;
            for (int i = 0; i < c->team; i++) {
                lo = c->arrive[b][i] < lo ? c->arrive[b][i] : lo;
                hi = c->arrive[b][i] > hi ? c->arrive[b][i] : hi;
            }
        }
        skew = hi - lo > skew ? hi - lo : skew;
        held |= skew > BSK_TEAM_SKEW_NS && 2 * skew > hi - from;
        from = hi;
        skew = 0;
    }
    /* one held-up region can be the hypervisor taking a vCPU for a moment
     * (seen in ~1 % of long regions on a quiet shared VM, and in bursts on a
     * noisy one: two of 64 kept BERT-Mini on one thread for whole rounds); four of the last
     * BSK_TEAM_WINDOW are other processes wanting the cores */
    uint64_t h = atomic_load_explicit(&history, memory_order_relaxed);
    h = (h << 1) | (uint64_t)held; /* BSK_TEAM_WINDOW = 64 bits */
    if (held)
        atomic_fetch_add_explicit(&detections, 1, memory_order_relaxed);
    if (held && __builtin_popcountll(h) >= BSK_TEAM_HELD &&
        out_hi >= atomic_load_explicit(&team_until, memory_order_relaxed)) {
        h = 0; /* after the window, BSK_TEAM_HELD new ones are needed again */
        atomic_fetch_add_explicit(&window_id, 1, memory_order_relaxed);
        int level = atomic_load_explicit(&backoff_level, memory_order_relaxed);
        atomic_store_explicit(&single_until, out_hi + ((int64_t)BSK_TEAM_BACKOFF_NS << level),
                              memory_order_relaxed);
        if (level < BSK_TEAM_BACKOFF_MAX)
            atomic_store_explicit(&backoff_level, level + 1, memory_order_relaxed);
    }
    /* a window without a held-up region ends the back-off doubling */
    int run = held ? 0 : atomic_load_explicit(&clean_run, memory_order_relaxed) + 1;
    run = run < BSK_TEAM_WINDOW ? run : BSK_TEAM_WINDOW;
    atomic_store_explicit(&clean_run, run, memory_order_relaxed);
    if (run >= BSK_TEAM_WINDOW)
        atomic_store_explicit(&backoff_level, 0, memory_order_relaxed);
    atomic_store_explicit(&history, h, memory_order_relaxed);
}

void bsk_team_state(int *on, int64_t *single_for_ns, int64_t *count, int64_t *team_for_ns,
                    int64_t *shared_ends)
{
    const int64_t now = bsk_now_ns();
    const int64_t left = atomic_load_explicit(&single_until, memory_order_relaxed) - now;
    const int64_t team = atomic_load_explicit(&team_until, memory_order_relaxed) - now;
    *on = bsk_team_adaptive();
    *single_for_ns = left > 0 ? left : 0;
    *count = atomic_load_explicit(&detections, memory_order_relaxed);
    *team_for_ns = team > 0 ? team : 0;
    *shared_ends = atomic_load_explicit(&shared_core_ends, memory_order_relaxed);
}
