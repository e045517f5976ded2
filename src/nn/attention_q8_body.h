/*
 * INT8 multi-head self-attention (bsk_attention_q8 in bsk_nn.h), compiled
 * once per ISA variant with -ffp-contract=off: the integer products are
 * exact and every float step is an IEEE + - * / in a fixed order, so all
 * variants give the same bits.  The including unit (src/<isa>/attn_q8_<isa>.c)
 * defines
 *   BSK_AQ_SFX           name suffix
 *   AQ_X, AQ_XLOAD(p)    64 bytes of uint8 codes at p (16 lanes of four),
 *                        loaded and made ready for AQ_DOT
 *   AQ_W, AQ_WPREP(w)    an int32 holding four int8 codes, broadcast
 *   AQ_ACC, AQ_ACC_ZERO() 16 int32 accumulators in the unit's registers, and
 *   AQ_ACC_PART(acc, k)  their k-th vector of BSK_VL lanes, a bsk_vi (for the
 *                        float steps, which run on the unit's vectors: vec16.h)
 *   AQ_DOT(acc, x, w)    acc + per lane the four u8 x s8 products, exact
 *   BSK_AQ_IV            16-query vectors per block (the block is 16 * IV queries)
 *   BSK_AQ_JB, BSK_AQ_CB keys per register block of the scores, features per
 *                        register block of P V (2 * CB * IV accumulators)
 *
 * Phase A (quant_tokens, quant_values) quantizes Q, K and V into the shared
 * arrays of bsk_nn_aq_args.  Phase B, one task per (sequence b, head h,
 * block of QW = 16 * IV queries), runs with the queries along the vector
 * lanes, as the float kernel (attention_body.h) does:
 *   scores  acc[key][queries] = sum over the K-groups g of
 *           vpdpbusd(Q codes of the block at group g, K codes of the key at
 *           g broadcast): both read in place from the VNNI-layout arrays;
 *           s = (float)(acc - q_zero * k_sum) * (q_scale * (k_scale *
 *           (scale * log2(e)))), the scores in base 2;
 *   softmax 16-bit codes p = rint(65535 * 2^(s - max)) down each lane
 *           (bsk_aq_p_code) and their sum; the high and low bytes of p are
 *           packed four keys at a time into two planes of the VNNI layout pp;
 *   P V     hi, lo[feature][queries] = sum over key groups of vpdpbusd(the
 *           plane at the group, the feature's four V codes broadcast: four
 *           adjacent bytes of its row), both exact in int32;
 *           y = (256 * (float)hi + (float)lo) * (v_scale * (1 / sum)).
 * Masked keys are skipped in the scores; P V runs over the keys from the
 * first to the last attended one, with code 0 for the masked ones between.
 */
#define AQ_FN(name) BSK_NN_CAT(name, BSK_AQ_SFX)
#define AQ_QW (16 * BSK_AQ_IV)
#define AQ_PER (16 / BSK_VL)   /* the unit's vectors per 16-query vector */
#define AQ_NF (AQ_QW / BSK_VL) /* the unit's vectors per block */
_Static_assert(AQ_QW <= BSK_NN_MAX_QW, "the drivers' scratch holds BSK_NN_MAX_QW queries");

#ifndef BSK_AQ_HELPERS
#define BSK_AQ_HELPERS
#include "simd/interleave.h"

/* The int8 code of v, a value already divided by its scale:
 * clip(rint(v), -127, 127) (NaN gives -127).  No clamp before the rounding
 * is needed: past 2^22 the rounding is off by at most 1, or v itself, and the
 * clip takes such values (and infinities) to +-127. */
BSK_INLINE bsk_vi bsk_aq_s8_code(bsk_vf v)
{
    v = bsk_vf_rint(v);
    v = bsk_vf_max(v, (bsk_vf){0} - 127.0f);
    v = bsk_vf_min(v, (bsk_vf){0} + 127.0f);
    return __builtin_convertvector(v, bsk_vi);
}

/* The symmetric scale of a maximum magnitude: amax / 127, or 1 if that is
 * not positive. */
BSK_INLINE bsk_vf bsk_aq_s8_scale(bsk_vf amax)
{
    const bsk_vf s = amax / 127.0f;
    return bsk_vf_select(s > 0.0f, s, (bsk_vf){0} + 1.0f);
}

/*
 * The probability code of x = (s - max) * log2(e) <= 0: rint(65535 * 2^x),
 * by x = n + f (n = rint(x), |f| <= 1/2), a degree-5 polynomial for
 * 65535 * 2^f (0.012 of a code unit, float32 rounding included) and 2^n put
 * into the exponent bits.  x = 0 (the maximum) gives 65535, the polynomial's
 * largest value for f <= 0; below -17 the code is 0, and x is clamped at -24
 * (NaN too) to keep 2^n a normal float.
 */
BSK_INLINE bsk_vi bsk_aq_p_code(bsk_vf x)
{
    x = bsk_vf_max(x, (bsk_vf){0} - 24.0f);
    const bsk_vf n = bsk_vf_rint(x), f = x - n;
    bsk_vf p = (bsk_vf){0} + 87.00701141357422f;
    p = p * f + 634.08544921875f;
    p = p * f + 3637.659912109375f;
    p = p * f + 15742.896484375f;
    p = p * f + 45425.38671875f;
    p = p * f + 65535.00390625f;
    const bsk_vi e = (__builtin_convertvector(n, bsk_vi) + 127) << 23;
    return __builtin_convertvector(bsk_vf_rint(p * (bsk_vf)e), bsk_vi);
}

/* The 16 bytes of a 16-query vector from its AQ_PER parts. */
BSK_INLINE bsk_v16b bsk_aq_bytes_join(const bsk_vb *part)
{
#if BSK_VL == 8
    return __builtin_shufflevector(part[0], part[1], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                   13, 14, 15);
#else
    return part[0];
#endif
}

/* Four rows of 16 codes -> 64 bytes in the VNNI layout (simd/interleave.h). */
BSK_INLINE void bsk_aq_interleave(const bsk_v16b r[4], uint8_t *dst)
{
#ifdef __SSE2__
    bsk_interleave4x16((__m128i)r[0], (__m128i)r[1], (__m128i)r[2], (__m128i)r[3], dst);
#else
    for (int t = 0; t < 16; t++)
        for (int i = 0; i < 4; i++)
            dst[4 * t + i] = r[i][t];
#endif
}

BSK_INLINE int32_t bsk_aq_group(const int8_t *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* Lanes of vector v (of `width` lanes) of a block with cnt queries that are real. */
BSK_INLINE int bsk_aq_lanes(int cnt, int v, int width)
{
    const int c = cnt - width * v;
    return c < 0 ? 0 : c < width ? c : width;
}
#endif /* BSK_AQ_HELPERS */

/* ---- phase A ------------------------------------------------------------------- */

/* Codes of rows [4g, 4g + 4) (zeros past D) of X (row stride N), tokens
 * [0, Tv) of which the first T are real, interleaved into dst (4 bytes per
 * token): x * r rounded, with the per-token reciprocal scales r; kind 0:
 * uint8 with zero points z; kind 1: int8, whose sums are added to ksum. */
BSK_INLINE void AQ_FN(codes_group)(const float *X, int64_t N, int64_t D, int64_t g,
                                   int64_t T, int64_t Tv, const float *s, const float *z,
                                   int32_t *ksum, uint8_t *dst, const int kind)
{
    for (int64_t t = 0; t < Tv; t += 16) {
        const int full = t + 16 <= T;
        const int64_t cnt = T - t;
        bsk_v16b r[4];
        for (int i = 0; i < 4; i++) {
            const int64_t c = 4 * g + i;
            if (c >= D) {
                r[i] = (bsk_v16b){0};
                continue;
            }
            bsk_vb part[AQ_PER];
            for (int k = 0; k < AQ_PER; k++) {
                const int64_t at = t + BSK_VL * k;
                const int left = full ? BSK_VL : bsk_aq_lanes((int)cnt, k, BSK_VL);
                const bsk_vf v = bsk_vf_load_part(X + c * N + at, left) * bsk_vf_load(s + at);
                if (kind == 0) {
                    part[k] = bsk_vf_bytes(bsk_vf_u8_code(v, bsk_vf_load(z + at)));
                } else {
                    const bsk_vi code = bsk_aq_s8_code(v);
                    *(bsk_vi_u *)(ksum + at) += code;
                    part[k] = bsk_vi_low_bytes(code);
                }
            }
            r[i] = bsk_aq_bytes_join(part);
        }
        bsk_aq_interleave(r, dst + 4 * t);
    }
}

/*
 * Q and K of every head for the tokens [n0, n1) (whole 16-token blocks of
 * the Np-long rows), in chunks of BSK_AQ_CHUNK tokens: per head, one pass
 * over the rows for the per-token ranges (bsk_nn_range_rows), then one per
 * group of four rows for the codes.  Q's parameters and codes are those of
 * the per-token activation quantization (bsk_nn_params_rows,
 * bsk_vf_u8_code).  With a->keys_only, K's only.  ws: 5 * BSK_AQ_CHUNK floats.
 */
static void AQ_FN(quant_tokens)(const bsk_nn_aq_args *a, int64_t n0, int64_t n1, float *ws)
{
    const int64_t D = a->head_dim, G = a->groups, Np = a->ld, N = a->batch * a->seq;
    const int64_t H = a->heads * D, ldx = a->ldx;
    float *lo = ws, *hi = ws + BSK_AQ_CHUNK, *s = ws + 2 * BSK_AQ_CHUNK,
          *z = ws + 3 * BSK_AQ_CHUNK;
    int32_t *ksum = (int32_t *)(ws + 4 * BSK_AQ_CHUNK);
    for (int64_t c0 = n0; c0 < n1; c0 += BSK_AQ_CHUNK) {
        const int64_t c1 = n1 - c0 < BSK_AQ_CHUNK ? n1 : c0 + BSK_AQ_CHUNK;
        const int64_t Tv = c1 - c0, T = (c1 < N ? c1 : N) - c0;
        for (int64_t h = 0; h < a->heads; h++) {
            const int64_t p = h * Np + c0;
            const float *X;
            if (!a->keys_only) {
                /* queries: uint8, asymmetric per token */
                X = a->QKV + h * D * ldx + (c0 - a->x0);
                bsk_nn_range_rows(X, D, ldx, T, NULL, lo, hi);
                for (int64_t t = T; t < Tv; t++)
                    lo[t] = hi[t] = 0.0f;
                bsk_nn_params_rows(T, Tv, lo, hi, s, z, a->q_scale + p, a->q_zero + p);
                for (int64_t t = 0; t < Tv; t += BSK_VL)
                    bsk_vf_store(s + t, 1.0f / bsk_vf_load(s + t));
                for (int64_t g = 0; g < G; g++)
                    AQ_FN(codes_group)(X, ldx, D, g, T, Tv, s, z, NULL,
                                       a->qv + ((h * G + g) * Np + c0) * 4, 0);
            }
            /* keys: int8, symmetric per token */
            X = a->QKV + (H + h * D) * ldx + (c0 - a->x0);
            bsk_nn_range_rows(X, D, ldx, T, NULL, lo, hi);
            for (int64_t t = T; t < Tv; t++)
                lo[t] = hi[t] = 0.0f;
            for (int64_t t = 0; t < Tv; t += BSK_VL) {
                const bsk_vf l = bsk_vf_load(lo + t), u = bsk_vf_load(hi + t);
                const bsk_vf sk = bsk_aq_s8_scale(bsk_vf_max(0.0f - l, u));
                bsk_vf_store(z + t, sk);
                bsk_vf_store(s + t, 1.0f / sk);
                *(bsk_vi_u *)(ksum + t) = (bsk_vi){0};
            }
            for (int64_t g = 0; g < G; g++)
                AQ_FN(codes_group)(X, ldx, D, g, T, Tv, s, NULL, ksum,
                                   (uint8_t *)a->kv + ((h * G + g) * Np + c0) * 4, 1);
            memcpy(a->k_scale + p, z, (size_t)T * sizeof(float));
            memcpy(a->k_sum + p, ksum, (size_t)T * sizeof(int32_t));
        }
    }
}

/*
 * V, int8 symmetric per (feature, sequence): the scale from the sequence's
 * attended keys (all keys of a sequence that attends to none), the codes of
 * all its tokens.  The pieces work on the positions [p0, p1) of sequence b,
 * so that a driver can split one sequence's keys over threads: maxima merge
 * exactly in any order.
 */

/* V row f's feature of the positions [p0, p1) of sequence b. */
BSK_INLINE const float *AQ_FN(v_row)(const bsk_nn_aq_args *a, int64_t b, int64_t f, int64_t p0)
{
    const int64_t H = a->heads * a->head_dim;
    return a->QKV + (2 * H + f) * a->ldx + (b * a->seq + p0 - a->x0);
}

/* max |v| over the attended positions [p0, p1) of sequence b, V row f. */
static float AQ_FN(values_amax)(const bsk_nn_aq_args *a, int64_t b, int64_t f, int64_t p0,
                                int64_t p1)
{
    const float *v = AQ_FN(v_row)(a, b, f, p0);
    const uint8_t *m = a->mask && a->any[b] ? a->mask + b * a->seq + p0 : NULL;
    bsk_vf amax = (bsk_vf){0};
    for (int64_t n = 0; n < p1 - p0; n += BSK_VL) {
        const int cnt = p1 - p0 - n < BSK_VL ? (int)(p1 - p0 - n) : BSK_VL;
        bsk_vf x = bsk_vf_load_part(v + n, cnt);
        x = (bsk_vf)((bsk_vi)x & 0x7fffffff);
        if (m) {
            uint8_t mb[BSK_VL] = {0};
            memcpy(mb, m + n, (size_t)cnt);
            bsk_vi keep;
            for (int i = 0; i < BSK_VL; i++)
                keep[i] = mb[i] ? -1 : 0;
            x = (bsk_vf)((bsk_vi)x & keep);
        }
        amax = bsk_vf_max(x, amax); /* x > amax ? x : amax: NaN lanes are skipped */
    }
    float r = 0.0f;
    for (int i = 0; i < BSK_VL; i++)
        r = amax[i] > r ? amax[i] : r;
    return r;
}

/* The scale of V row f of sequence b from its maximum (stored), and the codes
 * of the positions [p0, p1); the last sequence's owner of the row's end also
 * clears the row's padding, which P V may read (times 0). */
static void AQ_FN(values_codes)(const bsk_nn_aq_args *a, int64_t b, int64_t f, int64_t p0,
                                int64_t p1, float amax)
{
    const int64_t S = a->seq, H = a->heads * a->head_dim, N = a->batch * S;
    const bsk_vf sv = bsk_aq_s8_scale((bsk_vf){0} + amax), rv = 1.0f / sv;
    if (p0 == 0)
        a->v_scale[b * H + f] = sv[0];
    const float *v = AQ_FN(v_row)(a, b, f, p0);
    int8_t *dst = a->vc + f * a->ld + b * S + p0;
    for (int64_t n = 0; n < p1 - p0; n += BSK_VL) {
        const int cnt = p1 - p0 - n < BSK_VL ? (int)(p1 - p0 - n) : BSK_VL;
        const bsk_vb code = bsk_vi_low_bytes(bsk_aq_s8_code(bsk_vf_load_part(v + n, cnt) * rv));
        bsk_vb_store_part((uint8_t *)dst + n, code, cnt);
    }
    if (b == a->batch - 1 && p1 == S)
        memset(a->vc + f * a->ld + N, 0, (size_t)(a->ld - N));
}

/* V codes of the items [r0, r1), item r = b * hidden + f, whole sequences. */
static void AQ_FN(quant_values)(const bsk_nn_aq_args *a, int64_t r0, int64_t r1)
{
    const int64_t S = a->seq, H = a->heads * a->head_dim;
    for (int64_t r = r0; r < r1; r++)
        AQ_FN(values_codes)(a, r / H, r % H, 0, S, AQ_FN(values_amax)(a, r / H, r % H, 0, S));
}

/* ---- phase B ------------------------------------------------------------------- */

/*
 * Scores of the jb keys kn[0 .. jb) (token indices) against the block's
 * queries: st[u][queries] and the running maxima mx.  qb: the block's Q codes
 * at group 0, kb: head h's K codes at group 0 (token 0), ldg: bytes between
 * groups.
 */
BSK_INLINE void AQ_FN(scores)(const bsk_nn_aq_args *a, const uint8_t *qb, const int8_t *kb,
                              int64_t ldg, const int64_t *kn, const int jb, const bsk_vi *zq,
                              const bsk_vf *sq, int64_t h, float *st, bsk_vf *mx,
                              int32_t *trace, int64_t trace_ld, int cnt)
{
    AQ_ACC acc[BSK_AQ_JB][BSK_AQ_IV];
#pragma GCC unroll 8
    for (int u = 0; u < jb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_AQ_IV; v++)
            acc[u][v] = AQ_ACC_ZERO();
    const int64_t G = a->groups;
    for (int64_t g = 0; g < G; g++) {
        AQ_X x[BSK_AQ_IV];
#pragma GCC unroll 8
        for (int v = 0; v < BSK_AQ_IV; v++)
            x[v] = AQ_XLOAD(qb + g * ldg + 64 * v);
#pragma GCC unroll 8
        for (int u = 0; u < jb; u++) {
            const AQ_W w = AQ_WPREP(bsk_aq_group(kb + g * ldg + kn[u] * 4));
#pragma GCC unroll 8
            for (int v = 0; v < BSK_AQ_IV; v++)
                acc[u][v] = AQ_DOT(acc[u][v], x[v], w);
        }
    }
    const int64_t Np = a->ld;
#pragma GCC unroll 8
    for (int u = 0; u < jb; u++) {
        const uint32_t ks = (uint32_t)a->k_sum[h * Np + kn[u]];
        const float kscale = a->k_scale[h * Np + kn[u]] * a->scale_log2e;
#pragma GCC unroll 8
        for (int f = 0; f < AQ_NF; f++) {
            /* exact: the true value fits in int32, the wrap-around cancels */
            const bsk_vi ci = (bsk_vi)((bsk_vu)AQ_ACC_PART(acc[u][f / AQ_PER], f % AQ_PER) -
                                       (bsk_vu)zq[f] * ks);
            const bsk_vf s = __builtin_convertvector(ci, bsk_vf) * (sq[f] * kscale);
            bsk_vf_store(st + u * AQ_QW + BSK_VL * f, s);
            mx[f] = bsk_vf_max(mx[f], s);
            if (trace)
                for (int q = 0; q < bsk_aq_lanes(cnt, f, BSK_VL); q++)
                    trace[(BSK_VL * f + q) * trace_ld + u] = ci[q];
        }
    }
}

/* y[c0 + u][queries] = (256 hi + lo) * (vs[u] * rinv), u < cb, where hi (lo)
 * = sum_g (high (low) byte plane of pp at group g) . V[c0 + u][4g ..]; vb: the
 * V codes of feature c0 at the sequence's first key of the range.  Each group
 * of pp is its high plane (QW x 4 bytes) then its low plane. */
BSK_INLINE void AQ_FN(pv)(const uint8_t *pp, int64_t gp, const int8_t *vb, int64_t ldv,
                          const int cb, const float *vs, const bsk_vf *rinv, float *y,
                          int32_t *trace_hi, int32_t *trace_lo, int64_t trace_ld, int cnt)
{
    AQ_ACC hi[BSK_AQ_CB][BSK_AQ_IV], lo[BSK_AQ_CB][BSK_AQ_IV];
#pragma GCC unroll 8
    for (int u = 0; u < cb; u++)
#pragma GCC unroll 8
        for (int v = 0; v < BSK_AQ_IV; v++) {
            hi[u][v] = AQ_ACC_ZERO();
            lo[u][v] = AQ_ACC_ZERO();
        }
    /* one plane's vector live at a time (16 accumulators, 2 broadcasts and a
     * vector on AVX-512).  GCC 12 still copies every accumulator around its
     * vpdpbusd here (named variables, one array, an out-of-line kernel: the
     * same), which the scores loop does not; kernels.rst records it. */
    for (int64_t g = 0; g < gp; g++) {
        AQ_W w[BSK_AQ_CB];
#pragma GCC unroll 8
        for (int u = 0; u < cb; u++)
            w[u] = AQ_WPREP(bsk_aq_group(vb + u * ldv + 4 * g));
        const uint8_t *ph = pp + 2 * g * AQ_QW * 4, *pl = ph + AQ_QW * 4;
#pragma GCC unroll 8
        for (int v = 0; v < BSK_AQ_IV; v++) {
            const AQ_X x = AQ_XLOAD(ph + 64 * v);
#pragma GCC unroll 8
            for (int u = 0; u < cb; u++)
                hi[u][v] = AQ_DOT(hi[u][v], x, w[u]);
        }
#pragma GCC unroll 8
        for (int v = 0; v < BSK_AQ_IV; v++) {
            const AQ_X x = AQ_XLOAD(pl + 64 * v);
#pragma GCC unroll 8
            for (int u = 0; u < cb; u++)
                lo[u][v] = AQ_DOT(lo[u][v], x, w[u]);
        }
    }
#pragma GCC unroll 8
    for (int u = 0; u < cb; u++)
#pragma GCC unroll 8
        for (int f = 0; f < AQ_NF; f++) {
            const bsk_vi h = AQ_ACC_PART(hi[u][f / AQ_PER], f % AQ_PER);
            const bsk_vi l = AQ_ACC_PART(lo[u][f / AQ_PER], f % AQ_PER);
            const bsk_vf sum = __builtin_convertvector(h, bsk_vf) * 256.0f +
                               __builtin_convertvector(l, bsk_vf);
            bsk_vf_store(y + u * AQ_QW + BSK_VL * f, sum * (vs[u] * rinv[f]));
            if (trace_hi) {
                memcpy(trace_hi + u * trace_ld + BSK_VL * f, &h,
                       (size_t)bsk_aq_lanes(cnt, f, BSK_VL) * sizeof(int32_t));
                memcpy(trace_lo + u * trace_ld + BSK_VL * f, &l,
                       (size_t)bsk_aq_lanes(cnt, f, BSK_VL) * sizeof(int32_t));
            }
        }
}

/* The attended keys of sequence b and the position -> row map of its key range. */
static void AQ_FN(keys)(const bsk_nn_aq_args *a, int64_t b, bsk_nn_aq_ws *ws)
{
    const int64_t S = a->seq;
    const uint8_t *m = a->mask ? a->mask + b * S : NULL;
    ws->uniform = m && !a->any[b];
    int64_t nk = 0;
    for (int64_t j = 0; j < S; j++)
        if (!m || ws->uniform || m[j])
            ws->keys[nk++] = (int32_t)j;
    ws->nk = nk;
    ws->lo = ws->keys[0];
    ws->hi = ws->keys[nk - 1] + 1;
    for (int64_t p = 0; p < ws->hi - ws->lo; p++)
        ws->row[p] = -1;
    for (int64_t t = 0; t < nk; t++)
        ws->row[ws->keys[t] - ws->lo] = (int32_t)t;
    ws->b = b;
}

/* One task: sequence b, head h, queries [i0, i0 + QW) (fewer at the end). */
static void AQ_FN(task)(const bsk_nn_aq_args *a, int64_t b, int64_t h, int64_t i0,
                        bsk_nn_aq_ws *ws)
{
    const int64_t S = a->seq, D = a->head_dim, G = a->groups, Np = a->ld;
    const int64_t N = a->batch * S, H = a->heads * D, ldg = Np * 4;
    if (ws->b != b)
        AQ_FN(keys)(a, b, ws);
    const int64_t nk = ws->nk, lo = ws->lo, span = ws->hi - ws->lo, gp = (span + 3) / 4;
    const int cnt = S - i0 < AQ_QW ? (int)(S - i0) : AQ_QW;
    const int64_t n0 = b * S + i0;
    const bsk_attn_q8_trace *tr = a->trace;
    const int64_t tq = ((b * a->heads + h) * S + i0) * S; /* trace: (query i0, key 0) */
    float *st = ws->st;

    /* the block's query parameters, zero in the lanes past cnt */
    bsk_vi zq[AQ_NF];
    bsk_vf sq[AQ_NF], mx[AQ_NF];
    for (int f = 0; f < AQ_NF; f++) {
        const int lanes = bsk_aq_lanes(cnt, f, BSK_VL);
        zq[f] = bsk_vi_load_part(a->q_zero + h * Np + n0 + BSK_VL * f, lanes);
        sq[f] = bsk_vf_load_part(a->q_scale + h * Np + n0 + BSK_VL * f, lanes);
        mx[f] = ws->uniform ? (bsk_vf){0} : (bsk_vf){0} - INFINITY;
    }

    /* scores */
    if (ws->uniform) {
        memset(st, 0, (size_t)(nk * AQ_QW) * sizeof(float));
    } else {
        const uint8_t *qb = a->qv + (h * G * Np + n0) * 4;
        const int8_t *kb = a->kv + h * G * Np * 4;
        int64_t kn[BSK_AQ_JB];
        int64_t j0 = 0;
        for (; j0 < nk; j0 += BSK_AQ_JB) {
            const int jb = nk - j0 < BSK_AQ_JB ? (int)(nk - j0) : BSK_AQ_JB;
            for (int u = 0; u < jb; u++)
                kn[u] = b * S + ws->keys[j0 + u];
            int32_t *trace = tr && tr->scores ? tr->scores + tq + ws->keys[j0] : NULL;
            if (jb == BSK_AQ_JB && (!trace || ws->keys[j0 + jb - 1] - ws->keys[j0] == jb - 1))
                AQ_FN(scores)(a, qb, kb, ldg, kn, BSK_AQ_JB, zq, sq, h, st + j0 * AQ_QW, mx,
                              trace, S, cnt);
            else /* a partial block, or keys with holes between them (traced) */
                for (int u = 0; u < jb; u++)
                    AQ_FN(scores)(a, qb, kb, ldg, kn + u, 1, zq, sq, h, st + (j0 + u) * AQ_QW,
                                  mx, tr && tr->scores ? tr->scores + tq + ws->keys[j0 + u] : NULL,
                                  S, cnt);
        }
    }

    /* softmax down each lane into 16-bit probability codes, their high and low
     * bytes four keys at a time into the two planes of pp */
    bsk_vi psum[AQ_NF];
    for (int f = 0; f < AQ_NF; f++)
        psum[f] = (bsk_vi){0};
    for (int64_t g = 0; g < gp; g++)
        for (int v = 0; v < BSK_AQ_IV; v++) {
            bsk_v16b rh[4], rl[4];
            for (int i = 0; i < 4; i++) {
                const int64_t p = 4 * g + i;
                const int32_t t = p < span ? ws->row[p] : -1;
                bsk_vb ph[AQ_PER], pl[AQ_PER];
                for (int k = 0; k < AQ_PER; k++) {
                    const int f = AQ_PER * v + k;
                    const bsk_vi code =
                        t < 0 ? (bsk_vi){0}
                              : bsk_aq_p_code(bsk_vf_load(st + t * AQ_QW + BSK_VL * f) - mx[f]);
                    psum[f] += code;
                    ph[k] = bsk_vi_low_bytes(code >> 8);
                    pl[k] = bsk_vi_low_bytes(code);
                    if (tr && tr->p && p < span)
                        for (int q = 0; q < bsk_aq_lanes(cnt, f, BSK_VL); q++)
                            tr->p[tq + (BSK_VL * f + q) * S + lo + p] = (uint16_t)code[q];
                }
                rh[i] = bsk_aq_bytes_join(ph);
                rl[i] = bsk_aq_bytes_join(pl);
            }
            bsk_aq_interleave(rh, ws->pp + (2 * g * AQ_QW + 16 * v) * 4);
            bsk_aq_interleave(rl, ws->pp + ((2 * g + 1) * AQ_QW + 16 * v) * 4);
        }

    /* Y = V P^T / sum into the tile yt, then row by row into the output */
    bsk_vf rinv[AQ_NF];
    for (int f = 0; f < AQ_NF; f++)
        rinv[f] = 1.0f / __builtin_convertvector(psum[f], bsk_vf);
    const int8_t *vb = a->vc + h * D * Np + b * S + lo;
    const float *vs = a->v_scale + b * H + h * D;
    int32_t *th = tr && tr->pv_hi && tr->pv_lo ? tr->pv_hi + h * D * N + n0 : NULL;
    int32_t *tl = th ? tr->pv_lo + h * D * N + n0 : NULL;
    int64_t c0 = 0;
    for (; c0 + BSK_AQ_CB <= D; c0 += BSK_AQ_CB)
        AQ_FN(pv)(ws->pp, gp, vb + c0 * Np, Np, BSK_AQ_CB, vs + c0, rinv, ws->yt + c0 * AQ_QW,
                  th ? th + c0 * N : NULL, tl ? tl + c0 * N : NULL, N, cnt);
    for (; c0 < D; c0++)
        AQ_FN(pv)(ws->pp, gp, vb + c0 * Np, Np, 1, vs + c0, rinv, ws->yt + c0 * AQ_QW,
                  th ? th + c0 * N : NULL, tl ? tl + c0 * N : NULL, N, cnt);
    float *y = a->Y + h * D * a->ldy + (n0 - a->y0);
    for (int64_t c = 0; c < D; c++)
        memcpy(y + c * a->ldy, ws->yt + c * AQ_QW, (size_t)cnt * sizeof(float));
    if (tr && tr->p_sum)
        for (int f = 0; f < AQ_NF; f++)
            for (int q = 0; q < bsk_aq_lanes(cnt, f, BSK_VL); q++)
                tr->p_sum[h * N + n0 + BSK_VL * f + q] = psum[f][q];
}

const bsk_nn_attention_q8_kernel BSK_NN_CAT(bsk_nn_attention_q8, BSK_AQ_SFX) = {
    AQ_FN(quant_tokens), AQ_FN(quant_values), AQ_FN(values_amax), AQ_FN(values_codes),
    AQ_FN(task), AQ_QW};

#undef AQ_QW
#undef AQ_PER
#undef AQ_NF
#undef AQ_FN
