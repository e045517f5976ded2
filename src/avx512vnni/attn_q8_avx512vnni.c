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
#define AQ_ACC_GET(acc) ((bsk_v16i)(acc))
#define AQ_DOT(acc, x, w) _mm512_dpbusd_epi32((acc), (x), (w))

#define BSK_AQ_SFX avx512_vnni
#define BSK_AQ_IV 4
#define BSK_AQ_JB 4
#define BSK_AQ_CB 2
#include "nn/attention_q8_body.h"
