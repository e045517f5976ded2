/*
 * Row-wise encoder kernels, instantiated once per ISA by rowwise.c inside a
 * `#pragma GCC target` region.  The including file defines BSK_NN_SFX.
 * Each function handles rows [r0, r1); the dispatcher splits the rows over
 * the threads.
 */
#define BSK_NN_FN(name) BSK_NN_CAT(name, BSK_NN_SFX)

/* Y = LayerNorm(X + Res) * gamma + beta; optional per-row uint8 copy. */
static void BSK_NN_FN(add_layernorm_rows)(const bsk_nn_rows_args *a, int64_t r0, int64_t r1)
{
    const int64_t n = a->cols;
    const float inv_n = 1.0f / (float)n;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = a->X + r * a->ldx;
        const float *res = a->Res ? a->Res + r * a->ldr : NULL;
        float *y = a->Y + r * a->ldy;
        /* pass 1: t = x + res (kept in y) and its sum, taken about the
         * row's first value so that a large common offset does not eat the
         * float32 mantissa of the sum */
        const float pivot = x[0] + (res ? res[0] : 0.0f);
        bsk_v16f vs = (bsk_v16f){0};
        int64_t k = 0;
        for (; k + 16 <= n; k += 16) {
            bsk_v16f t = bsk_nn_load(x + k);
            if (res)
                t = t + bsk_nn_load(res + k);
            bsk_nn_store(y + k, t);
            vs = vs + (t - pivot);
        }
        float tail = 0.0f;
        for (; k < n; k++) {
            const float t = x[k] + (res ? res[k] : 0.0f);
            y[k] = t;
            tail += t - pivot;
        }
        /* the mean as pivot + moff: (t - pivot) - moff keeps the digits that
         * a float32 mean near a large offset would round away */
        const float moff = (bsk_nn_hsum(vs) + tail) * inv_n;
        /* pass 2: variance about the mean (two passes: no cancellation) */
        bsk_v16f vv = (bsk_v16f){0};
        for (k = 0; k + 16 <= n; k += 16) {
            const bsk_v16f d = (bsk_nn_load(y + k) - pivot) - moff;
            vv = vv + d * d;
        }
        if (k < n) {
            bsk_v16f d = (bsk_nn_load_part(y + k, n - k) - pivot) - moff;
            /* zero the lanes past the end, which hold -pivot - moff */
            bsk_v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
            d = bsk_select(lane < (int32_t)(n - k), d, (bsk_v16f){0});
            vv = vv + d * d;
        }
        const float var = bsk_nn_hsum(vv) * inv_n;
        const float rstd = 1.0f / sqrtf(var + a->eps);
        /* pass 3: normalize, scale, shift */
        for (k = 0; k < n; k += 16) {
            const int64_t c = n - k;
            bsk_v16f t = ((bsk_nn_load_part(y + k, c) - pivot) - moff) * rstd;
            t = t * bsk_nn_load_part(a->gamma + k, c) + bsk_nn_load_part(a->beta + k, c);
            bsk_nn_store_part(y + k, t, c);
        }
        if (a->Q)
            bsk_nn_quant_row(y, a->q_mul, n, a->Q + r * a->ldq, a->q_scale + r, a->q_zero + r);
    }
}

/* Y = act(Y + bias) in place. */
static void BSK_NN_FN(bias_act_rows)(const bsk_nn_rows_args *a, int64_t r0, int64_t r1)
{
    const int64_t n = a->cols;
    for (int64_t r = r0; r < r1; r++) {
        float *y = a->Y + r * a->ldy;
        for (int64_t k = 0; k < n; k += 16) {
            const int64_t c = n - k;
            bsk_v16f t = bsk_nn_load_part(y + k, c);
            if (a->bias)
                t = t + bsk_nn_load_part(a->bias + k, c);
            if (a->act == BSK_ACT_RELU)
                t = bsk_select(t > 0.0f, t, (bsk_v16f){0});
            else if (a->act == BSK_ACT_GELU)
                t = bsk_gelu16(t);
            bsk_nn_store_part(y + k, t, c);
        }
    }
}

/* Q, scale, zero = per-row dynamic uint8 quantization of X. */
static void BSK_NN_FN(quantize_rows)(const bsk_nn_rows_args *a, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; r++)
        bsk_nn_quant_row(a->X + r * a->ldx, a->q_mul, a->cols, a->Q + r * a->ldq, a->q_scale + r,
                         a->q_zero + r);
}

#undef BSK_NN_FN
