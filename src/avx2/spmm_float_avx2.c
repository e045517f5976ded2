/* Float kernels for AVX2 + FMA (compiled with -mavx2 -mfma only). */
#define BSK_VBYTES 32
#define BSK_ACC 8

#define BSK_T float
#define BSK_TSIZE 4
#define BSK_FN bsk_spmm_f32_avx2
#include "simd/spmm_float_simd.h"
