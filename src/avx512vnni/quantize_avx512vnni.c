/* Activation quantization for avx512_vnni (see src/simd/quantize_simd.h). */
#define BSK_QUANT_FN bsk_quantize_u8_avx512_vnni
#include "simd/quantize_simd.h"
