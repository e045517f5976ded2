/*
 * Multi-head self-attention on (features, tokens) arrays for one
 * (sequence, head, block of queries) task, compiled once per ISA variant.
 * The including unit (src/<isa>/nn_<isa>.c) defines
 *   BSK_NN_SFX  name suffix
 *   BSK_NN_IV   vectors of queries per block (the block is VL * IV queries)
 *   BSK_NN_JB   keys per register block of the score product
 *   BSK_NN_CB   features per register block of P V
 * so that JB * IV and CB * IV accumulators stay in registers.  The vectors
 * are the unit's (bsk_vf, BSK_VL lanes: simd/vec16.h).
 *
 * The queries run along the vector lanes.  With nk attended keys (the
 * masked ones are left out), head size D and QW = VL * IV queries:
 *   K, V (D x nk, row stride ldk): the keys and values of the head, feature
 *       by feature, read in place from QKV (ldk = tokens) when every key of
 *       the sequence is attended, else gathered once into kp, vp (ldk = nk);
 *   qp (D x QW): the block's queries, zero-padded past the sequence end;
 *   st (nk x QW): scores Q^T K for the block, scaled, then softmax in
 *       place lane by lane (a query's weights run down one lane: no
 *       horizontal reductions);
 *   Y[f, queries] = (sum_j V[f, j] P[j, queries]) / rowsum, stored
 *       straight into the (hidden, tokens) output.
 * Nothing of size seq x seq is materialized beyond the block's QW columns.
 * A gathered kp, vp is reused while the same thread handles further query
 * blocks of the same (sequence, head).
 */
#define BSK_NN_FN(name) BSK_NN_CAT(name, BSK_NN_SFX)
#define BSK_NN_QW (BSK_VL * BSK_NN_IV)
_Static_assert(BSK_NN_QW <= BSK_NN_MAX_QW, "the drivers' scratch holds BSK_NN_MAX_QW queries");

/* st[j0 + u][q] = scale * sum_c K[c][j0 + u] qp[c][q], u < jb */
BSK_INLINE void BSK_NN_FN(attn_scores)(const float *K, int64_t ldk, int64_t D, int64_t j0,
                                       const int jb, const float *qp, float scale, float *st)
{
    bsk_vf acc[BSK_NN_JB][BSK_NN_IV];
#pragma GCC unroll 8
    for (int u = 0; u < jb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            acc[u][v] = (bsk_vf){0};
    const float *k = K + j0;
    for (int64_t c = 0; c < D; c++, k += ldk) {
        bsk_vf q[BSK_NN_IV];
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            q[v] = bsk_vf_load(qp + c * BSK_NN_QW + BSK_VL * v);
#pragma GCC unroll 8
        for (int u = 0; u < jb; u++) {
            const float kv = k[u];
#pragma GCC unroll 8
            for (int v = 0; v < BSK_NN_IV; v++)
                acc[u][v] += kv * q[v];
        }
    }
#pragma GCC unroll 8
    for (int u = 0; u < jb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            bsk_vf_store(st + (j0 + u) * BSK_NN_QW + BSK_VL * v, acc[u][v] * scale);
}

/* y[c0 + u][q] = inv[q] * sum_j V[c0 + u][j] st[j][q], u < cb */
BSK_INLINE void BSK_NN_FN(attn_pv)(const float *V, int64_t ldk, int64_t nk, int64_t c0,
                                   const int cb, const float *st, const bsk_vf *inv,
                                   float *y, int64_t N, int cnt)
{
    bsk_vf acc[BSK_NN_CB][BSK_NN_IV];
#pragma GCC unroll 8
    for (int u = 0; u < cb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            acc[u][v] = (bsk_vf){0};
    const float *vj = V + c0 * ldk;
    for (int64_t j = 0; j < nk; j++, vj++) {
        bsk_vf p[BSK_NN_IV];
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            p[v] = bsk_vf_load(st + j * BSK_NN_QW + BSK_VL * v);
#pragma GCC unroll 8
        for (int u = 0; u < cb; u++) {
            const float vv = vj[u * ldk];
#pragma GCC unroll 8
            for (int v = 0; v < BSK_NN_IV; v++)
                acc[u][v] += vv * p[v];
        }
    }
#pragma GCC unroll 8
    for (int u = 0; u < cb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_NN_IV; v++)
            if (BSK_VL * v < cnt)
                bsk_vf_store_part(y + (c0 + u) * N + BSK_VL * v, acc[u][v] * inv[v],
                                  (int)(cnt - BSK_VL * v));
}

/*
 * One task: sequence b, head h, queries [i0, i0 + QW) (fewer at the end).
 * ws: the thread's scratch and the (b, h) its kp, vp were packed for.
 */
static void BSK_NN_FN(attn_task)(const bsk_nn_attn_args *a, int64_t b, int64_t h, int64_t i0,
                                 bsk_nn_attn_ws *ws)
{
    const int64_t S = a->seq, D = a->head_dim, N = a->batch * a->seq;
    const int64_t hidden = a->heads * D;
    const float *qb = a->QKV + (h * D) * N + b * S;
    const float *kb = qb + hidden * N, *vb = qb + 2 * hidden * N;
    float *kp = ws->kp, *vp = ws->vp, *qp = ws->qp, *st = ws->st;

    if (ws->b != b || ws->h != h) {
        /* the attended keys of sequence b (all of them if none is) */
        const uint8_t *m = a->mask ? a->mask + b * S : NULL;
        int64_t nk = 0;
        for (int64_t j = 0; j < S; j++)
            if (!m || m[j])
                ws->keys[nk++] = j;
        ws->uniform = nk == 0;
        ws->direct = nk == 0 || nk == S;
        if (ws->direct) {
            nk = S;
        } else {
            /* gather the attended keys and values, feature by feature */
            for (int64_t c = 0; c < D; c++) {
                const float *kc = kb + c * N, *vc = vb + c * N;
                float *kr = kp + c * nk, *vr = vp + c * nk;
                for (int64_t j = 0; j < nk; j++) {
                    kr[j] = kc[ws->keys[j]];
                    vr[j] = vc[ws->keys[j]];
                }
            }
        }
        ws->nk = nk;
        ws->b = b;
        ws->h = h;
    }
    const int64_t nk = ws->nk, ldk = ws->direct ? N : nk;
    const float *K = ws->direct ? kb : kp, *V = ws->direct ? vb : vp;
    const int cnt = S - i0 < BSK_NN_QW ? (int)(S - i0) : BSK_NN_QW;

    /* the block's queries, zero-padded to QW */
    for (int64_t c = 0; c < D; c++) {
        memcpy(qp + c * BSK_NN_QW, qb + c * N + i0, (size_t)cnt * sizeof(float));
        for (int t = cnt; t < BSK_NN_QW; t++)
            qp[c * BSK_NN_QW + t] = 0.0f;
    }

    /* scores */
    if (ws->uniform) {
        memset(st, 0, (size_t)(nk * BSK_NN_QW) * sizeof(float));
    } else {
        int64_t j0 = 0;
        for (; j0 + BSK_NN_JB <= nk; j0 += BSK_NN_JB)
            BSK_NN_FN(attn_scores)(K, ldk, D, j0, BSK_NN_JB, qp, a->scale, st);
        for (; j0 < nk; j0++)
            BSK_NN_FN(attn_scores)(K, ldk, D, j0, 1, qp, a->scale, st);
    }

    /* softmax down each lane */
    bsk_vf mx[BSK_NN_IV], sum[BSK_NN_IV], inv[BSK_NN_IV];
    for (int v = 0; v < BSK_NN_IV; v++) {
        mx[v] = (bsk_vf){0} - INFINITY;
        sum[v] = (bsk_vf){0};
    }
    for (int64_t j = 0; j < nk; j++)
        for (int v = 0; v < BSK_NN_IV; v++)
            mx[v] = bsk_vf_max(mx[v], bsk_vf_load(st + j * BSK_NN_QW + BSK_VL * v));
    for (int64_t j = 0; j < nk; j++)
        for (int v = 0; v < BSK_NN_IV; v++) {
            float *s = st + j * BSK_NN_QW + BSK_VL * v;
            const bsk_vf e = bsk_vf_exp(bsk_vf_load(s) - mx[v]);
            bsk_vf_store(s, e);
            sum[v] = sum[v] + e;
        }
    for (int v = 0; v < BSK_NN_IV; v++)
        inv[v] = 1.0f / sum[v];

    /* Y = V P^T / rowsum, first into the query tile (qp is free now: one
     * contiguous D x QW block, so the accumulator stores do not stride by a
     * row of the output), then row by row into the (hidden, tokens) output */
    int64_t c0 = 0;
    for (; c0 + BSK_NN_CB <= D; c0 += BSK_NN_CB)
        BSK_NN_FN(attn_pv)(V, ldk, nk, c0, BSK_NN_CB, st, inv, qp, BSK_NN_QW, BSK_NN_QW);
    for (; c0 < D; c0++)
        BSK_NN_FN(attn_pv)(V, ldk, nk, c0, 1, st, inv, qp, BSK_NN_QW, BSK_NN_QW);
    float *y = a->Y + (h * D) * N + b * S + i0;
    for (int64_t c = 0; c < D; c++)
        memcpy(y + c * N, qp + c * BSK_NN_QW, (size_t)cnt * sizeof(float));
}

const bsk_nn_attention_kernel BSK_NN_FN(bsk_nn_attention) = {
    BSK_NN_FN(attn_task), BSK_NN_QW};

#undef BSK_NN_QW
#undef BSK_NN_FN
