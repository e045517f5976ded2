/* Activation quantization for avx_vnni (see src/simd/quantize_simd.h). */
#define BSK_QUANT_FN bsk_quantize_u8_avx_vnni
#include "simd/quantize_simd.h"
