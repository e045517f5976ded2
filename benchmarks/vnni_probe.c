/*
 * vpdpbusd throughput probe: the compute ceiling of the INT8 kernels.
 *
 * Runs `iters` rounds of 12 independent vpdpbusd chains (512-bit with
 * PROBE_ZMM, else 256-bit AVX-VNNI), enough to cover the instruction's
 * latency on current cores, so the loop is bound by issue throughput alone.
 * Built and loaded by vnni_ceiling.py with the ISA's flags only.
 */
#include <immintrin.h>
#include <stdint.h>

#ifdef PROBE_ZMM
typedef __m512i vec;
#define SET1(x) _mm512_set1_epi32(x)
#define DOT(acc, a, b) _mm512_dpbusd_epi32(acc, a, b)
#define ADD(a, b) _mm512_add_epi32(a, b)
#define BYTES 64
#else
typedef __m256i vec;
#define SET1(x) _mm256_set1_epi32(x)
#define DOT(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#define ADD(a, b) _mm256_add_epi32(a, b)
#define BYTES 32
#endif

int probe_bytes(void) { return BYTES; }

/* Returns the lane sum so the work cannot be optimized away. */
int64_t probe_dpbusd(int64_t iters, int32_t seed)
{
    const vec a = SET1(0x01010101 ^ seed), b = SET1(0x01020304);
    vec c0 = SET1(0), c1 = SET1(1), c2 = SET1(2), c3 = SET1(3), c4 = SET1(4), c5 = SET1(5);
    vec c6 = SET1(6), c7 = SET1(7), c8 = SET1(8), c9 = SET1(9), c10 = SET1(10), c11 = SET1(11);
    for (int64_t it = 0; it < iters; it++) {
        c0 = DOT(c0, a, b); c1 = DOT(c1, a, b); c2 = DOT(c2, a, b); c3 = DOT(c3, a, b);
        c4 = DOT(c4, a, b); c5 = DOT(c5, a, b); c6 = DOT(c6, a, b); c7 = DOT(c7, a, b);
        c8 = DOT(c8, a, b); c9 = DOT(c9, a, b); c10 = DOT(c10, a, b); c11 = DOT(c11, a, b);
    }
    vec s = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));
    s = ADD(s, ADD(ADD(c8, c9), ADD(c10, c11)));
    int32_t out[BYTES / 4];
    __builtin_memcpy(out, &s, sizeof(out));
    int64_t total = 0;
    for (int i = 0; i < BYTES / 4; i++)
        total += out[i];
    return total;
}
