/*
 * Multi-head self-attention (float32), see bsk_attention_f32 in bsk_nn.h.
 * attention_body.h is instantiated for the baseline, AVX2+FMA and AVX-512
 * with register blocks that fit each register file; the dispatcher below
 * splits the (sequence, head, query block) tasks over the threads, each
 * with its own scratch, then (optionally) the tokens for the uint8
 * quantization of the result.
 */
#include "nn_simd.h"

typedef struct {
    const float *QKV;
    int64_t batch, seq, heads, head_dim;
    const uint8_t *mask;
    float scale;
    float *Y;
    uint8_t *Q;
    float *q_scale;
    int32_t *q_zero;
} bsk_nn_attn_args;

/* Per-thread scratch; kp and vp hold the gathered keys and values of (b, h). */
typedef struct {
    float *kp, *vp, *qp, *st;
    int64_t *keys;
    int64_t b, h, nk;
    int uniform, direct;
} bsk_nn_attn_ws;

/* baseline: 16 xmm registers, a 16-lane vector takes four */
#define BSK_NN_SFX base
#define BSK_NN_IV 1
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_IV
#undef BSK_NN_JB
#undef BSK_NN_CB

#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
/* 16 ymm registers, two per 16-lane vector */
#define BSK_NN_SFX avx2
#define BSK_NN_IV 2
#define BSK_NN_JB 2
#define BSK_NN_CB 2
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_IV
#undef BSK_NN_JB
#undef BSK_NN_CB
#pragma GCC pop_options
#endif

#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
/* 32 zmm registers: 4 x 4 accumulators plus the loaded vectors */
#define BSK_NN_SFX avx512
#define BSK_NN_IV 4
#define BSK_NN_JB 4
#define BSK_NN_CB 4
#include "attention_body.h"
#undef BSK_NN_SFX
#undef BSK_NN_IV
#undef BSK_NN_JB
#undef BSK_NN_CB
#pragma GCC pop_options
#endif

typedef void (*task_fn)(const bsk_nn_attn_args *, int64_t, int64_t, int64_t, bsk_nn_attn_ws *);
typedef void (*quant_fn)(const bsk_nn_attn_args *, int64_t, int64_t, float *);

#define BSK_NN_MAX_QW 64

static void pick(int level, task_fn *task, quant_fn *quant, int64_t *qw)
{
    *task = attn_task_base;
    *quant = attn_quant_base;
    *qw = 16;
#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
    if (level == 1) {
        *task = attn_task_avx2;
        *quant = attn_quant_avx2;
        *qw = 32;
    }
#endif
#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
    if (level == 2) {
        *task = attn_task_avx512;
        *quant = attn_quant_avx512;
        *qw = 64;
    }
#endif
}

bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t batch,
                             int64_t seq, int64_t heads, int64_t head_dim,
                             const uint8_t *mask, float scale, float *Y,
                             uint8_t *Q, float *q_scale, int32_t *q_zero,
                             int num_threads)
{
    if (batch < 0 || seq < 0 || heads < 1 || head_dim < 1 || !isfinite(scale) ||
        (Q && (!q_scale || !q_zero)))
        return BSK_EINVAL;
    const int64_t N = batch * seq;
    if (N && (!QKV || !Y))
        return BSK_EINVAL;
    const int level = bsk_nn_level(isa);
    if (level < 0)
        return BSK_EUNSUPPORTED;
    if (N == 0)
        return BSK_OK;
    task_fn task;
    quant_fn quant;
    int64_t qw;
    pick(level, &task, &quant, &qw);

    bsk_nn_attn_args a;
    a.QKV = QKV;
    a.batch = batch;
    a.seq = seq;
    a.heads = heads;
    a.head_dim = head_dim;
    a.mask = mask;
    a.scale = scale;
    a.Y = Y;
    a.Q = Q;
    a.q_scale = q_scale;
    a.q_zero = q_zero;

    const int64_t blocks = (seq + qw - 1) / qw, tasks = batch * heads * blocks;
    const size_t floats = (size_t)(2 * seq * head_dim + head_dim * BSK_NN_MAX_QW +
                                   seq * BSK_NN_MAX_QW);
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    if (nt > tasks)
        nt = tasks;
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
        bsk_nn_attn_ws ws;
        float *buf = (float *)bsk_alloc(floats * sizeof(float));
        ws.keys = (int64_t *)bsk_alloc((size_t)seq * sizeof(int64_t));
        int64_t lo, hi;
        if (!buf || !ws.keys) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        } else {
            ws.kp = buf;
            ws.vp = ws.kp + seq * head_dim;
            ws.qp = ws.vp + seq * head_dim;
            ws.st = ws.qp + head_dim * BSK_NN_MAX_QW;
            ws.b = ws.h = -1;
            bsk_split(tasks, T, t, &lo, &hi);
            for (int64_t k = lo; k < hi; k++) {
                const int64_t bh = k / blocks;
                task(&a, bh / heads, bh % heads, (k % blocks) * qw, &ws);
            }
        }
        free(buf);
        free(ws.keys);
        if (Q) {
#ifdef _OPENMP
#pragma omp barrier
#endif
            /* per-token quantization needs every head of a token: after the
             * barrier, split the tokens in whole 16-token blocks */
            bsk_split((N + 15) / 16, T, t, &lo, &hi);
            lo *= 16;
            hi = hi * 16 < N ? hi * 16 : N;
            if (hi > lo) {
                float *qws = (float *)bsk_alloc((size_t)(4 * ((hi - lo + 15) / 16 * 16)) *
                                                sizeof(float));
                if (qws)
                    quant(&a, lo, hi, qws);
                else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                    failed = 1;
                }
                free(qws);
            }
        }
    }
    return failed ? BSK_ENOMEM : BSK_OK;
}
