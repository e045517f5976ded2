/*
 * Driver of one INT8 encoder layer (bsk_encoder_layer_q8_run in bsk_nn.h),
 * compiled with baseline flags.  It runs the variant's existing pieces (the
 * INT8 products on one thread, the per-token passes of tokens_body.h, the
 * phases of the INT8 attention) in one OpenMP team, each thread on its own
 * share of the tokens, which it keeps in arrays of its own:
 *
 *   batch of several sequences: thread t takes whole sequences and runs the
 *     layer on them alone, with no barrier;
 *   one sequence: thread t takes whole blocks of the attention's queries
 *     (16-64 tokens) and works on them alone, except that every query needs
 *     every key: its Q/K/V product, the Q and K codes of its tokens and each
 *     V row's maximum over them (barrier 0); the K codes of the others'
 *     tokens and all V codes, read from the others' arrays, into code arrays
 *     of its own (barrier 1); its queries on all heads and the rest of the
 *     layer.
 *
 * Why: a team per piece, as the separate entry points run, made every
 * product split the rows and every per-token pass the tokens, moving each
 * activation between the cores' caches, and paid a wake-up and a join per
 * piece (about 35 per BERT-Mini call).  And threads that write interleaved
 * column ranges of the same (features, tokens) rows slow each other down
 * 1.6x on Zen 4 although no cache line is shared (measured on the qkv
 * product of BERT-Mini, 64 tokens a thread: 29 us into one (768, 128) array,
 * 17.5 us into a (768, 64) array of its own): hence the arrays of its own.
 * Only the layer's input (read) and output (copied in at the end) are shared
 * (features, tokens) arrays.
 *
 * Every piece computes each output exactly as its own entry point does, so
 * the bits are those of the separate calls.
 */
#include "nn/nn_simd.h"

/* A thread's activations in its own scratch, 64-byte aligned, for W tokens:
 * `big` holds qkv (3H x W floats) and, once the attention has its codes, the
 * FFN1 output (I x W); `ctx` the attention's output, then FFN2's. */
typedef struct {
    size_t big, ctx, ctxq, ctx_s, ctx_z, h1, h1q, h1_s, h1_z, interq, inter_s, inter_z, total;
} layer_layout;

static size_t take(size_t *at, size_t bytes)
{
    const size_t here = *at;
    *at += (bytes + 63) / 64 * 64;
    return here;
}

static layer_layout plan(int64_t H, int64_t I, int64_t W)
{
    layer_layout l;
    size_t at = 0;
    const size_t hw = (size_t)(H * W), w = (size_t)W;
    l.big = take(&at, (size_t)((3 * H > I ? 3 * H : I) * W) * sizeof(float));
    l.ctx = take(&at, hw * sizeof(float));
    l.ctxq = take(&at, hw);
    l.ctx_s = take(&at, w * sizeof(float));
    l.ctx_z = take(&at, w * sizeof(int32_t));
    l.h1 = take(&at, hw * sizeof(float));
    l.h1q = take(&at, hw);
    l.h1_s = take(&at, w * sizeof(float));
    l.h1_z = take(&at, w * sizeof(int32_t));
    l.interq = take(&at, (size_t)(I * W));
    l.inter_s = take(&at, w * sizeof(float));
    l.inter_z = take(&at, w * sizeof(int32_t));
    l.total = at;
    return l;
}

static int weight_ok(const bsk_layer_weight *w, int64_t M, int64_t K)
{
    if (!w->rowsum || !w->w_scale || !w->sparse == !w->dense || K > BSK_MAX_K_INT8)
        return 0;
    if (w->dense)
        return w->dense->M == M && w->dense->K == K && w->dense->panel;
    return w->sparse->w.M == M && w->sparse->w.K == K;
}

static bsk_status check(const bsk_encoder_layer_q8 *L)
{
    const int64_t H = L->hidden, I = L->inter;
    if (L->batch < 0 || L->seq < 0 || L->heads < 1 || H < 1 || H % L->heads || I < 1 ||
        L->act < BSK_ACT_NONE || L->act > BSK_ACT_GELU || !(L->ln1_eps >= 0.0f) ||
        !(L->ln2_eps >= 0.0f) || !(L->scale == L->scale))
        return BSK_EINVAL;
    if (!L->X || !L->XQ || !L->x_scale || !L->x_zero || !L->Y || !L->ln1_gamma ||
        !L->ln1_beta || !L->ln2_gamma || !L->ln2_beta ||
        (L->YQ && (!L->y_scale || !L->y_zero)))
        return BSK_EINVAL;
    const int64_t N = L->batch * L->seq;
    const float *x = L->X, *y = L->Y;
    if (x < y + H * N && y < x + H * N)
        return BSK_EINVAL;
    if (!weight_ok(&L->qkv, 3 * H, H) || !weight_ok(&L->out, H, H) ||
        !weight_ok(&L->ffn1, I, H) || !weight_ok(&L->ffn2, H, I))
        return BSK_EINVAL;
    if (L->seq > BSK_AQ_MAX_SEQ || H / L->heads > BSK_MAX_K_INT8)
        return BSK_EOVERFLOW;
    return BSK_OK;
}

/* Y (M, W) (row stride ldy) = act(W @ dequantized X (K, W) (row stride ldx) +
 * bias) on this thread; xs, xz: the W tokens' scales and zero points. */
static bsk_status product(const bsk_kernels *k, const bsk_layer_weight *w, int act,
                          const uint8_t *X, int64_t ldx, const float *xs, const int32_t *xz,
                          int64_t W, float *Y, int64_t ldy)
{
    bsk_epilogue e;
    memset(&e, 0, sizeof(e));
    e.kind = BSK_OUT_F32;
    e.act = act;
    e.rowsum = w->rowsum;
    e.w_scale = w->w_scale;
    e.x_scale = xs;
    e.x_zero = xz;
    e.bias = w->bias;
    e.out_scale = 1.0f;
    if (w->dense)
        return k->qgemm(w->dense, X, ldx, W, 0, Y, ldy, 0, &e, 1);
    return bsk_qspmm_pick(k, w->sparse)(w->sparse, X, ldx, W, 0, Y, ldy, 0, &e, 1);
}

/* Per-token codes of X (F, W) * mul; ws: 4 * round16(W) floats. */
static void quantize(const bsk_kernels *k, const float *X, int64_t F, int64_t W,
                     const float *mul, uint8_t *Q, float *s, int32_t *z, float *ws)
{
    bsk_nn_tok_args a = {0};
    a.X = X;
    a.features = F;
    a.tokens = W;
    a.Q = Q;
    a.q_scale = s;
    a.q_zero = z;
    a.q_mul = mul;
    k->nn_tokens->quantize(&a, 0, W, ws);
}

/* Y = LayerNorm(X + Res) (+ codes of Y * mul if Q) for W tokens; X has row
 * stride W, Res ld_res, Y and Q ld_y. */
static void layernorm(const bsk_kernels *k, const float *X, const float *Res, int64_t ld_res,
                      int64_t F, int64_t W, const float *gamma, const float *beta, float eps,
                      float *Y, int64_t ld_y, uint8_t *Q, float *s, int32_t *z, const float *mul)
{
    bsk_nn_tok_args a = {0};
    a.X = X;
    a.Res = Res;
    a.ld_res = ld_res;
    a.Y = Y;
    a.ld_y = ld_y;
    a.features = F;
    a.tokens = W;
    a.gamma = gamma;
    a.beta = beta;
    a.eps = eps;
    a.Q = Q;
    a.q_scale = s;
    a.q_zero = z;
    a.q_mul = Q ? mul : NULL;
    k->nn_tokens->layernorm(&a, 0, W, NULL);
}

/* A thread's tokens n0 .. n0 + W of the layer and its arrays. */
typedef struct {
    const bsk_kernels *k;
    const bsk_encoder_layer_q8 *L;
    int64_t n0, W;
    float *big, *ctx, *h1, *ws;
    uint8_t *ctxq, *h1q, *interq;
    float *ctx_s, *h1_s, *inter_s;
    int32_t *ctx_z, *h1_z, *inter_z;
} layer_part;

/* The scratch of a thread: the attention's, or the codes' per-token state. */
static uint8_t *thread_scratch(size_t task_bytes, int64_t W)
{
    const size_t codes = (size_t)(4 * ((W + 15) / 16 * 16)) * sizeof(float);
    return (uint8_t *)bsk_scratch(BSK_SCRATCH_ATTN_TASK, task_bytes > codes ? task_bytes : codes);
}

/*
 * A thread's part: the tokens n0 .. n1 of the sequences b0 .. b0 + nb (n0,
 * n1 counted over the whole batch), its arrays in the thread's scratch, the
 * attention's arguments `a` for those sequences (the thread's own code arrays)
 * pointed at its qkv and context arrays, and its Q/K/V product.
 */
static bsk_status part_start(layer_part *p, const bsk_kernels *k, const bsk_encoder_layer_q8 *L,
                             int64_t b0, int64_t nb, int64_t n0, int64_t n1, bsk_nn_aq_args *a)
{
    p->k = k;
    p->L = L;
    p->n0 = n0;
    p->W = n1 - n0;
    const layer_layout l = plan(L->hidden, L->inter, p->W);
    uint8_t *buf = (uint8_t *)bsk_scratch(BSK_SCRATCH_LAYER, l.total);
    if (!buf)
        return BSK_ENOMEM;
    p->big = (float *)(buf + l.big);
    p->ctx = (float *)(buf + l.ctx);
    p->h1 = (float *)(buf + l.h1);
    p->ctxq = buf + l.ctxq;
    p->h1q = buf + l.h1q;
    p->interq = buf + l.interq;
    p->ctx_s = (float *)(buf + l.ctx_s);
    p->h1_s = (float *)(buf + l.h1_s);
    p->inter_s = (float *)(buf + l.inter_s);
    p->ctx_z = (int32_t *)(buf + l.ctx_z);
    p->h1_z = (int32_t *)(buf + l.h1_z);
    p->inter_z = (int32_t *)(buf + l.inter_z);
    const int64_t S = L->seq, N = L->batch * S;
    size_t task_bytes;
    bsk_status s = bsk_nn_aq_prepare(p->big, nb, S, L->heads, L->hidden / L->heads,
                                     L->mask ? L->mask + b0 * S : NULL, L->scale, p->ctx, NULL,
                                     a, &task_bytes);
    if (s != BSK_OK)
        return s;
    /* the attention counts tokens from its first sequence's */
    a->ldx = a->ldy = p->W;
    a->x0 = a->y0 = n0 - b0 * S;
    p->ws = (float *)thread_scratch(task_bytes, p->W);
    if (!p->ws)
        return BSK_ENOMEM;
    return product(k, &L->qkv, BSK_ACT_NONE, L->XQ + n0, N, L->x_scale + n0, L->x_zero + n0,
                   p->W, p->big, p->W);
}

/* Everything after the attention (its output in the part's ctx): the
 * context's codes, the output product, LayerNorm 1, FFN1, FFN2, LayerNorm 2
 * into the layer's output. */
static bsk_status part_rest(const layer_part *p)
{
    const bsk_kernels *k = p->k;
    const bsk_encoder_layer_q8 *L = p->L;
    const int64_t H = L->hidden, I = L->inter, W = p->W, n0 = p->n0, N = L->batch * L->seq;
    quantize(k, p->ctx, H, W, L->out_mul, p->ctxq, p->ctx_s, p->ctx_z, p->ws);
    bsk_status s = product(k, &L->out, BSK_ACT_NONE, p->ctxq, W, p->ctx_s, p->ctx_z, W, p->h1, W);
    if (s != BSK_OK)
        return s;
    layernorm(k, p->h1, L->X + n0, N, H, W, L->ln1_gamma, L->ln1_beta, L->ln1_eps, p->h1, W,
              p->h1q, p->h1_s, p->h1_z, L->ffn1_mul);
    s = product(k, &L->ffn1, L->act, p->h1q, W, p->h1_s, p->h1_z, W, p->big, W);
    if (s != BSK_OK)
        return s;
    quantize(k, p->big, I, W, L->ffn2_mul, p->interq, p->inter_s, p->inter_z, p->ws);
    s = product(k, &L->ffn2, BSK_ACT_NONE, p->interq, W, p->inter_s, p->inter_z, W, p->ctx, W);
    if (s != BSK_OK)
        return s;
    /* LayerNorm 2 in place, then one copy into the shared output: over the
     * shared rows its three passes took 14-16 us against LayerNorm 1's 6 us
     * over the thread's own (BERT-Mini, 64 tokens a thread) */
    layernorm(k, p->ctx, p->h1, W, H, W, L->ln2_gamma, L->ln2_beta, L->ln2_eps, p->ctx, W,
              L->YQ ? p->ctxq : NULL, L->YQ ? L->y_scale + n0 : NULL,
              L->YQ ? L->y_zero + n0 : NULL, L->next_mul);
    for (int64_t f = 0; f < H; f++) {
        memcpy(L->Y + f * N + n0, p->ctx + f * W, (size_t)W * sizeof(float));
        if (L->YQ)
            memcpy(L->YQ + f * N + n0, p->ctxq + f * W, (size_t)W);
    }
    return BSK_OK;
}

#ifdef _OPENMP
#define LAYER_FAIL(status, st)                                                 \
    do {                                                                       \
        _Pragma("omp atomic write") status = (int)(st);                        \
    } while (0)
#else
#define LAYER_FAIL(status, st) ((status) = (int)(st))
#endif

/* Several sequences: the threads take units of whole sequences in turn (an
 * atomic counter, so a thread the scheduler holds up takes fewer) and run
 * the layer on each unit alone, with no barrier.  A unit is one sequence, or
 * as many short ones as fill about 128 tokens (the products' token tiles are
 * 64 wide), but never so many that some thread would get none. */
static bsk_status run_batch(const bsk_kernels *k, const bsk_encoder_layer_q8 *L, int nt)
{
    const int64_t B = L->batch, S = L->seq, heads = L->heads;
    const bsk_nn_attention_q8_kernel *att = k->nn_attention_q8;
    const int64_t qw = att->queries, nblk = (S + qw - 1) / qw;
    int64_t per = 128 / S < B / nt ? 128 / S : B / nt;
    per = per < 1 ? 1 : per;
    const int64_t units = (B + per - 1) / per;
    int64_t next = 0;
    int status = BSK_OK;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        BSK_TEAM_ENTER(&clock, t);
        bsk_status s = BSK_OK;
        while (s == BSK_OK) {
            const int64_t u = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
            if (u >= units)
                break;
            const int64_t b0 = u * per, b1 = b0 + per < B ? b0 + per : B, nb = b1 - b0;
            layer_part p;
            bsk_nn_aq_args a;
            s = part_start(&p, k, L, b0, nb, b0 * S, b1 * S, &a);
            if (s == BSK_OK) {
                att->quant_tokens(&a, 0, (p.W + 15) / 16 * 16, p.ws);
                att->quant_values(&a, 0, nb * L->hidden);
                bsk_nn_aq_ws ws;
                bsk_nn_aq_task_ws(&a, (uint8_t *)p.ws, &ws);
                for (int64_t j = 0; j < nb * nblk * heads; j++) {
                    const int64_t bh = j / nblk;
                    att->task(&a, bh / heads, bh % heads, (j % nblk) * qw, &ws);
                }
                s = part_rest(&p);
            }
        }
        if (s != BSK_OK)
            LAYER_FAIL(status, s);
        BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    return (bsk_status)status;
}

/* Tokens n0 .. n1 of thread t of T: its whole query blocks of qw tokens. */
static void block_tokens(int64_t S, int64_t qw, int T, int t, int64_t *n0, int64_t *n1)
{
    int64_t j0, j1;
    bsk_split((S + qw - 1) / qw, T, t, &j0, &j1);
    *n0 = j0 * qw;
    *n1 = j1 * qw < S ? j1 * qw : S;
}

/* One sequence: each thread takes whole query blocks.  Every query needs
 * every key, so after a barrier each thread quantizes all of K and V into
 * code arrays of its own, reading the other threads' qkv arrays (a second
 * barrier then lets each reuse its qkv array for FFN1's output): the code
 * arrays hold each 4-feature group's tokens in one row, and two threads
 * writing the halves of those rows measured 2.5-3x slower than one thread
 * writing them all. */
static bsk_status run_tokens(const bsk_kernels *k, const bsk_encoder_layer_q8 *L, int nt)
{
    const int64_t S = L->seq, H = L->hidden, heads = L->heads;
    const bsk_nn_attention_q8_kernel *att = k->nn_attention_q8;
    const int64_t qw = att->queries, nblk = (S + qw - 1) / qw;
    if (nt > nblk)
        nt = (int)nblk;
    if (nt > BSK_TEAM_MAX)
        nt = BSK_TEAM_MAX; /* the per-thread arguments below live on the stack */
    /* per thread: its qkv array and each V row's max |v| over its tokens */
    float *amax = (float *)bsk_alloc((size_t)(nt * H) * sizeof(float));
    float **bigs = (float **)bsk_alloc((size_t)nt * sizeof(float *));
    if (!amax || !bigs) {
        free(amax);
        free(bigs);
        return BSK_ENOMEM;
    }
    int status = BSK_OK;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
#ifdef _OPENMP
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
#else
        const int T = 1, t = 0;
#endif
        BSK_TEAM_ENTER(&clock, t);
        int64_t n0, n1;
        block_tokens(S, qw, T, t, &n0, &n1);
        layer_part p = {0};
        bsk_nn_aq_args a;
        bsk_status s = part_start(&p, k, L, 0, 1, n0, n1, &a);
        bigs[t] = p.big;
        if (s == BSK_OK) {
            att->quant_tokens(&a, n0, n0 + (p.W + 15) / 16 * 16, p.ws);
            for (int64_t f = 0; f < H; f++)
                amax[t * H + f] = att->values_amax(&a, 0, f, n0, n1);
        } else {
            LAYER_FAIL(status, s);
        }
        bsk_team_barrier(&clock, t, 0);
        if (s == BSK_OK && status == BSK_OK) {
            /* the K codes of the other threads' tokens and the V codes of all,
             * each read from its thread's qkv array */
            bsk_nn_aq_args o[BSK_TEAM_MAX];
            int64_t m0[BSK_TEAM_MAX], m1[BSK_TEAM_MAX];
            for (int u = 0; u < T; u++) {
                block_tokens(S, qw, T, u, &m0[u], &m1[u]);
                o[u] = a;
                o[u].keys_only = 1;
                o[u].QKV = bigs[u];
                o[u].ldx = m1[u] - m0[u];
                o[u].x0 = m0[u];
                if (u != t)
                    att->quant_tokens(&o[u], m0[u], m0[u] + (o[u].ldx + 15) / 16 * 16, p.ws);
            }
            for (int64_t f = 0; f < H; f++) {
                float m = amax[f];
                for (int u = 1; u < T; u++)
                    m = amax[u * H + f] > m ? amax[u * H + f] : m;
                for (int u = 0; u < T; u++)
                    att->values_codes(&o[u], 0, f, m0[u], m1[u], m);
            }
        }
        /* FFN1 overwrites the qkv array the others have just read */
        bsk_team_barrier(&clock, t, 1);
        if (s == BSK_OK && status == BSK_OK) {
            bsk_nn_aq_ws ws;
            bsk_nn_aq_task_ws(&a, (uint8_t *)p.ws, &ws);
            for (int64_t i = n0; i < n1; i += qw)
                for (int64_t h = 0; h < heads; h++)
                    att->task(&a, 0, h, i, &ws);
            s = part_rest(&p);
            if (s != BSK_OK)
                LAYER_FAIL(status, s);
        }
        BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    free(amax);
    free(bigs);
    return (bsk_status)status;
}

bsk_status bsk_encoder_layer_q8_run(bsk_isa isa, const bsk_encoder_layer_q8 *L,
                                    int num_threads)
{
    if (!L)
        return BSK_EINVAL;
    const bsk_status bad = check(L);
    if (bad != BSK_OK)
        return bad;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (L->batch * L->seq == 0)
        return BSK_OK;
    int nt = num_threads < 1 ? 1 : num_threads;
    if (L->batch > 1)
        return run_batch(k, L, L->batch < nt ? (int)L->batch : nt);
    return run_tokens(k, L, nt);
}
