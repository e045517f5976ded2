/*
 * INT8 kernels with AVX2 and no VNNI: the exact dot of dot4_avx2.h
 * (vpmaddubsw would saturate its int16 pair sums on full-range data).  The
 * activations' even and odd bytes are widened once per vector for the
 * strip's four rows (the compiler shares them between the four dots).
 */
#include <stdint.h>
#include <immintrin.h>

#include "avx2/dot4_avx2.h"

#include "simd/qv256.h"
#define QW bsk_qg_pair
#define QW_PREP(w) qg_w_avx2(w)
#define QV_DOT(acc, x, w) qg_dot_avx2((acc), qg_x_avx2(x), (w))

#define BSK_QFN bsk_qspmm_u8s8s32_avx2
#define BSK_QLFN bsk_qlinear_f32_avx2
#include "simd/qspmm_simd.h"
