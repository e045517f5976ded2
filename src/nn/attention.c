/*
 * Multi-head self-attention (float32), see bsk_attention_f32 in bsk_nn.h.
 * attention_body.h is instantiated for the baseline, AVX2+FMA and AVX-512
 * with register blocks that fit each register file; the dispatcher below
 * splits the (sequence, head) pairs over the threads, each with its own
 * scratch, then (optionally) the rows for the uint8 quantization.
 */
#include "nn_simd.h"

typedef struct {
    const float *QKV;
    int64_t ldqkv, batch, seq, heads, head_dim, kp_max;
    const uint8_t *mask;
    float scale;
    float *Y;
    int64_t ldy;
    uint8_t *Q;
    int64_t ldq;
    float *q_scale;
    int32_t *q_zero;
} bsk_nn_attn_args;

/* baseline: 16 xmm registers, a 16-lane vector takes four */
#define BSK_NN_SFX base
#define BSK_NN_RB 2
#define BSK_NN_JV 1
#define BSK_NN_DV 1
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_RB
#undef BSK_NN_JV
#undef BSK_NN_DV

#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
/* 16 ymm registers, two per 16-lane vector */
#define BSK_NN_SFX avx2
#define BSK_NN_RB 2
#define BSK_NN_JV 2
#define BSK_NN_DV 2
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_RB
#undef BSK_NN_JV
#undef BSK_NN_DV
#pragma GCC pop_options
#endif

#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
/* 32 zmm registers: 4 x 4 accumulators plus the loaded vectors */
#define BSK_NN_SFX avx512
#define BSK_NN_RB 4
#define BSK_NN_JV 4
#define BSK_NN_DV 4
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_RB
#undef BSK_NN_JV
#undef BSK_NN_DV
#pragma GCC pop_options
#endif

typedef void (*pair_fn)(const bsk_nn_attn_args *, int64_t, int64_t, float *);
typedef void (*qrows_fn)(const bsk_nn_attn_args *, int64_t, int64_t);

#define BSK_NN_MAX_RB 4

static void pick(int level, pair_fn *pair, qrows_fn *qrows)
{
    *pair = attn_pair_base;
    *qrows = attn_quant_rows_base;
#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
    if (level == 1) {
        *pair = attn_pair_avx2;
        *qrows = attn_quant_rows_avx2;
    }
#endif
#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
    if (level == 2) {
        *pair = attn_pair_avx512;
        *qrows = attn_quant_rows_avx512;
    }
#endif
}

bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t ldqkv,
                             int64_t batch, int64_t seq, int64_t heads,
                             int64_t head_dim, const uint8_t *mask, float scale,
                             float *Y, int64_t ldy, uint8_t *Q, int64_t ldq,
                             float *q_scale, int32_t *q_zero, int num_threads)
{
    if (batch < 0 || seq < 0 || heads < 0 || head_dim < 0)
        return BSK_EINVAL;
    const int64_t hidden = heads * head_dim, rows = batch * seq;
    if (ldqkv < 3 * hidden || ldy < hidden || !isfinite(scale) ||
        (Q && (ldq < hidden || !q_scale || !q_zero)) ||
        (rows && hidden && (!QKV || !Y)))
        return BSK_EINVAL;
    const int level = bsk_nn_level(isa);
    if (level < 0)
        return BSK_EUNSUPPORTED;
    if (rows == 0)
        return BSK_OK;
    if (hidden == 0) {
        for (int64_t r = 0; Q && r < rows; r++) {
            q_scale[r] = 1.0f;
            q_zero[r] = 0;
        }
        return BSK_OK;
    }
    pair_fn pair;
    qrows_fn qrows;
    pick(level, &pair, &qrows);

    bsk_nn_attn_args a;
    a.QKV = QKV;
    a.ldqkv = ldqkv;
    a.batch = batch;
    a.seq = seq;
    a.heads = heads;
    a.head_dim = head_dim;
    a.kp_max = (seq + 15) / 16 * 16;
    a.mask = mask;
    a.scale = scale;
    a.Y = Y;
    a.ldy = ldy;
    a.Q = Q;
    a.ldq = ldq;
    a.q_scale = q_scale;
    a.q_zero = q_zero;
    const int64_t dp = (head_dim + 15) / 16 * 16;
    const size_t scratch = sizeof(float) *
        (size_t)(head_dim * a.kp_max + seq * dp + BSK_NN_MAX_RB * a.kp_max + a.kp_max);

    const int64_t pairs = batch * heads;
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    if (nt > pairs)
        nt = pairs;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt)
#endif
    {
#ifdef _OPENMP
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
#else
        const int T = 1, t = 0;
#endif
        float *buf = (float *)bsk_alloc(scratch);
        int64_t lo, hi;
        if (!buf) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        } else {
            bsk_split(pairs, T, t, &lo, &hi);
            for (int64_t p = lo; p < hi; p++)
                pair(&a, p / heads, p % heads, buf);
            free(buf);
        }
        if (Q) {
#ifdef _OPENMP
#pragma omp barrier
#endif
            bsk_split(rows, T, t, &lo, &hi);
            qrows(&a, lo, hi);
        }
    }
    return failed ? BSK_ENOMEM : BSK_OK;
}
