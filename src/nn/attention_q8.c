/*
 * Driver of the INT8 multi-head self-attention, see bsk_attention_q8 in
 * bsk_nn.h.  Compiled with baseline flags.  One OpenMP region, three phases
 * split statically over the threads (results do not depend on their number):
 *   A  the variant's quant_tokens over whole 16-token blocks (Q and K of
 *      every head) and quant_values over (sequence, V row) items, into the
 *      shared arrays (bsk_nn_aq_args), then a barrier;
 *   B  the (sequence, head, query block) tasks, as the float driver splits
 *      them, each thread with its own scratch;
 *   C  optionally, after a barrier, the per-token quantization of Y
 *      (bsk_nn_attn_quantize_part, the float driver's).
 * The shared arrays live in the calling thread's scratch, the task scratch in
 * each thread's (bsk_scratch): no allocation per call once they have grown.
 */
#include "nn/nn_simd.h"

/* Offsets of the shared arrays in one buffer, each 64-byte aligned. */
typedef struct {
    size_t qv, kv, vc, q_scale, q_zero, k_scale, k_sum, v_scale, any, total;
} aq_layout;

static size_t aq_take(size_t *at, size_t bytes)
{
    const size_t here = *at;
    *at += (bytes + 63) / 64 * 64;
    return here;
}

static aq_layout aq_plan(int64_t batch, int64_t heads, int64_t D, int64_t G, int64_t Np)
{
    aq_layout l;
    size_t at = 0;
    const size_t codes = (size_t)(heads * G * Np * 4), params = (size_t)(heads * Np);
    /* the tasks' 16-lane loads of Q may run past the last row by a block */
    l.qv = aq_take(&at, codes + BSK_NN_MAX_QW * 4);
    l.kv = aq_take(&at, codes);
    /* ... and those of V's four-key groups by three bytes */
    l.vc = aq_take(&at, (size_t)(heads * D * Np) + 4);
    l.q_scale = aq_take(&at, params * sizeof(float));
    l.q_zero = aq_take(&at, params * sizeof(int32_t));
    l.k_scale = aq_take(&at, params * sizeof(float));
    l.k_sum = aq_take(&at, params * sizeof(int32_t));
    l.v_scale = aq_take(&at, (size_t)(batch * heads * D) * sizeof(float));
    l.any = aq_take(&at, (size_t)batch);
    l.total = at;
    return l;
}

/* The shared arrays into the trace (tests). */
static void aq_copy_trace(const bsk_nn_aq_args *a, const bsk_attn_q8_trace *tr)
{
    const size_t codes = (size_t)(a->heads * a->groups * a->ld * 4);
    const size_t params = (size_t)(a->heads * a->ld);
    const size_t hidden = (size_t)(a->heads * a->head_dim);
    if (tr->q)
        memcpy(tr->q, a->qv, codes);
    if (tr->k)
        memcpy(tr->k, a->kv, codes);
    if (tr->v)
        memcpy(tr->v, a->vc, hidden * (size_t)a->ld);
    if (tr->q_scale)
        memcpy(tr->q_scale, a->q_scale, params * sizeof(float));
    if (tr->q_zero)
        memcpy(tr->q_zero, a->q_zero, params * sizeof(int32_t));
    if (tr->k_scale)
        memcpy(tr->k_scale, a->k_scale, params * sizeof(float));
    if (tr->k_sum)
        memcpy(tr->k_sum, a->k_sum, params * sizeof(int32_t));
    if (tr->v_scale)
        memcpy(tr->v_scale, a->v_scale, (size_t)a->batch * hidden * sizeof(float));
}

bsk_status bsk_nn_aq_prepare(const float *QKV, int64_t batch, int64_t seq, int64_t heads,
                             int64_t head_dim, const uint8_t *mask, float scale, float *Y,
                             const bsk_attn_q8_trace *trace, bsk_nn_aq_args *a,
                             size_t *task_bytes)
{
    /* int32 holds head_dim x 255 x 127 (scores), seq x 255 x 127 (each byte plane
     * of P V) and seq x 65535 (the probability codes' sum) */
    if (head_dim > BSK_MAX_K_INT8 || seq > BSK_AQ_MAX_SEQ)
        return BSK_EOVERFLOW;
    const int64_t N = batch * seq;
    const int64_t D = head_dim, G = (D + 3) / 4, Np = (N + 15) / 16 * 16, H = heads * D;
    const aq_layout l = aq_plan(batch, heads, D, G, Np);
    uint8_t *buf = (uint8_t *)bsk_scratch(BSK_SCRATCH_ATTN_SHARED, l.total);
    if (!buf)
        return BSK_ENOMEM;
    a->QKV = QKV;
    a->ldx = N;
    a->x0 = 0;
    a->batch = batch;
    a->seq = seq;
    a->heads = heads;
    a->head_dim = D;
    a->groups = G;
    a->ld = Np;
    a->mask = mask;
    a->scale_log2e = scale * 1.44269504088896341f;
    a->Y = Y;
    a->ldy = N;
    a->y0 = 0;
    a->qv = buf + l.qv;
    a->kv = (int8_t *)(buf + l.kv);
    a->vc = (int8_t *)(buf + l.vc);
    a->q_scale = (float *)(buf + l.q_scale);
    a->q_zero = (int32_t *)(buf + l.q_zero);
    a->k_scale = (float *)(buf + l.k_scale);
    a->k_sum = (int32_t *)(buf + l.k_sum);
    a->v_scale = (float *)(buf + l.v_scale);
    a->trace = trace;
    a->keys_only = 0;
    /* the bytes the tasks read past the arrays' ends (their lanes are discarded) */
    memset(a->qv + heads * G * Np * 4, 0, BSK_NN_MAX_QW * 4);
    memset(a->vc + H * Np, 0, 4);
    uint8_t *any = buf + l.any;
    int64_t attended = 0;
    for (int64_t b = 0; b < batch; b++) {
        any[b] = 1;
        if (mask) {
            int64_t n = 0;
            for (int64_t j = 0; j < seq; j++)
                n += mask[b * seq + j] != 0;
            any[b] = n > 0;
            attended += n;
        }
    }
    a->any = any;
    /* a mask that attends everywhere is no mask: the same keys, and the
     * pieces skip reading it */
    if (attended == batch * seq)
        a->mask = NULL;
    /* a thread's scratch: phase A's per-token state, or phase B's st, pp, yt,
     * keys, row (bsk_nn_aq_task_ws) */
    const size_t bytes_a = 5 * BSK_AQ_CHUNK * sizeof(float);
    const size_t bytes_b = (size_t)(seq * BSK_NN_MAX_QW) * sizeof(float) +
                           (size_t)((seq + 3) / 4 + 1) * 2 * BSK_NN_MAX_QW * 4 +
                           (size_t)(D * BSK_NN_MAX_QW) * sizeof(float) +
                           2 * (size_t)seq * sizeof(int32_t) + 4 * 64;
    *task_bytes = bytes_a > bytes_b ? bytes_a : bytes_b;
    return BSK_OK;
}

void bsk_nn_aq_task_ws(const bsk_nn_aq_args *a, uint8_t *mine, bsk_nn_aq_ws *ws)
{
    const int64_t seq = a->seq;
    size_t at = 0;
    ws->st = (float *)(mine + aq_take(&at, (size_t)(seq * BSK_NN_MAX_QW) * sizeof(float)));
    ws->pp = mine + aq_take(&at, (size_t)((seq + 3) / 4 + 1) * 2 * BSK_NN_MAX_QW * 4);
    ws->yt = (float *)(mine + aq_take(&at, (size_t)(a->head_dim * BSK_NN_MAX_QW) *
                                               sizeof(float)));
    ws->keys = (int32_t *)(mine + aq_take(&at, (size_t)seq * sizeof(int32_t)));
    ws->row = (int32_t *)(mine + aq_take(&at, (size_t)seq * sizeof(int32_t)));
    ws->b = -1;
}

bsk_status bsk_attention_q8(bsk_isa isa, const float *QKV, int64_t batch,
                            int64_t seq, int64_t heads, int64_t head_dim,
                            const uint8_t *mask, float scale, float *Y,
                            uint8_t *Q, float *q_scale, int32_t *q_zero,
                            const bsk_attn_q8_trace *trace, int num_threads)
{
    const bsk_status bad = bsk_nn_attn_check(batch, seq, heads, head_dim, scale, QKV, Y, Q,
                                             q_scale, q_zero);
    if (bad != BSK_OK)
        return bad;
    const int64_t N = batch * seq;
    if (head_dim > BSK_MAX_K_INT8 || seq > BSK_AQ_MAX_SEQ)
        return BSK_EOVERFLOW;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (N == 0)
        return BSK_OK;
    const bsk_nn_attention_q8_kernel *att = k->nn_attention_q8;
    const int64_t H = heads * head_dim, Np = (N + 15) / 16 * 16, qw = att->queries;
    bsk_nn_aq_args a;
    size_t task_bytes;
    const bsk_status st = bsk_nn_aq_prepare(QKV, batch, seq, heads, head_dim, mask, scale, Y,
                                            trace, &a, &task_bytes);
    if (st != BSK_OK)
        return st;

    const int64_t blocks = (seq + qw - 1) / qw, tasks = batch * heads * blocks;
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
        uint8_t *mine = (uint8_t *)bsk_scratch(BSK_SCRATCH_ATTN_TASK, task_bytes);
        if (!mine) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
        int64_t lo, hi;
        if (mine) {
            bsk_split(Np / 16, T, t, &lo, &hi);
            if (hi > lo)
                att->quant_tokens(&a, lo * 16, hi * 16, (float *)mine);
            bsk_split(batch * H, T, t, &lo, &hi);
            att->quant_values(&a, lo, hi);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        if (trace && t == 0)
            aq_copy_trace(&a, trace);
        if (mine) {
            bsk_nn_aq_ws ws;
            bsk_nn_aq_task_ws(&a, mine, &ws);
            bsk_split(tasks, T, t, &lo, &hi);
            for (int64_t j = lo; j < hi; j++) {
                const int64_t bh = j / blocks;
                att->task(&a, bh / heads, bh % heads, (j % blocks) * qw, &ws);
            }
        }
        if (Q) {
            /* per-token quantization needs every head of a token */
#ifdef _OPENMP
#pragma omp barrier
#endif
            if (bsk_nn_attn_quantize_part(k, Y, H, N, Q, q_scale, q_zero, T, t)) {
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
