/*
 * Per-token encoder kernels, instantiated once per ISA by tokens.c inside a
 * `#pragma GCC target` region.  The including file defines BSK_NN_SFX.
 * Arrays are (features, tokens); a block is 16 consecutive tokens, one per
 * vector lane.  layernorm_blocks and quantize_blocks handle token blocks
 * [b0, b1); bias_act_rows handles feature rows [b0, b1).
 */
#define BSK_NN_FN(name) BSK_NN_CAT(name, BSK_NN_SFX)

/* Row f of X for the block's tokens, from (F, N) or tokens-major (N, F) X. */
BSK_INLINE bsk_v16f BSK_NN_FN(x_row)(const bsk_nn_tok_args *a, int64_t f, int64_t n0,
                                     const int full, int cnt)
{
    if (!a->x_tokens)
        return bsk_nn_ld(a->X + f * a->tokens + n0, full, cnt);
    bsk_v16f v = (bsk_v16f){0};
    const float *x = a->X + n0 * a->features + f;
    for (int t = 0; t < cnt; t++)
        v[t] = x[t * a->features];
    return v;
}

/* LayerNorm (+ quantization) of the tokens [n0, n0 + cnt). */
BSK_INLINE void BSK_NN_FN(layernorm_block)(const bsk_nn_tok_args *a, int64_t n0,
                                           const int full, int cnt)
{
    const int64_t F = a->features, N = a->tokens;
    const float inv_f = 1.0f / (float)F;
    const float *res = a->Res ? a->Res + n0 : NULL;
    float *y = a->Y + n0;
    /* pass 1: t = x + res (kept in y) and its sum, taken about the token's
     * first feature so that a large common offset does not eat the float32
     * mantissa of the sum */
    bsk_v16f pivot = BSK_NN_FN(x_row)(a, 0, n0, full, cnt);
    if (res)
        pivot = pivot + bsk_nn_ld(res, full, cnt);
    bsk_v16f sum0 = (bsk_v16f){0}, sum1 = sum0;
    int64_t f = 0;
    for (; f < F; f++) {
        bsk_v16f t = BSK_NN_FN(x_row)(a, f, n0, full, cnt);
        if (res)
            t = t + bsk_nn_ld(res + f * N, full, cnt);
        bsk_nn_st(y + f * N, t, full, cnt);
        if (f & 1)
            sum1 = sum1 + (t - pivot);
        else
            sum0 = sum0 + (t - pivot);
    }
    /* the mean as pivot + moff: (t - pivot) - moff keeps the digits that a
     * float32 mean near a large offset would round away */
    const bsk_v16f moff = (sum0 + sum1) * inv_f;
    /* pass 2: variance about the mean (two passes: no cancellation) */
    bsk_v16f var0 = (bsk_v16f){0}, var1 = var0;
    for (f = 0; f + 2 <= F; f += 2) {
        const bsk_v16f d0 = (bsk_nn_ld(y + f * N, full, cnt) - pivot) - moff;
        const bsk_v16f d1 = (bsk_nn_ld(y + (f + 1) * N, full, cnt) - pivot) - moff;
        var0 = var0 + d0 * d0;
        var1 = var1 + d1 * d1;
    }
    if (f < F) {
        const bsk_v16f d0 = (bsk_nn_ld(y + f * N, full, cnt) - pivot) - moff;
        var0 = var0 + d0 * d0;
    }
    const bsk_v16f v = (var0 + var1) * inv_f + a->eps;
    bsk_v16f rstd = (bsk_v16f){0};
    for (int t = 0; t < 16; t++)
        rstd[t] = 1.0f / sqrtf(v[t]);
    /* pass 3: normalize, scale, shift (and the quantization range) */
    bsk_v16f lo = (bsk_v16f){0}, hi = lo;
    const float *mul = a->q_mul;
    for (f = 0; f < F; f++) {
        bsk_v16f t = ((bsk_nn_ld(y + f * N, full, cnt) - pivot) - moff) * rstd;
        t = t * a->gamma[f] + a->beta[f];
        bsk_nn_st(y + f * N, t, full, cnt);
        if (a->Q) {
            const bsk_v16f m = mul ? t * mul[f] : t;
            lo = bsk_nn_min(lo, m);
            hi = bsk_nn_max(hi, m);
        }
    }
    if (a->Q) {
        /* pass 4: uint8 codes, as bsk_nn_quant_block with the range known */
        bsk_v16f s, z;
        bsk_nn_qparams16(lo, hi, &s, &z);
        bsk_nn_quant_codes(y, F, N, full, cnt, mul, s, z, a->Q + n0);
        bsk_nn_qstore_params(s, z, cnt, a->q_scale + n0, a->q_zero + n0);
    }
}

static void BSK_NN_FN(layernorm_blocks)(const bsk_nn_tok_args *a, int64_t b0, int64_t b1)
{
    for (int64_t blk = b0; blk < b1; blk++) {
        const int64_t n0 = blk * 16;
        if (a->tokens - n0 >= 16)
            BSK_NN_FN(layernorm_block)(a, n0, 1, 16);
        else
            BSK_NN_FN(layernorm_block)(a, n0, 0, (int)(a->tokens - n0));
    }
}

static void BSK_NN_FN(quantize_blocks)(const bsk_nn_tok_args *a, int64_t b0, int64_t b1)
{
    const int64_t F = a->features, N = a->tokens;
    for (int64_t blk = b0; blk < b1; blk++) {
        const int64_t n0 = blk * 16;
        if (N - n0 >= 16)
            bsk_nn_quant_block(a->X + n0, F, N, 1, 16, a->q_mul, a->Q + n0, a->q_scale + n0,
                               a->q_zero + n0);
        else
            bsk_nn_quant_block(a->X + n0, F, N, 0, (int)(N - n0), a->q_mul, a->Q + n0,
                               a->q_scale + n0, a->q_zero + n0);
    }
}

static void BSK_NN_FN(bias_act_rows)(const bsk_nn_tok_args *a, int64_t r0, int64_t r1)
{
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

#undef BSK_NN_FN
