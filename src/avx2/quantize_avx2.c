/* Activation quantization for avx2 (see src/simd/quantize_simd.h). */
#define BSK_QUANT_FN bsk_quantize_u8_avx2
#include "simd/quantize_simd.h"
