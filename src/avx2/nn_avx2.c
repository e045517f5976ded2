/* Encoder kernels for AVX2 + FMA (-mavx2 -mfma, -ffp-contract=fast). */
#include "nn/nn_simd.h"

#define BSK_NN_SFX avx2
#include "nn/tokens_body.h"

/*
 * The attention on 8-lane vectors: without AVX-512, GCC 12 has no machine
 * mode for a 16-float vector, so loop-carried ones (the score and P V
 * accumulators) live on the stack and each product by a key's or value's
 * scalar built its 16-lane broadcast there lane by lane, a store-forwarding
 * stall each: 1.6 Gflop/s, a quarter of the portable build's speed.  An
 * 8-float vector is a ymm register.  The same operations lane by lane, so
 * the same results.  16 ymm registers: 2 x 4 accumulators, 4 queries.
 */
typedef float bsk_v8f __attribute__((vector_size(32)));
typedef float bsk_v8f_u __attribute__((vector_size(32), aligned(4)));

#define BSK_NN_AL 8
typedef bsk_v8f bsk_nn_av;

BSK_INLINE bsk_v8f bsk_nn_av_load(const float *p)
{
    return *(const bsk_v8f_u *)p;
}

BSK_INLINE void bsk_nn_av_store(float *p, bsk_v8f v)
{
    *(bsk_v8f_u *)p = v;
}

/* the first `count` (>= 1) lanes */
BSK_INLINE void bsk_nn_av_store_part(float *p, bsk_v8f v, int64_t count)
{
    if (count >= 8) {
        bsk_nn_av_store(p, v);
        return;
    }
    _mm256_maskstore_ps(p, bsk_lanes8((int)count), (__m256)v);
}

BSK_INLINE bsk_v8f bsk_nn_av_max(bsk_v8f a, bsk_v8f b)
{
    return (bsk_v8f)_mm256_max_ps((__m256)a, (__m256)b);
}

BSK_INLINE bsk_v8f bsk_nn_av_min(bsk_v8f a, bsk_v8f b)
{
    return (bsk_v8f)_mm256_min_ps((__m256)a, (__m256)b);
}

BSK_NN_EXP_DEFINE(bsk_nn_av_exp, bsk_v8f, bsk_v8i, bsk_nn_av_max, bsk_nn_av_min)

#define BSK_NN_IV 4
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "nn/attention_body.h"
