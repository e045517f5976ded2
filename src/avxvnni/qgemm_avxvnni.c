/* Dense INT8 product with AVX-VNNI: 256-bit vpdpbusd (VEX, 16 registers),
 * 4 rows x 2 vectors of accumulators per pass. */
#include <immintrin.h>

#define QG_V __m256i
#define QG_BYTES 32
#define QG_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QG_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define QG_ZERO() _mm256_setzero_si256()
#define QG_X __m256i
#define QG_XPREP(v) (v)
#define QG_W __m256i
#define QG_WPREP(p) _mm256_set1_epi32(*(p))
#define QG_DOT(acc, x, w) _mm256_dpbusd_avx_epi32((acc), (x), (w))
#define QG_MRS 4
#define QG_NV 2

#define BSK_QGEMM_FN bsk_qgemm_u8s8s32_avx_vnni
#include "simd/qgemm_simd.h"
