/* INT8 attention with AVX-512 VNNI: one 512-bit vpdpbusd per 16-lane dot; the
 * register blocks hold 4 x 4 (scores) and 2 x 2 x 4 (P V, two byte planes)
 * accumulators of the 32 zmm registers. */
#include <immintrin.h>

#include "nn/nn_simd.h"

#define AQ_X __m512i
#define AQ_XLOAD(p) _mm512_loadu_si512((const void *)(p))
#define AQ_W __m512i
#define AQ_WPREP(w) _mm512_set1_epi32(w)
#define AQ_ACC __m512i
#define AQ_ACC_ZERO() _mm512_setzero_si512()
#define AQ_ACC_PART(acc, k) ((bsk_vi)(acc))
/* vpdpbusd in inline assembly: with the intrinsic, GCC 12 copied the
 * accumulators between registers around the dots and kept one of P V's
 * sixteen on the stack; "+v" keeps each in its register (attention of
 * BERT-Mini, one thread: 1.5 % faster) */
static inline __m512i aq_dot_avx512(__m512i acc, __m512i x, __m512i w)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
    return acc;
}
#define AQ_DOT(acc, x, w) aq_dot_avx512((acc), (x), (w))

#define BSK_AQ_SFX avx512_vnni
#define BSK_AQ_IV 4
#define BSK_AQ_JB 4
#define BSK_AQ_CB 2
#include "nn/attention_q8_body.h"
