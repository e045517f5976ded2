/* Encoder kernels for AVX2 + FMA (-mavx2 -mfma, -ffp-contract=fast), on the
 * 8-lane vectors of simd/vec16.h (BSK_VL). */
#include "nn/nn_simd.h"

#define BSK_NN_SFX avx2
#include "nn/tokens_body.h"

/* 16 ymm registers: 2 x 4 accumulators, 4 queries */
#define BSK_NN_IV 4
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "nn/attention_body.h"
