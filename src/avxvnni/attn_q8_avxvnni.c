/* INT8 attention with AVX-VNNI: two 256-bit vpdpbusd (VEX) per 16-lane dot;
 * 4 x 1 (scores) and 2 x 2 x 1 (P V, two byte planes) accumulators of 16
 * lanes, 8 of the 16 ymm registers. */
#include <immintrin.h>

#include "nn/nn_simd.h"

typedef struct {
    __m256i lo, hi; /* lanes 0-7, 8-15 */
} aq_v256x2;

static inline aq_v256x2 aq_load_avxvnni(const uint8_t *p)
{
    aq_v256x2 x;
    x.lo = _mm256_loadu_si256((const __m256i *)p);
    x.hi = _mm256_loadu_si256((const __m256i *)(p + 32));
    return x;
}

static inline aq_v256x2 aq_dot_avxvnni(aq_v256x2 acc, aq_v256x2 x, __m256i w)
{
    acc.lo = _mm256_dpbusd_avx_epi32(acc.lo, x.lo, w);
    acc.hi = _mm256_dpbusd_avx_epi32(acc.hi, x.hi, w);
    return acc;
}

#define AQ_X aq_v256x2
#define AQ_XLOAD(p) aq_load_avxvnni(p)
#define AQ_W __m256i
#define AQ_WPREP(w) _mm256_set1_epi32(w)
#define AQ_ACC aq_v256x2
#define AQ_ACC_ZERO() ((aq_v256x2){_mm256_setzero_si256(), _mm256_setzero_si256()})
#define AQ_ACC_PART(acc, k) ((k) ? (bsk_vi)(acc).hi : (bsk_vi)(acc).lo)
#define AQ_DOT(acc, x, w) aq_dot_avxvnni((acc), (x), (w))

#define BSK_AQ_SFX avx_vnni
#define BSK_AQ_IV 1
#define BSK_AQ_JB 4
#define BSK_AQ_CB 2
#include "nn/attention_q8_body.h"
