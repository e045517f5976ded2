/*
 * Per-token encoder kernels, compiled once per ISA variant: the including
 * unit (src/<isa>/nn_<isa>.c) defines BSK_NN_SFX, the suffix of the table
 * bsk_nn_tokens_<sfx> it exports (listed in dispatch.c).  Arrays are
 * (features, tokens).  The *_range functions handle the tokens [n0, n1)
 * with whole-row passes and per-token state in the scratch `ws` (see
 * bsk_nn_quant_rows); bias_act_rows handles feature rows [n0, n1).
 */
#define BSK_NN_FN(name) BSK_NN_CAT(name, BSK_NN_SFX)

/* Y[f, n] = X[n, f] for the tokens [n0, n1): 16 x 16 tiles, so that both
 * sides are read and written in whole cache lines. */
static void BSK_NN_FN(transpose_range)(const bsk_nn_tok_args *a, int64_t n0, int64_t n1,
                                       float *ws)
{
    (void)ws;
    const int64_t F = a->features, N = a->tokens;
    const float *X = a->Xt;
    float *Y = a->Y;
    int64_t n = n0;
    /* 16 tokens per block row: each output row gets a whole 64-byte line */
    for (; n + 16 <= n1; n += 16) {
        int64_t f = 0;
        for (; f + 8 <= F; f += 8) {
            bsk_transpose8x8(X + n * F + f, F, Y + f * N + n, N);
            bsk_transpose8x8(X + (n + 8) * F + f, F, Y + f * N + n + 8, N);
        }
        for (; f < F; f++)
            for (int64_t t = n; t < n + 16; t++)
                Y[f * N + t] = X[t * F + f];
    }
    for (; n + 8 <= n1; n += 8) {
        int64_t f = 0;
        for (; f + 8 <= F; f += 8)
            bsk_transpose8x8(X + n * F + f, F, Y + f * N + n, N);
        for (; f < F; f++)
            for (int64_t t = n; t < n + 8; t++)
                Y[f * N + t] = X[t * F + f];
    }
    for (; n < n1; n++)
        for (int64_t f = 0; f < F; f++)
            Y[f * N + n] = X[n * F + f];
}

/*
 * LayerNorm of the nv (<= BSK_NN_SWEEP) vectors of tokens at n0, the last
 * one holding `tail` tokens, in three streaming passes over the rows:
 * (1) t = x + res into y, with the mean and the sum of squared deviations by
 * Welford's update (one pass, numerically like the two-pass formula), taken
 * about the token's first feature so that a large common offset does not eat
 * the float32 mantissa; (2) normalize, scale and shift y in place, tracking
 * the quantization range; (3) the uint8 codes.  The per-token state stays in
 * registers (one named variable per vector: see BSK_EPI_EACH in
 * simd/epilogue.h): kept in memory, its stores and reloads bounded the passes.
 */
#define BSK_NN_LN_STATE(v) bsk_vf piv##v = {0}, mean##v = {0}, m2##v = {0}, \
    lo##v = {0}, hi##v = {0};
/* t = x + res of vector v, also stored into y */
#define BSK_NN_LN_SUM(x, r, y, v)                                              \
    bsk_vf t = bsk_nn_sweep_ld(x, v, nv, tail);                                \
    if (r)                                                                     \
        t = t + bsk_nn_sweep_ld(r, v, nv, tail);                               \
    bsk_nn_sweep_st(y, t, v, nv, tail);
#define BSK_NN_LN_FIRST(v)                                                     \
    if (v < nv) {                                                              \
        BSK_NN_LN_SUM(X, R, Y, v)                                              \
        piv##v = t;                                                            \
    }
#define BSK_NN_LN_ROW1(v)                                                      \
    if (v < nv) {                                                              \
        BSK_NN_LN_SUM(x, r, y, v)                                              \
        const bsk_vf u = t - piv##v;                                           \
        const bsk_vf d = u - mean##v;                                          \
        mean##v = mean##v + d * inv_k;                                         \
        m2##v = m2##v + d * (u - mean##v);                                     \
    }
#define BSK_NN_LN_RSTD(v)                                                      \
    if (v < nv)                                                                \
        m2##v = bsk_nn_rstd(m2##v, inv_f, a->eps);   /* now 1 / std */
#define BSK_NN_LN_ROW2(v)                                                      \
    if (v < nv) {                                                              \
        bsk_vf t = ((bsk_nn_sweep_ld(y, v, nv, tail) - piv##v) - mean##v) * m2##v; \
        t = t * g + b;                                                         \
        bsk_nn_sweep_st(y, t, v, nv, tail);                                    \
        if (a->Q) {                                                            \
            if (mul)                                                           \
                t = t * mf;                                                    \
            if (v == nv - 1 && tail < BSK_VL) /* lanes past the range: 0 */    \
                t = bsk_vf_keep(t, (int)tail);                                 \
            lo##v = bsk_vf_min(lo##v, t);                                      \
            hi##v = bsk_vf_max(hi##v, t);                                      \
        }                                                                      \
    }
#define BSK_NN_LN_RANGE_OUT(v)                                                 \
    if (v < nv) {                                                              \
        bsk_vf_store(lo + BSK_VL * v, lo##v);                                  \
        bsk_vf_store(hi + BSK_VL * v, hi##v);                                  \
    }

BSK_INLINE void BSK_NN_FN(layernorm_sweep)(const bsk_nn_tok_args *a, int64_t n0, int nv,
                                            int64_t tail)
{
    const int64_t F = a->features, N = a->tokens;
    const int64_t NR = a->ld_res ? a->ld_res : N, NY = a->ld_y ? a->ld_y : N;
    const float *X = a->X + n0, *R = a->Res ? a->Res + n0 : NULL;
    float *Y = a->Y + n0;
    const float *mul = a->Q ? a->q_mul : NULL;
    BSK_NN_EACH_V(BSK_NN_LN_STATE)

    /* pass 1 */
    BSK_NN_EACH_V(BSK_NN_LN_FIRST)
    for (int64_t f = 1; f < F; f++) {
        const float *x = X + f * N, *r = R ? R + f * NR : NULL;
        float *y = Y + f * NY;
        const float inv_k = 1.0f / (float)(f + 1);
        BSK_NN_EACH_V(BSK_NN_LN_ROW1)
    }
    const float inv_f = 1.0f / (float)F;
    BSK_NN_EACH_V(BSK_NN_LN_RSTD)
    /* pass 2 */
    for (int64_t f = 0; f < F; f++) {
        float *y = Y + f * NY;
        const float g = a->gamma[f], b = a->beta[f], mf = mul ? mul[f] : 1.0f;
        BSK_NN_EACH_V(BSK_NN_LN_ROW2)
    }
    /* pass 3: the per-token parameters and codes of the quantization */
    if (!a->Q)
        return;
    /* four vectors each, as many as BSK_NN_EACH_V names (s, z zeroed: GCC cannot
     * tell that bsk_nn_params_rows sets the nv vectors the codes read) */
    float lo[4 * BSK_VL] __attribute__((aligned(64))),
          hi[4 * BSK_VL] __attribute__((aligned(64))),
          s[4 * BSK_VL] __attribute__((aligned(64))) = {0},
          z[4 * BSK_VL] __attribute__((aligned(64))) = {0};
    BSK_NN_EACH_V(BSK_NN_LN_RANGE_OUT)
    bsk_nn_params_rows(BSK_VL * (nv - 1) + tail, BSK_VL * nv, lo, hi, s, z,
                       a->q_scale + n0, a->q_zero + n0);
    bsk_nn_codes_sweep(Y, F, NY, mul, s, z, a->Q + n0, nv, tail);
}

/*
 * Y = LayerNorm(X + Res) (+ uint8 codes) for the tokens [n0, n1), in sweeps of
 * up to BSK_NN_SWEEP vectors of tokens (see layernorm_sweep).
 */
#define BSK_NN_LN_AT(n, nv, tail, a) BSK_NN_FN(layernorm_sweep)(a, n0 + (n), nv, tail)

static void BSK_NN_FN(layernorm_range)(const bsk_nn_tok_args *a, int64_t n0, int64_t n1,
                                       float *ws)
{
    (void)ws;
    BSK_NN_SWEEPS(n1 - n0, BSK_NN_LN_AT, a);
}

static void BSK_NN_FN(quantize_range)(const bsk_nn_tok_args *a, int64_t n0, int64_t n1,
                                      float *ws)
{
    bsk_nn_quant_rows(a->X + n0, a->features, a->tokens, n1 - n0, a->q_mul, a->Q + n0,
                      a->q_scale + n0, a->q_zero + n0, ws);
}

/* Rows [r0, r1) of the row-split quantization (bsk_nn_token_kernels). */
static void BSK_NN_FN(range_rows)(const bsk_nn_tok_args *a, int64_t r0, int64_t r1, float *ws)
{
    const int64_t N = a->tokens, Nv = (N + 15) / 16 * 16;
    bsk_nn_range_rows(a->X + r0 * N, r1 - r0, N, N, a->q_mul ? a->q_mul + r0 : NULL, ws,
                      ws + Nv);
}

static void BSK_NN_FN(codes_rows)(const bsk_nn_tok_args *a, int64_t r0, int64_t r1, float *ws)
{
    const int64_t N = a->tokens, Nv = (N + 15) / 16 * 16;
    float *s = ws + 2 * Nv, *z = ws + 3 * Nv;
    bsk_nn_params_rows(N, BSK_NN_WHOLE(N), ws, ws + Nv, s, z, r0 == 0 ? a->q_scale : NULL,
                       r0 == 0 ? a->q_zero : NULL);
    bsk_nn_codes_rows(a->X + r0 * N, r1 - r0, N, N, a->q_mul ? a->q_mul + r0 : NULL, s, z,
                      a->Q + r0 * N);
}

static void BSK_NN_FN(bias_act_rows)(const bsk_nn_tok_args *a, int64_t r0, int64_t r1,
                                     float *ws)
{
    (void)ws;
    const int64_t N = a->tokens;
    for (int64_t m = r0; m < r1; m++) {
        float *y = a->Y + m * N;
        const float b = a->bias ? a->bias[m] : 0.0f;
        for (int64_t n = 0; n < N; n += BSK_VL) {
            const int cnt = N - n < BSK_VL ? (int)(N - n) : BSK_VL;
            bsk_vf t = bsk_vf_load_part(y + n, cnt) + b;
            if (a->act == BSK_ACT_RELU)
                t = bsk_vf_max(t, (bsk_vf){0});
            else if (a->act == BSK_ACT_GELU)
                t = bsk_vf_gelu(t);
            bsk_vf_store_part(y + n, t, cnt);
        }
    }
}

const bsk_nn_token_kernels BSK_NN_FN(bsk_nn_tokens) = {
    BSK_NN_FN(transpose_range), BSK_NN_FN(layernorm_range), BSK_NN_FN(quantize_range),
    BSK_NN_FN(bias_act_rows), BSK_NN_FN(range_rows), BSK_NN_FN(codes_rows)};

#undef BSK_NN_FN
