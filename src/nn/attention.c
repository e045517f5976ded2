/*
 * Driver of multi-head self-attention (float32), see bsk_attention_f32 in
 * bsk_nn.h.  Compiled with baseline flags: it splits the (sequence, head,
 * query block) tasks over the threads, each with its own scratch, and runs
 * the ISA variant's task (attention_body.h, register blocks that fit its
 * register file) from its kernel table; then, optionally, the tokens for the
 * variant's per-token quantization of the result.
 */
#include "nn/nn_simd.h"

bsk_status bsk_nn_attn_check(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                             float scale, const float *QKV, const float *Y, const uint8_t *Q,
                             const float *q_scale, const int32_t *q_zero)
{
    if (batch < 0 || seq < 0 || heads < 1 || head_dim < 1 || !isfinite(scale) ||
        (Q && (!q_scale || !q_zero)))
        return BSK_EINVAL;
    if (batch * seq != 0 && (!QKV || !Y))
        return BSK_EINVAL;
    return BSK_OK;
}

int bsk_nn_attn_quantize_part(const bsk_kernels *k, float *Y, int64_t F, int64_t N, uint8_t *Q,
                              float *q_scale, int32_t *q_zero, int T, int t)
{
    /* the per-token quantization of Y, as bsk_quantize_tokens_u8 does it, in whole
     * 16-token blocks */
    bsk_nn_tok_args qa = {0};
    qa.X = Y;
    qa.features = F;
    qa.tokens = N;
    qa.Q = Q;
    qa.q_scale = q_scale;
    qa.q_zero = q_zero;
    int64_t lo, hi;
    bsk_split((N + 15) / 16, T, t, &lo, &hi);
    lo *= 16;
    hi = hi * 16 < N ? hi * 16 : N;
    if (hi <= lo)
        return 0;
    float *ws = (float *)bsk_alloc((size_t)(4 * ((hi - lo + 15) / 16 * 16)) * sizeof(float));
    if (!ws)
        return 1;
    k->nn_tokens->quantize(&qa, lo, hi, ws);
    free(ws);
    return 0;
}

bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t batch,
                             int64_t seq, int64_t heads, int64_t head_dim,
                             const uint8_t *mask, float scale, float *Y,
                             uint8_t *Q, float *q_scale, int32_t *q_zero,
                             int num_threads)
{
    const bsk_status bad = bsk_nn_attn_check(batch, seq, heads, head_dim, scale, QKV, Y, Q,
                                             q_scale, q_zero);
    if (bad != BSK_OK)
        return bad;
    const int64_t N = batch * seq;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (N == 0)
        return BSK_OK;
    const bsk_nn_attention_kernel *att = k->nn_attention;
    const int64_t qw = att->queries;

    bsk_nn_attn_args a;
    a.QKV = QKV;
    a.batch = batch;
    a.seq = seq;
    a.heads = heads;
    a.head_dim = head_dim;
    a.mask = mask;
    a.scale = scale;
    a.Y = Y;

    const int64_t blocks = (seq + qw - 1) / qw, tasks = batch * heads * blocks;
    const size_t floats = (size_t)(2 * seq * head_dim + head_dim * BSK_NN_MAX_QW +
                                   seq * BSK_NN_MAX_QW);
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    if (nt > tasks)
        nt = tasks;
    int failed = 0;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, (int)nt);
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt)
#endif
    {
#ifdef _OPENMP
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
#else
        const int T = 1, t = 0;
#endif
        BSK_TEAM_ENTER(&clock, t);
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
            for (int64_t j = lo; j < hi; j++) {
                const int64_t bh = j / blocks;
                att->task(&a, bh / heads, bh % heads, (j % blocks) * qw, &ws);
            }
        }
        free(buf);
        free(ws.keys);
        if (Q) {
            /* per-token quantization needs every head of a token */
#ifdef _OPENMP
#pragma omp barrier
#endif
            if (bsk_nn_attn_quantize_part(k, Y, heads * head_dim, N, Q, q_scale, q_zero, T,
                                          t)) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                failed = 1;
            }
        }
        BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    return failed ? BSK_ENOMEM : BSK_OK;
}
