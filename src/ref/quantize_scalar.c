/* Activation quantization, portable build (see src/simd/quantize_simd.h). */
#define BSK_QUANT_FN bsk_quantize_u8_scalar
#include "simd/quantize_simd.h"
