/* INT8 kernels with AVX-512 VNNI: 512-bit vpdpbusd. */
#include <immintrin.h>

#define QV __m512i
#define QV_BYTES 64
#define QV_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define QV_STORE(p, v) _mm512_storeu_si512((void *)(p), (v))
#define QV_ZERO() _mm512_setzero_si512()
#define QV_UNPACKLO8 _mm512_unpacklo_epi8
#define QV_UNPACKHI8 _mm512_unpackhi_epi8
#define QV_UNPACKLO16 _mm512_unpacklo_epi16
#define QV_UNPACKHI16 _mm512_unpackhi_epi16
#define QW __m512i
#define QW_PREP(w) _mm512_set1_epi32(w)
#define QV_DOT(acc, x, w) _mm512_dpbusd_epi32((acc), (x), (w))

#define BSK_QFN bsk_qspmm_u8s8s32_avx512_vnni
#include "../simd/qspmm_simd.h"
