/* Encoder kernels for AVX2 + FMA (-mavx2 -mfma, -ffp-contract=fast). */
#include "nn/nn_simd.h"

#define BSK_NN_SFX avx2
#include "nn/tokens_body.h"

/* 16 ymm registers, two per 16-lane vector */
#define BSK_NN_IV 2
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "nn/attention_body.h"
