/*
 * Dense INT8 product with AVX2 and no VNNI, exact.  vpmaddubsw would
 * saturate its int16 pair sums on full-range data, so each 32-bit group is
 * split into its even and odd bytes, widened to int16 (activations: and /
 * shift, once per vector for all rows; weights: shifts of the broadcast
 * group, once per row for all vectors), and paired by two vpmaddwd (int16 x
 * int16 pair sums in int32, which cannot overflow for u8 x s8).
 */
#include <immintrin.h>

typedef struct {
    __m256i even, odd; /* int16 bytes 0, 2 and 1, 3 of each 32-bit group */
} bsk_qg_pair;

static inline bsk_qg_pair qg_x_avx2(__m256i x)
{
    bsk_qg_pair p;
    p.even = _mm256_and_si256(x, _mm256_set1_epi16(0x00ff));
    p.odd = _mm256_srli_epi16(x, 8);
    return p;
}

static inline bsk_qg_pair qg_w_avx2(const int32_t *w)
{
    const __m256i v = _mm256_set1_epi32(*w);
    bsk_qg_pair p;
    p.even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8); /* sign-extended bytes 0, 2 */
    p.odd = _mm256_srai_epi16(v, 8);                        /* bytes 1, 3 */
    return p;
}

static inline __m256i qg_dot_avx2(__m256i acc, bsk_qg_pair x, bsk_qg_pair w)
{
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x.even, w.even));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x.odd, w.odd));
}

#define QG_V __m256i
#define QG_BYTES 32
#define QG_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QG_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define QG_ZERO() _mm256_setzero_si256()
#define QG_X bsk_qg_pair
#define QG_XPREP(v) qg_x_avx2(v)
#define QG_W bsk_qg_pair
#define QG_WPREP(p) qg_w_avx2(p)
#define QG_DOT(acc, x, w) qg_dot_avx2((acc), (x), (w))
#define QG_MRS 4
#define QG_NV 2

#define BSK_QGEMM_FN bsk_qgemm_u8s8s32_avx2
#include "simd/qgemm_simd.h"
