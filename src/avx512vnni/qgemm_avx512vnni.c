/* Dense INT8 product with AVX-512 VNNI: 512-bit vpdpbusd, 8 rows x 3 vectors
 * of accumulators (24 of the 32 zmm registers). */
#include <immintrin.h>

#define QG_V __m512i
#define QG_BYTES 64
#define QG_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define QG_STORE(p, v) _mm512_storeu_si512((void *)(p), (v))
#define QG_ZERO() _mm512_setzero_si512()
#define QG_X __m512i
#define QG_XPREP(v) (v)
#define QG_W __m512i
#define QG_WPREP(p) _mm512_set1_epi32(*(p))
#define QG_DOT(acc, x, w) _mm512_dpbusd_epi32((acc), (x), (w))
#define QG_MRS 8
#define QG_NV 3

#define BSK_QGEMM_FN bsk_qgemm_u8s8s32_avx512_vnni
#include "simd/qgemm_simd.h"
