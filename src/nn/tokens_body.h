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
    for (int64_t nb = n0; nb < n1; nb += 16) {
        const int64_t tn = n1 - nb < 16 ? n1 - nb : 16;
        for (int64_t fb = 0; fb < F; fb += 16) {
            const int64_t tf = F - fb < 16 ? F - fb : 16;
            for (int64_t f = 0; f < tf; f++)
                for (int64_t t = 0; t < tn; t++)
                    a->Y[(fb + f) * N + nb + t] = a->Xt[(nb + t) * F + fb + f];
        }
    }
}

/*
 * Y = LayerNorm(X + Res) (+ uint8 codes) for the tokens [n0, n1), in three
 * streaming passes: (1) t = x + res into y, with the mean and the sum of
 * squared deviations by Welford's update (one pass, numerically like the
 * two-pass formula), taken about the token's first feature so that a large
 * common offset does not eat the float32 mantissa; (2) normalize, scale and
 * shift y in place, tracking the quantization range; (3) the uint8 codes.
 */
static void BSK_NN_FN(layernorm_range)(const bsk_nn_tok_args *a, int64_t n0, int64_t n1,
                                       float *ws)
{
    const int64_t F = a->features, N = a->tokens, T = n1 - n0;
    const int64_t Tv = (T + 15) / 16 * 16;
    float *pivot = ws, *mean = ws + Tv, *m2 = ws + 2 * Tv, *lo = ws + 3 * Tv,
          *hi = ws + 4 * Tv, *s = ws + 5 * Tv, *z = ws + 6 * Tv;
    const float *X = a->X + n0, *R = a->Res ? a->Res + n0 : NULL;
    float *Y = a->Y + n0;

    /* pass 1 */
    BSK_NN_FOR_TOKENS(T, {
        bsk_v16f t = bsk_nn_ld(X + n_, full_, cnt_);
        if (R)
            t = t + bsk_nn_ld(R + n_, full_, cnt_);
        bsk_nn_st(Y + n_, t, full_, cnt_);
        bsk_nn_store(pivot + n_, t);
        bsk_nn_store(mean + n_, (bsk_v16f){0});
        bsk_nn_store(m2 + n_, (bsk_v16f){0});
    });
    for (int64_t f = 1; f < F; f++) {
        const float *x = X + f * N, *r = R ? R + f * N : NULL;
        float *y = Y + f * N;
        const float inv_k = 1.0f / (float)(f + 1);
        BSK_NN_FOR_TOKENS(T, {
            bsk_v16f t = bsk_nn_ld(x + n_, full_, cnt_);
            if (r)
                t = t + bsk_nn_ld(r + n_, full_, cnt_);
            bsk_nn_st(y + n_, t, full_, cnt_);
            const bsk_v16f u = t - bsk_nn_load(pivot + n_);
            bsk_v16f m = bsk_nn_load(mean + n_);
            const bsk_v16f d = u - m;
            m = m + d * inv_k;
            bsk_nn_store(mean + n_, m);
            bsk_nn_store(m2 + n_, bsk_nn_load(m2 + n_) + d * (u - m));
        });
    }
    const float inv_f = 1.0f / (float)F;
    for (int64_t n = 0; n < Tv; n++)
        m2[n] = 1.0f / sqrtf(m2[n] * inv_f + a->eps);   /* now 1 / std */
    /* pass 2 */
    const float *mul = a->Q ? a->q_mul : NULL;
    if (a->Q)
        for (int64_t n = 0; n < Tv; n++)
            lo[n] = hi[n] = 0.0f;
    for (int64_t f = 0; f < F; f++) {
        float *y = Y + f * N;
        const float g = a->gamma[f], b = a->beta[f], mf = mul ? mul[f] : 1.0f;
        BSK_NN_FOR_TOKENS(T, {
            bsk_v16f t = ((bsk_nn_ld(y + n_, full_, cnt_) - bsk_nn_load(pivot + n_))
                          - bsk_nn_load(mean + n_)) * bsk_nn_load(m2 + n_);
            t = t * g + b;
            bsk_nn_st(y + n_, t, full_, cnt_);
            if (a->Q) {
                if (mul)
                    t = t * mf;
                if (!full_)   /* lanes past the range hold junk: keep them at 0 */
                    t = bsk_keep16f(t, (int)cnt_);
                bsk_nn_store(lo + n_, bsk_nn_min(bsk_nn_load(lo + n_), t));
                bsk_nn_store(hi + n_, bsk_nn_max(bsk_nn_load(hi + n_), t));
            }
        });
    }
    /* pass 3 */
    if (a->Q) {
        bsk_nn_params_rows(T, lo, hi, s, z, a->q_scale + n0, a->q_zero + n0);
        bsk_nn_codes_rows(Y, F, N, T, mul, s, z, a->Q + n0);
    }
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
    bsk_nn_params_rows(N, ws, ws + Nv, s, z, r0 == 0 ? a->q_scale : NULL,
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
        for (int64_t n = 0; n < N; n += 16) {
            bsk_v16f t = bsk_nn_load_part(y + n, N - n) + b;
            if (a->act == BSK_ACT_RELU)
                t = bsk_select(t > 0.0f, t, (bsk_v16f){0});
            else if (a->act == BSK_ACT_GELU)
                t = bsk_gelu16(t);
            bsk_nn_store_part(y + n, t, N - n);
        }
    }
}

const bsk_nn_token_kernels BSK_NN_FN(bsk_nn_tokens) = {
    BSK_NN_FN(transpose_range), BSK_NN_FN(layernorm_range), BSK_NN_FN(quantize_range),
    BSK_NN_FN(bias_act_rows), BSK_NN_FN(range_rows), BSK_NN_FN(codes_rows)};

#undef BSK_NN_FN
