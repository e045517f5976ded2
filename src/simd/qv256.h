/*
 * 256-bit vector primitives of the INT8 kernel template (qspmm_simd.h),
 * shared by the AVX2 and AVX-VNNI variants; each variant adds its own
 * QW / QW_PREP / QV_DOT.
 */
#include <immintrin.h>

#define QV __m256i
#define QV_BYTES 32
#define QV_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QV_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define QV_ZERO() _mm256_setzero_si256()
#define QV_UNPACKLO8 _mm256_unpacklo_epi8
#define QV_UNPACKHI8 _mm256_unpackhi_epi8
#define QV_UNPACKLO16 _mm256_unpacklo_epi16
#define QV_UNPACKHI16 _mm256_unpackhi_epi16
/* lane-grouped order -> token order: vector v holds tokens 16L + 4v + j */
#define QV_UNPERMUTE(a, b, c, d)                                              \
    do {                                                                      \
        const __m256i t0 = _mm256_permute2x128_si256(a, b, 0x20);             \
        const __m256i t1 = _mm256_permute2x128_si256(c, d, 0x20);             \
        const __m256i t2 = _mm256_permute2x128_si256(a, b, 0x31);             \
        const __m256i t3 = _mm256_permute2x128_si256(c, d, 0x31);             \
        a = t0, b = t1, c = t2, d = t3;                                       \
    } while (0)
