/*
 * Multi-head self-attention for one (sequence, head) pair, instantiated
 * once per ISA by attention.c inside a `#pragma GCC target` region.  The
 * including file defines
 *   BSK_NN_SFX  name suffix
 *   BSK_NN_RB   query rows per register block
 *   BSK_NN_JV   16-key vectors per register block of the score product
 *   BSK_NN_DV   16-feature vectors per register block of P V
 * so that RB * JV and RB * DV accumulators (of 16 floats) stay in
 * registers.
 *
 * Work per pair, with S queries, kend keys (the last attended key + 1),
 * kp = kend rounded up to 16 and head size D (dp rounded up to 16):
 *   kt (D x kp)  = K_h transposed, zero-padded: one contiguous vector of 16
 *                  keys per feature, so the score product broadcasts a
 *                  query element and multiplies whole key vectors;
 *   vp (kend x dp) = V_h rows, zero-padded;
 *   per block of RB queries: scores (RB x kp) = Q K^T * scale + mask,
 *   softmax in place (masked keys exactly 0), Y = (P V) / rowsum(P).
 * Nothing of size S x S is materialized: the block of scores lives in a
 * small scratch row per query of the block.
 */
#define BSK_NN_FN(name) BSK_NN_CAT(name, BSK_NN_SFX)

/* sc[r][j0 .. j0 + 16 jv) = (q_r . k_j) * scale + madd[j], r < rb. */
BSK_INLINE void BSK_NN_FN(attn_scores)(const float *q, int64_t ldq, const int rb,
                                       const float *kt, int64_t kp, int64_t j0,
                                       const int jv, int64_t D, float scale,
                                       const float *madd, float *sc)
{
    bsk_v16f acc[BSK_NN_RB][BSK_NN_JV];
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 8
        for (int v = 0; v < jv; v++)
            acc[r][v] = (bsk_v16f){0};
    const float *kc = kt + j0;
    for (int64_t c = 0; c < D; c++, kc += kp) {
        bsk_v16f kv[BSK_NN_JV];
#pragma GCC unroll 8
        for (int v = 0; v < jv; v++)
            kv[v] = bsk_nn_load(kc + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < rb; r++) {
            const float qv = q[r * ldq + c];
#pragma GCC unroll 8
            for (int v = 0; v < jv; v++)
                acc[r][v] += qv * kv[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 8
        for (int v = 0; v < jv; v++)
            bsk_nn_store(sc + r * kp + j0 + 16 * v,
                         acc[r][v] * scale + bsk_nn_load(madd + j0 + 16 * v));
}

/* Softmax of one score row in place (unnormalized); returns 1 / sum. */
BSK_INLINE float BSK_NN_FN(attn_softmax)(float *s, int64_t kp)
{
    bsk_v16f vm = (bsk_v16f){0} - INFINITY;
    for (int64_t j = 0; j < kp; j += 16) {
        const bsk_v16f v = bsk_nn_load(s + j);
        vm = bsk_select(v > vm, v, vm);
    }
    const float m = bsk_nn_hmax(vm);
    bsk_v16f vs = (bsk_v16f){0};
    for (int64_t j = 0; j < kp; j += 16) {
        const bsk_v16f v = bsk_nn_load(s + j);
        bsk_v16f e = bsk_nn_exp16(v - m);
        e = bsk_select(v > -INFINITY, e, (bsk_v16f){0}); /* masked keys: exactly 0 */
        bsk_nn_store(s + j, e);
        vs = vs + e;
    }
    return 1.0f / bsk_nn_hsum(vs);
}

/* y_r[16 c0 .. 16 (c0 + dv)) = inv_r * sum_j p_r[j] v_j, r < rb. */
BSK_INLINE void BSK_NN_FN(attn_pv)(const float *p, int64_t kp, const int rb,
                                   const float *vp, int64_t dp, int64_t kend,
                                   int64_t c0, const int dv, const float *inv,
                                   float *y, int64_t ldy, int64_t D)
{
    bsk_v16f acc[BSK_NN_RB][BSK_NN_DV];
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 8
        for (int v = 0; v < dv; v++)
            acc[r][v] = (bsk_v16f){0};
    const float *vj = vp + 16 * c0;
    for (int64_t j = 0; j < kend; j++, vj += dp) {
        bsk_v16f x[BSK_NN_DV];
#pragma GCC unroll 8
        for (int v = 0; v < dv; v++)
            x[v] = bsk_nn_load(vj + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < rb; r++) {
            const float pr = p[r * kp + j];
#pragma GCC unroll 8
            for (int v = 0; v < dv; v++)
                acc[r][v] += pr * x[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rb; r++)
#pragma GCC unroll 8
        for (int v = 0; v < dv; v++) {
            const int64_t c = 16 * (c0 + v);
            bsk_nn_store_part(y + r * ldy + c, acc[r][v] * inv[r], D - c);
        }
}

static void BSK_NN_FN(attn_pair)(const bsk_nn_attn_args *a, int64_t b, int64_t h,
                                 float *scratch)
{
    const int64_t S = a->seq, D = a->head_dim, hidden = a->heads * D, ldq = a->ldqkv;
    const int64_t dp = (D + 15) / 16 * 16;
    const float *qb = a->QKV + b * S * ldq + h * D;
    const float *kb = qb + hidden, *vb = qb + 2 * hidden;
    const uint8_t *m = a->mask ? a->mask + b * S : NULL;
    float *yb = a->Y + b * S * a->ldy + h * D;

    /* keys past the last attended one are skipped altogether */
    int64_t kend = S;
    int uniform = 0;
    if (m) {
        kend = 0;
        for (int64_t j = 0; j < S; j++)
            if (m[j])
                kend = j + 1;
        if (kend == 0) {
            uniform = 1;
            kend = S;
        }
    }
    const int64_t kp = (kend + 15) / 16 * 16;
    float *kt = scratch;
    float *vp = kt + D * a->kp_max;
    float *sc = vp + a->seq * dp;
    float *madd = sc + BSK_NN_RB * a->kp_max;
    float inv[BSK_NN_RB];

    for (int64_t j = 0; j < kp; j++)
        madd[j] = j < kend && (uniform || !m || m[j]) ? 0.0f : -INFINITY;
    for (int64_t c = 0; c < D; c++) {
        float *row = kt + c * kp;
        for (int64_t j = 0; j < kend; j++)
            row[j] = kb[j * ldq + c];
        for (int64_t j = kend; j < kp; j++)
            row[j] = 0.0f;
    }
    for (int64_t j = 0; j < kend; j++) {
        memcpy(vp + j * dp, vb + j * ldq, (size_t)D * sizeof(float));
        for (int64_t c = D; c < dp; c++)
            vp[j * dp + c] = 0.0f;
    }

    for (int64_t i0 = 0; i0 < S; i0 += BSK_NN_RB) {
        const int rb = S - i0 >= BSK_NN_RB ? BSK_NN_RB : (int)(S - i0);
        const float *q = qb + i0 * ldq;
        if (uniform) {
            /* equal scores: 0 for the keys, -inf for the padding to kp */
            for (int r = 0; r < rb; r++)
                memcpy(sc + r * kp, madd, (size_t)kp * sizeof(float));
        } else if (rb == BSK_NN_RB) {
            int64_t j0 = 0;
            for (; j0 + 16 * BSK_NN_JV <= kp; j0 += 16 * BSK_NN_JV)
                BSK_NN_FN(attn_scores)(q, ldq, BSK_NN_RB, kt, kp, j0, BSK_NN_JV, D,
                                       a->scale, madd, sc);
            for (; j0 < kp; j0 += 16)
                BSK_NN_FN(attn_scores)(q, ldq, BSK_NN_RB, kt, kp, j0, 1, D, a->scale,
                                       madd, sc);
        } else {
            for (int r = 0; r < rb; r++) {
                int64_t j0 = 0;
                for (; j0 + 16 * BSK_NN_JV <= kp; j0 += 16 * BSK_NN_JV)
                    BSK_NN_FN(attn_scores)(q + r * ldq, ldq, 1, kt, kp, j0, BSK_NN_JV,
                                           D, a->scale, madd, sc + r * kp);
                for (; j0 < kp; j0 += 16)
                    BSK_NN_FN(attn_scores)(q + r * ldq, ldq, 1, kt, kp, j0, 1, D,
                                           a->scale, madd, sc + r * kp);
            }
        }
        for (int r = 0; r < rb; r++)
            inv[r] = BSK_NN_FN(attn_softmax)(sc + r * kp, kp);

        float *y = yb + i0 * a->ldy;
        const int64_t nv = dp / 16;
        if (rb == BSK_NN_RB) {
            int64_t c0 = 0;
            for (; c0 + BSK_NN_DV <= nv; c0 += BSK_NN_DV)
                BSK_NN_FN(attn_pv)(sc, kp, BSK_NN_RB, vp, dp, kend, c0, BSK_NN_DV, inv, y,
                                   a->ldy, D);
            for (; c0 + 2 <= nv && BSK_NN_DV > 2; c0 += 2)
                BSK_NN_FN(attn_pv)(sc, kp, BSK_NN_RB, vp, dp, kend, c0, 2, inv, y, a->ldy,
                                   D);
            for (; c0 < nv; c0++)
                BSK_NN_FN(attn_pv)(sc, kp, BSK_NN_RB, vp, dp, kend, c0, 1, inv, y, a->ldy,
                                   D);
        } else {
            for (int r = 0; r < rb; r++) {
                int64_t c0 = 0;
                for (; c0 + BSK_NN_DV <= nv; c0 += BSK_NN_DV)
                    BSK_NN_FN(attn_pv)(sc + r * kp, kp, 1, vp, dp, kend, c0, BSK_NN_DV,
                                       inv + r, y + r * a->ldy, a->ldy, D);
                for (; c0 < nv; c0++)
                    BSK_NN_FN(attn_pv)(sc + r * kp, kp, 1, vp, dp, kend, c0, 1, inv + r,
                                       y + r * a->ldy, a->ldy, D);
            }
        }
    }
}

static void BSK_NN_FN(attn_quant_rows)(const bsk_nn_attn_args *a, int64_t r0, int64_t r1)
{
    const int64_t hidden = a->heads * a->head_dim;
    for (int64_t r = r0; r < r1; r++)
        bsk_nn_quant_row(a->Y + r * a->ldy, NULL, hidden, a->Q + r * a->ldq, a->q_scale + r,
                         a->q_zero + r);
}

#undef BSK_NN_FN
