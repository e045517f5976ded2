/* INT8 attention with AVX-VNNI: two 256-bit vpdpbusd (VEX) per 16-lane dot,
 * 2 x 2 accumulators (8 of 16 ymm registers) per register block. */
#include <immintrin.h>

#include "nn/nn_simd.h"

typedef struct {
    __m256i lo, hi;
} aq_x_avxvnni;

static inline aq_x_avxvnni aq_load_avxvnni(const uint8_t *p)
{
    aq_x_avxvnni x;
    x.lo = _mm256_loadu_si256((const __m256i *)p);
    x.hi = _mm256_loadu_si256((const __m256i *)(p + 32));
    return x;
}

static inline bsk_v16i aq_dot_avxvnni(bsk_v16i acc, aq_x_avxvnni x, __m256i w)
{
    const __m256i lo = _mm256_dpbusd_avx_epi32((__m256i)bsk_v16i_lo(acc), x.lo, w);
    const __m256i hi = _mm256_dpbusd_avx_epi32((__m256i)bsk_v16i_hi(acc), x.hi, w);
    return bsk_v16i_join((bsk_v8i)lo, (bsk_v8i)hi);
}

#define AQ_X aq_x_avxvnni
#define AQ_XLOAD(p) aq_load_avxvnni(p)
#define AQ_W __m256i
#define AQ_WPREP(w) _mm256_set1_epi32(w)
#define AQ_DOT(acc, x, w) aq_dot_avxvnni((acc), (x), (w))

#define BSK_AQ_SFX avx_vnni
#define BSK_AQ_IV 2
#define BSK_AQ_JB 2
#define BSK_AQ_CB 2
#include "nn/attention_q8_body.h"
