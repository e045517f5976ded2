/*
 * The exact 4-way u8 x s8 dot of AVX2 without VNNI, shared by the dense INT8
 * product (qgemm_avx2.c) and the INT8 attention (attn_q8_avx2.c).
 * vpmaddubsw would saturate its int16 pair sums on full-range data, so each
 * 32-bit group is split into its even and odd bytes, widened to int16
 * (activations: and / shift, once per vector for all rows; weights: shifts
 * of the broadcast group, once per row for all vectors), and paired by two
 * vpmaddwd (int16 x int16 pair sums in int32, which cannot overflow for
 * u8 x s8).
 */
#ifndef BLOCKSPARSE_DOT4_AVX2_H
#define BLOCKSPARSE_DOT4_AVX2_H

#include <immintrin.h>

typedef struct {
    __m256i even, odd; /* int16 bytes 0, 2 and 1, 3 of each 32-bit group */
} bsk_qg_pair;

/* uint8 activations: zero-extended */
static inline bsk_qg_pair qg_x_avx2(__m256i x)
{
    bsk_qg_pair p;
    p.even = _mm256_and_si256(x, _mm256_set1_epi16(0x00ff));
    p.odd = _mm256_srli_epi16(x, 8);
    return p;
}

/* an int8 group, broadcast: sign-extended */
static inline bsk_qg_pair qg_w_avx2(int32_t w)
{
    const __m256i v = _mm256_set1_epi32(w);
    bsk_qg_pair p;
    p.even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8); /* bytes 0, 2 */
    p.odd = _mm256_srai_epi16(v, 8);                        /* bytes 1, 3 */
    return p;
}

/* Eight int8 groups (one K-group of a dense weight block's 8 rows) widened
 * as qg_w_avx2 would, once: their even pairs at dst[0 .. 7], odd at dst[8 .. 15]. */
static inline void qg_w_widen_avx2(int32_t *dst, const int32_t *src)
{
    const __m256i v = _mm256_loadu_si256((const __m256i *)src);
    _mm256_storeu_si256((__m256i *)dst, _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8));
    _mm256_storeu_si256((__m256i *)(dst + 8), _mm256_srai_epi16(v, 8));
}

/* A group widened by qg_w_widen_avx2 (odd pair `stride` words after the even), broadcast. */
static inline bsk_qg_pair qg_w_wide_avx2(const int32_t *p, int stride)
{
    bsk_qg_pair w;
    w.even = _mm256_set1_epi32(p[0]);
    w.odd = _mm256_set1_epi32(p[stride]);
    return w;
}

static inline __m256i qg_dot_avx2(__m256i acc, bsk_qg_pair x, bsk_qg_pair w)
{
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x.even, w.even));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x.odd, w.odd));
}

#endif /* BLOCKSPARSE_DOT4_AVX2_H */
