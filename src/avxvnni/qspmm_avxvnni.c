/* INT8 kernels with AVX-VNNI: 256-bit vpdpbusd (VEX encoded). */
#include "simd/qv256.h"
#define QW __m256i
#define QW_PREP(w) _mm256_set1_epi32(w)
#define QV_DOT(acc, x, w) _mm256_dpbusd_avx_epi32((acc), (x), (w))

#define BSK_QFN bsk_qspmm_u8s8s32_avx_vnni
#define BSK_QLFN bsk_qlinear_f32_avx_vnni
#include "simd/qspmm_simd.h"
