/*
 * INT8 kernels with AVX2 and no VNNI.  vpmaddubsw would saturate its int16
 * pair sums on full-range data, so the dot is done exactly instead: the
 * even and odd bytes of each 32-bit group are widened to int16 and paired
 * with the matching sign-extended weights in two vpmaddwd (int16 x int16
 * pair sums in int32, which cannot overflow for u8 x s8).
 */
#include <stdint.h>
#include <immintrin.h>

typedef struct {
    __m256i even; /* int16 weights w0, w2 in each 32-bit lane */
    __m256i odd;  /* int16 weights w1, w3 */
} bsk_qw_avx2;

static inline bsk_qw_avx2 qw_prep_avx2(int32_t w)
{
    const int16_t w0 = (int8_t)(w & 0xff), w1 = (int8_t)((w >> 8) & 0xff);
    const int16_t w2 = (int8_t)((w >> 16) & 0xff), w3 = (int8_t)((w >> 24) & 0xff);
    bsk_qw_avx2 q;
    q.even = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)w2 << 16) | (uint16_t)w0));
    q.odd = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)w3 << 16) | (uint16_t)w1));
    return q;
}

static inline __m256i dot_avx2(__m256i acc, __m256i x, bsk_qw_avx2 w)
{
    const __m256i lo = _mm256_and_si256(x, _mm256_set1_epi16(0x00ff));
    const __m256i hi = _mm256_srli_epi16(x, 8);
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, w.even));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(hi, w.odd));
}

#include "simd/qv256.h"
#define QW bsk_qw_avx2
#define QW_PREP(w) qw_prep_avx2(w)
#define QV_DOT(acc, x, w) dot_avx2((acc), (x), (w))

#define BSK_QFN bsk_qspmm_u8s8s32_avx2
#include "simd/qspmm_simd.h"
