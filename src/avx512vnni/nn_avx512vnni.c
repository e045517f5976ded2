/* Encoder kernels for AVX-512 (the avx512_vnni flags, -ffp-contract=fast). */
#include "nn/nn_simd.h"

#define BSK_NN_SFX avx512_vnni
#include "nn/tokens_body.h"

/* 32 zmm registers: 4 x 4 accumulators plus the loaded vectors */
#define BSK_NN_IV 4
#define BSK_NN_JB 4
#define BSK_NN_CB 4
#include "nn/attention_body.h"
