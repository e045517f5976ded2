/* Encoder kernels, portable build (baseline flags, -ffp-contract=off). */
#include "nn/nn_simd.h"

#define BSK_NN_SFX scalar
#include "nn/tokens_body.h"

/* 16 xmm registers, a 16-lane vector takes four */
#define BSK_NN_IV 1
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "nn/attention_body.h"
