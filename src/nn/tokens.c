/*
 * Drivers of the per-token encoder kernels on (features, tokens) arrays:
 * residual add + LayerNorm (+ uint8 quantization of the result), bias +
 * activation, per-token uint8 quantization.  Compiled with baseline flags:
 * they check the arguments, split the token blocks (or rows) over the
 * threads and run the ISA variant's passes (tokens_body.h) from its kernel
 * table.
 */
#include "nn/nn_simd.h"

/* Elements per thread below which the per-token passes use fewer threads
 * (see run_split); 0 always uses the requested count (for tests). */
static int64_t min_work_per_thread = (int64_t)256 * 1024;

int64_t bsk_nn_set_min_work_per_thread(int64_t work)
{
    return __atomic_exchange_n(&min_work_per_thread, work < 0 ? 0 : work, __ATOMIC_RELAXED);
}

/*
 * Run fn on a split of [0, units): token ranges in whole 16-token
 * blocks (by_tokens) or feature rows.  Up to num_threads threads, one per
 * min_work_per_thread elements (256 K): these passes are bound by moving
 * data between the cores' caches, and below that a second thread measured
 * no faster (LayerNorm of 768 x 128: 41 us on one thread, 42 us on two)
 * while it adds a wake-up, far longer when the other core is busy.  Each
 * thread gets scratch of `per_token` floats per token of its range (64-byte
 * aligned).  `first`, if not NULL, runs over the same split
 * before fn (a phase whose output fn reads only in the thread's range).
 */
static bsk_status run_split(bsk_nn_range_fn first, bsk_nn_range_fn fn,
                            const bsk_nn_tok_args *a, int64_t units, int by_tokens,
                            int64_t per_token, int num_threads)
{
    if (units <= 0)
        return BSK_OK;
    const int64_t blocks = by_tokens ? (units + 15) / 16 : units;
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    const int64_t per = __atomic_load_n(&min_work_per_thread, __ATOMIC_RELAXED);
    const int64_t by_work = per ? a->features * a->tokens / per : nt;
    if (nt > by_work)
        nt = by_work > 1 ? by_work : 1;
    if (nt > blocks)
        nt = blocks;
    int failed = 0;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, (int)nt);
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt) if (nt > 1)
#endif
    {
#ifdef _OPENMP
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
#else
        const int T = 1, t = 0;
#endif
        BSK_TEAM_ENTER(&clock, t);
        int64_t lo, hi;
        bsk_split(blocks, T, t, &lo, &hi);
        if (by_tokens) {
            lo *= 16;
            hi = hi * 16 < units ? hi * 16 : units;
        }
        float *ws = NULL;
        if (per_token && hi > lo) {
            ws = (float *)bsk_alloc((size_t)(per_token * ((hi - lo + 15) / 16 * 16)) *
                                    sizeof(float));
            if (!ws) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                failed = 1;
            }
        }
        if (hi > lo && (ws || !per_token)) {
            if (first)
                first(a, lo, hi, ws);
            fn(a, lo, hi, ws);
        }
        free(ws);
        BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    return failed ? BSK_ENOMEM : BSK_OK;
}

static void empty_params(int64_t N, float *q_scale, int32_t *q_zero)
{
    /* tokens without features quantize with scale 1, zero point 0 */
    for (int64_t n = 0; n < N; n++) {
        q_scale[n] = 1.0f;
        q_zero[n] = 0;
    }
}

bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int x_tokens,
                                 const float *Res, int64_t F, int64_t N,
                                 const float *gamma, const float *beta,
                                 float eps, float *Y, uint8_t *Q,
                                 float *q_scale, int32_t *q_zero,
                                 const float *q_mul, int num_threads)
{
    if (F < 1 || N < 0 || !(eps >= 0.0f) || (Q && (!q_scale || !q_zero)) ||
        (N && (!X || !Y || !gamma || !beta)) || (x_tokens && X == Y))
        return BSK_EINVAL;
    bsk_nn_tok_args a = {0};
    /* a tokens-major input is first transposed into Y, then normalized there */
    a.X = x_tokens ? Y : X;
    a.Xt = x_tokens ? X : NULL;
    a.Res = Res;
    a.Y = Y;
    a.features = F;
    a.tokens = N;
    a.gamma = gamma;
    a.beta = beta;
    a.eps = eps;
    a.Q = Q;
    a.q_scale = q_scale;
    a.q_zero = q_zero;
    a.q_mul = q_mul;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    return run_split(x_tokens ? k->nn_tokens->transpose : NULL, k->nn_tokens->layernorm, &a,
                     N, 1, 0, num_threads);
}

bsk_status bsk_transpose_f32(bsk_isa isa, const float *X, int64_t rows, int64_t cols,
                             float *Y, int num_threads)
{
    if (rows < 0 || cols < 0 || (rows && cols && (!X || !Y || X == Y)))
        return BSK_EINVAL;
    if (!rows || !cols)
        return BSK_OK;
    /* the LayerNorm's tokens-major input pass: X as (tokens, features) */
    bsk_nn_tok_args a = {0};
    a.Xt = X;
    a.Y = Y;
    a.features = cols;
    a.tokens = rows;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    return run_split(NULL, k->nn_tokens->transpose, &a, rows, 1, 0, num_threads);
}

bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t M, int64_t N,
                            const float *bias, int act, int num_threads)
{
    if (M < 0 || N < 0 || act < BSK_ACT_NONE || act > BSK_ACT_GELU || (M && N && !Y))
        return BSK_EINVAL;
    bsk_nn_tok_args a = {0};
    a.Y = Y;
    a.features = M;
    a.tokens = N;
    a.bias = bias;
    a.act = act;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    return run_split(NULL, k->nn_tokens->bias_act, &a, N ? M : 0, 0, 0, num_threads);
}

/*
 * Per-token quantization split by feature rows over nt threads: each thread
 * takes the per-token range of its rows, the ranges are merged (min and max:
 * exact in any order, so the parameters and codes are those of the token
 * split), and each thread codes the rows it just read.  The token split
 * makes every thread read every row, half of them from the other core's
 * cache when a row-split product has just written them (an FFN1 output);
 * here each core reads its own rows twice from its L2.
 */
static bsk_status quantize_by_rows(const bsk_nn_token_kernels *k, const bsk_nn_tok_args *a,
                                   int nt)
{
    const int64_t F = a->features, N = a->tokens, Nv = (N + 15) / 16 * 16;
    bsk_team_clock clock;
    nt = bsk_team_begin(&clock, nt);
    /* per thread: its rows' (lo, hi), then the merged (lo, hi) and s, z */
    float *ws = (float *)bsk_alloc((size_t)(6 * Nv * nt) * sizeof(float));
    if (!ws)
        return BSK_ENOMEM;
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
        int64_t r0, r1;
        bsk_split(F, T, t, &r0, &r1);
        float *mine = ws + 6 * Nv * t, *merged = mine + 2 * Nv;
        k->range_rows(a, r0, r1, mine);
#ifdef _OPENMP
#pragma omp barrier
#endif
        for (int64_t n = 0; n < 2 * Nv; n++)
            merged[n] = ws[n];
        for (int u = 1; u < T; u++) {
            const float *part = ws + 6 * Nv * u;
            for (int64_t n = 0; n < Nv; n++) {
                merged[n] = part[n] < merged[n] ? part[n] : merged[n];
                merged[Nv + n] = part[Nv + n] > merged[Nv + n] ? part[Nv + n] : merged[Nv + n];
            }
        }
        if (r1 > r0 || t == 0)  /* thread 0 (r0 == 0) writes the parameters */
            k->codes_rows(a, r0, r1, merged);
        BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    free(ws);
    return BSK_OK;
}

bsk_status bsk_quantize_tokens_u8(bsk_isa isa, const float *X, int64_t F,
                                  int64_t N, const float *q_mul, uint8_t *Q,
                                  float *q_scale, int32_t *q_zero,
                                  int num_threads)
{
    if (F < 0 || N < 0 || (N && (!q_scale || !q_zero || (F && (!X || !Q)))))
        return BSK_EINVAL;
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (F == 0) {
        empty_params(N, q_scale, q_zero);
        return BSK_OK;
    }
    bsk_nn_tok_args a = {0};
    a.X = X;
    a.features = F;
    a.tokens = N;
    a.Q = Q;
    a.q_scale = q_scale;
    a.q_zero = q_zero;
    a.q_mul = q_mul;
    /* large arrays by rows (quantize_by_rows), from a quarter of the
     * token split's minimum work per thread */
    const int64_t per = __atomic_load_n(&min_work_per_thread, __ATOMIC_RELAXED) / 4;
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    if (per && nt > F * N / per)
        nt = F * N / per;
    if (nt > F)
        nt = F;
    if (nt > 1)
        return quantize_by_rows(k->nn_tokens, &a, (int)nt);
    return run_split(NULL, k->nn_tokens->quantize, &a, N, 1, 4, num_threads);
}
