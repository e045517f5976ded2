/* Float kernels for AVX-512 (compiled with the AVX-512 flags only). */
#define BSK_VBYTES 64
#define BSK_ACC 16

#define BSK_T float
#define BSK_TSIZE 4
#define BSK_FN bsk_spmm_f32_avx512_vnni
#include "simd/spmm_float_simd.h"
