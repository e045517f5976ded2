/* INT8 attention with AVX-512 VNNI: one 512-bit vpdpbusd per 16-lane dot,
 * 4 x 4 accumulators (of 32 zmm registers) per register block. */
#include <immintrin.h>

#include "nn/nn_simd.h"

#define AQ_X __m512i
#define AQ_XLOAD(p) _mm512_loadu_si512((const void *)(p))
#define AQ_W __m512i
#define AQ_WPREP(w) _mm512_set1_epi32(w)
#define AQ_DOT(acc, x, w) ((bsk_v16i)_mm512_dpbusd_epi32((__m512i)(acc), (x), (w)))

#define BSK_AQ_SFX avx512_vnni
#define BSK_AQ_IV 4
#define BSK_AQ_JB 4
#define BSK_AQ_CB 4
#include "nn/attention_q8_body.h"
