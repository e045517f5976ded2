/*
 * Four rows of 16 bytes -> 64 bytes in the VNNI layout (byte t of row i at
 * 4t + i), the layout vpdpbusd reads four-byte groups in: used by the dense
 * INT8 product to pack activations (qgemm_simd.h) and by the INT8 attention
 * to pack queries, keys and probabilities (nn/attention_q8_body.h).  Four
 * byte and four word unpacks (SSE2); plain loops where there is no SSE2.
 */
#ifndef BLOCKSPARSE_INTERLEAVE_H
#define BLOCKSPARSE_INTERLEAVE_H

#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>

static inline void bsk_interleave4x16(__m128i x0, __m128i x1, __m128i x2, __m128i x3,
                                      uint8_t *dst)
{
    const __m128i a = _mm_unpacklo_epi8(x0, x1), b = _mm_unpackhi_epi8(x0, x1);
    const __m128i c = _mm_unpacklo_epi8(x2, x3), d = _mm_unpackhi_epi8(x2, x3);
    _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi16(a, c));
    _mm_storeu_si128((__m128i *)(dst + 16), _mm_unpackhi_epi16(a, c));
    _mm_storeu_si128((__m128i *)(dst + 32), _mm_unpacklo_epi16(b, d));
    _mm_storeu_si128((__m128i *)(dst + 48), _mm_unpackhi_epi16(b, d));
}
#endif

#endif /* BLOCKSPARSE_INTERLEAVE_H */
