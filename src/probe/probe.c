/*
 * bsk_probe_run: times one ceiling probe.  Compiled with baseline flags;
 * calls the ISA probes only when they were built (BSK_HAVE_<ISA>).  Whether
 * the CPU can run them is the caller's check (blocksparse.available_isas()).
 */
#include <stdint.h>
#include <time.h>

#include "blocksparse/bsk_probe.h"

static double bsk_probe_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int bsk_probe_built(int kind)
{
    switch (kind) {
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_PROBE_DPBUSD_ZMM:
    case BSK_PROBE_DPBUSD_YMM_EVEX:
    case BSK_PROBE_FMA_ZMM:
    case BSK_PROBE_FMA_LOAD_ZMM:
        return 1;
#endif
#ifdef BSK_HAVE_AVX_VNNI
    case BSK_PROBE_DPBUSD_YMM_VEX:
        return 1;
#endif
#ifdef BSK_HAVE_AVX2
    case BSK_PROBE_FMA_YMM:
    case BSK_PROBE_FMA_LOAD_YMM:
    case BSK_PROBE_MADDUBS_YMM:
    case BSK_PROBE_MADDWD_YMM:
        return 1;
#endif
    case BSK_PROBE_READ:
        return 1;
    default:
        return 0;
    }
}

/* Sum of the buffer's 64-bit words, `reps` times: eight accumulators so the
 * adds never wait on each other and the loop is bound by the loads. */
static int64_t bsk_probe_read(const uint64_t *p, int64_t nwords, int64_t reps)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (int64_t r = 0; r < reps; r++) {
        for (int64_t i = 0; i + 8 <= nwords; i += 8) {
            s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
            s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7];
        }
        __asm__ volatile("" : : "r"(p) : "memory");
    }
    return (int64_t)(s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7);
}

bsk_status bsk_probe_run(int kind, int64_t reps, const void *buf, int64_t nbytes,
                         double *work, double *seconds, int64_t *sink)
{
    if (work == NULL || seconds == NULL || sink == NULL || reps < 1)
        return BSK_EINVAL;
    if (!bsk_probe_built(kind))
        return BSK_EUNSUPPORTED;
    const int uses_buf = kind == BSK_PROBE_FMA_LOAD_ZMM || kind == BSK_PROBE_FMA_LOAD_YMM ||
                         kind == BSK_PROBE_READ;
    if (uses_buf && (buf == NULL || nbytes < 1024 || nbytes % 64 != 0 ||
                     (uintptr_t)buf % 64 != 0))
        return BSK_EINVAL;
    const double r = (double)reps;
    double w = 0.0;
    int64_t s = 0;
    const double t0 = bsk_probe_now();
    switch (kind) {
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_PROBE_DPBUSD_ZMM:
        s = bsk_probe_dpbusd_zmm_avx512_vnni(reps, 0);
        w = r * BSK_PROBE_DPBUSD_EVEX_CHAINS * 64;
        break;
    case BSK_PROBE_DPBUSD_YMM_EVEX:
        s = bsk_probe_dpbusd_ymm_avx512_vnni(reps, 0);
        w = r * BSK_PROBE_DPBUSD_EVEX_CHAINS * 32;
        break;
    case BSK_PROBE_FMA_ZMM:
        s = bsk_probe_fma_avx512_vnni(reps, 0.0f);
        w = r * BSK_PROBE_FMA_CHAINS_ZMM * 16 * 2;
        break;
    case BSK_PROBE_FMA_LOAD_ZMM:
        s = bsk_probe_fma_load_avx512_vnni((const float *)buf, nbytes / 64, reps);
        w = r * (double)(nbytes / 64 / BSK_PROBE_FMA_CHAINS_ZMM * BSK_PROBE_FMA_CHAINS_ZMM) * 16 * 2;
        break;
#endif
#ifdef BSK_HAVE_AVX_VNNI
    case BSK_PROBE_DPBUSD_YMM_VEX:
        s = bsk_probe_dpbusd_ymm_avx_vnni(reps, 0);
        w = r * BSK_PROBE_DPBUSD_VEX_CHAINS * 32;
        break;
#endif
#ifdef BSK_HAVE_AVX2
    case BSK_PROBE_FMA_YMM:
        s = bsk_probe_fma_avx2(reps, 0.0f);
        w = r * BSK_PROBE_FMA_CHAINS_YMM * 8 * 2;
        break;
    case BSK_PROBE_FMA_LOAD_YMM:
        s = bsk_probe_fma_load_avx2((const float *)buf, nbytes / 32, reps);
        w = r * (double)(nbytes / 32 / BSK_PROBE_FMA_CHAINS_YMM * BSK_PROBE_FMA_CHAINS_YMM) * 8 * 2;
        break;
    case BSK_PROBE_MADDUBS_YMM:
    case BSK_PROBE_MADDWD_YMM:
        s = kind == BSK_PROBE_MADDUBS_YMM ? bsk_probe_maddubs_avx2(reps, 0)
                                          : bsk_probe_maddwd_avx2(reps, 0);
        w = r * BSK_PROBE_MADD_CHAINS * 32;
        break;
#endif
    case BSK_PROBE_READ:
        s = bsk_probe_read((const uint64_t *)buf, nbytes / 8, reps);
        w = r * (double)nbytes;
        break;
    default:
        return BSK_EUNSUPPORTED;
    }
    *seconds = bsk_probe_now() - t0;
    *work = w;
    *sink = s;
    return BSK_OK;
}
