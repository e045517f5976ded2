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
#define QV_UNPERMUTE(a, b, c, d)                                              \
    do {                                                                      \
        const __m512i ab0 = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)); \
        const __m512i cd0 = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0)); \
        const __m512i ab1 = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)); \
        const __m512i cd1 = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1)); \
        a = _mm512_shuffle_i32x4(ab0, cd0, _MM_SHUFFLE(2, 0, 2, 0));          \
        c = _mm512_shuffle_i32x4(ab0, cd0, _MM_SHUFFLE(3, 1, 3, 1));          \
        b = _mm512_shuffle_i32x4(ab1, cd1, _MM_SHUFFLE(2, 0, 2, 0));          \
        d = _mm512_shuffle_i32x4(ab1, cd1, _MM_SHUFFLE(3, 1, 3, 1));          \
    } while (0)
#define QW __m512i
#define QW_PREP(w) _mm512_set1_epi32(w)
#define QV_DOT(acc, x, w) _mm512_dpbusd_epi32((acc), (x), (w))

#define BSK_QFN bsk_qspmm_u8s8s32_avx512_vnni
#define BSK_QLFN bsk_qlinear_f32_avx512_vnni
#include "simd/qspmm_simd.h"
