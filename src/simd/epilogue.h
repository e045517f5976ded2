/*
 * The fused INT8 epilogue (bsk_epilogue in bsk.h), applied to the int32
 * accumulators of every INT8 kernel as its tiles are stored.
 *
 * Written once on 16-lane vectors (vec16.h).  Every variant, scalar included,
 * compiles it with -ffp-contract=off, so float32 and uint8 outputs are
 * bit-identical across ISAs: only IEEE add/mul/div and int<->float
 * conversions are used, in a fixed order.
 */
#ifndef BLOCKSPARSE_EPILOGUE_H
#define BLOCKSPARSE_EPILOGUE_H

#include "simd/vec16.h"

/* The epilogue's arithmetic for 16 accumulators of row m, given the tokens'
 * zero points zx (used only when e->rowsum is set) and scales sx (unused for
 * I32), loaded once by callers that apply it to several rows: the int32
 * (I32), float32 (F32) or uint8-valued (U8, still in 32-bit lanes) result.
 * kind and act are passed apart from e so that callers can make them
 * compile-time constants. */
BSK_INLINE bsk_v16i bsk_epi_apply(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                                  bsk_v16i zx, bsk_v16f sx, const int kind, const int act)
{
    if (e->rowsum)
        acc = (bsk_v16i)((bsk_v16u)acc - (bsk_v16u)zx * (uint32_t)e->rowsum[m]);
    if (kind == BSK_OUT_I32)
        return acc;

    bsk_v16f y = __builtin_convertvector(acc, bsk_v16f);
    y = y * (e->w_scale[m] * sx);
    if (e->bias)
        y = y + e->bias[m];
    if (act == BSK_ACT_RELU)
        y = bsk_select(y > 0.0f, y, (bsk_v16f){0});
    else if (act == BSK_ACT_GELU)
        y = bsk_gelu16(y);
    if (kind == BSK_OUT_F32)
        return (bsk_v16i)y;
    /* uint8 requantization */
    const bsk_v16f q = bsk_u8_code16(y / e->out_scale, (bsk_v16f){0} + (float)e->out_zero);
    return __builtin_convertvector(q, bsk_v16i);
}

/* The tokens' zero points and scales for tokens n .. n+count-1, as
 * bsk_epi_apply takes them. */
BSK_INLINE void bsk_epi_tokens(const bsk_epilogue *e, int64_t n, int count, const int kind,
                               bsk_v16i *zx, bsk_v16f *sx)
{
    *zx = e->rowsum ? bsk_load16i(e->x_zero + n, count) : (bsk_v16i){0};
    *sx = kind == BSK_OUT_I32 ? (bsk_v16f){0} : bsk_load16f(e->x_scale + n, count);
}

/* The epilogue of 16 accumulators of one token n and rows m .. m+15 (the
 * first `count` valid): the same arithmetic as bsk_epi_apply, with the rows'
 * terms as vectors and the token's as scalars, so the bits are the same. */
BSK_INLINE bsk_v16i bsk_epi_apply_token(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                                        int64_t n, int count, const int kind, const int act)
{
    if (e->rowsum)
        acc = (bsk_v16i)((bsk_v16u)acc - (bsk_v16u)bsk_load16i(e->rowsum + m, count) *
                                             (uint32_t)e->x_zero[n]);
    if (kind == BSK_OUT_I32)
        return acc;
    bsk_v16f y = __builtin_convertvector(acc, bsk_v16f);
    y = y * (bsk_load16f(e->w_scale + m, count) * e->x_scale[n]);
    if (e->bias)
        y = y + bsk_load16f(e->bias + m, count);
    if (act == BSK_ACT_RELU)
        y = bsk_select(y > 0.0f, y, (bsk_v16f){0});
    else if (act == BSK_ACT_GELU)
        y = bsk_gelu16(y);
    if (kind == BSK_OUT_F32)
        return (bsk_v16i)y;
    const bsk_v16f q = bsk_u8_code16(y / e->out_scale, (bsk_v16f){0} + (float)e->out_zero);
    return __builtin_convertvector(q, bsk_v16i);
}

/* bsk_epi_apply for 16 accumulators of row m, tokens n .. n+15 (the first
 * `count` valid). */
BSK_INLINE bsk_v16i bsk_epi_values(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                                   int64_t n, int count, const int kind, const int act)
{
    bsk_v16i zx;
    bsk_v16f sx;
    bsk_epi_tokens(e, n, count, kind, &zx, &sx);
    return bsk_epi_apply(e, acc, m, zx, sx, kind, act);
}

/* Store the first `count` of 16 epilogue results of row m, tokens n ..:
 * out[m, n + t] (row-major (M, N)) or, y_transposed, out[n + t, m]. */
BSK_INLINE void bsk_epi_store(bsk_v16i v, int64_t m, int64_t n, int count, void *out,
                              int64_t ldo, const int kind, const int y_transposed)
{
    if (kind != BSK_OUT_U8) {
        int32_t *o = (int32_t *)out;
        if (!y_transposed && count == 16)
            *(bsk_v16i_u *)(o + m * ldo + n) = v;
        else if (!y_transposed)
            for (int t = 0; t < count; t++)
                o[m * ldo + n + t] = v[t];
        else
            for (int t = 0; t < count; t++)
                o[(n + t) * ldo + m] = v[t];
        return;
    }
    const bsk_v16b qb = __builtin_convertvector(v, bsk_v16b);
    uint8_t *o = (uint8_t *)out;
    if (!y_transposed && count == 16)
        *(bsk_v16b_u *)(o + m * ldo + n) = qb;
    else if (!y_transposed)
        for (int t = 0; t < count; t++)
            o[m * ldo + n + t] = qb[t];
    else
        for (int t = 0; t < count; t++)
            o[(n + t) * ldo + m] = qb[t];
}

/*
 * Apply the epilogue to 16 accumulators of row m, tokens n .. n+15, of which
 * the first `count` are stored.  y_transposed selects out[m, n] (row-major
 * (M, N)) or out[n, m] ((N, M)).  kind, act and y_transposed are passed
 * separately from e so that callers can make them compile-time constants
 * (see bsk_epilogue_rows) and get a branch-free specialised loop.
 */
BSK_INLINE void bsk_epilogue16_k(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                                 int64_t n, int count, void *out, int64_t ldo,
                                 const int kind, const int act, const int y_transposed)
{
    bsk_epi_store(bsk_epi_values(e, acc, m, n, count, kind, act), m, n, count, out, ldo, kind,
                  y_transposed);
}

/* Four rows m .. m+3 of results for tokens n .. n+count-1, stored transposed:
 * out[(n + t) * ldo + m + r] (the Linear form's (N, M) output).  4x4 blocks
 * are transposed in registers so each token gets one 16-byte (or 4-byte)
 * store instead of four scattered ones. */
BSK_INLINE void bsk_store4_transposed(const bsk_v16i v[4], int count, void *out,
                                      int64_t ldo, int64_t m, int64_t n, const int kind)
{
    if (kind != BSK_OUT_U8) {
        const bsk_v16i lo = {0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29};
        const bsk_v16i hi = lo + 2;
        const bsk_v16i lo64 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
        const bsk_v16i hi64 = lo64 + 2;
        const bsk_v16i ab0 = __builtin_shuffle(v[0], v[1], lo);
        const bsk_v16i ab1 = __builtin_shuffle(v[0], v[1], hi);
        const bsk_v16i cd0 = __builtin_shuffle(v[2], v[3], lo);
        const bsk_v16i cd1 = __builtin_shuffle(v[2], v[3], hi);
        bsk_v16i t[4];
        t[0] = __builtin_shuffle(ab0, cd0, lo64); /* lane L: token 4L + 0 */
        t[1] = __builtin_shuffle(ab0, cd0, hi64); /* token 4L + 1 */
        t[2] = __builtin_shuffle(ab1, cd1, lo64);
        t[3] = __builtin_shuffle(ab1, cd1, hi64);
        int32_t *o = (int32_t *)out + n * ldo + m;
        for (int tok = 0; tok < count; tok++)
            memcpy(o + tok * ldo, (const char *)&t[tok & 3] + 16 * (tok >> 2), 16);
        return;
    }
    uint8_t *o = (uint8_t *)out + n * ldo + m;
    for (int tok = 0; tok < count; tok++) {
        const uint32_t word = (uint32_t)v[0][tok] | (uint32_t)v[1][tok] << 8 |
                              (uint32_t)v[2][tok] << 16 | (uint32_t)v[3][tok] << 24;
        memcpy(o + tok * ldo, &word, 4);
    }
}

BSK_INLINE void bsk_epilogue16(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                               int64_t n, int count, void *out, int64_t ldo,
                               int y_transposed)
{
    bsk_epilogue16_k(e, acc, m, n, count, out, ldo, e->kind, e->act, y_transposed);
}

/*
 * Epilogue for `rows` rows of accumulators (row r at acc + r * ld_acc, for
 * output row m0 + r * row_step), tokens n0 .. n0 + min(nt, N - n0).
 */
BSK_INLINE void bsk_epilogue_rows_k(const bsk_epilogue *e, const int32_t *acc,
                                    int64_t ld_acc, int rows, int64_t m0,
                                    int64_t n0, int64_t nt, int64_t N, void *out,
                                    int64_t ldo, const int kind, const int act,
                                    const int yt)
{
    const int64_t cnt_all = N - n0 < nt ? N - n0 : nt;
    if (yt && rows == 4) {
        for (int64_t t = 0; t < cnt_all; t += 16) {
            const int cnt = cnt_all - t < 16 ? (int)(cnt_all - t) : 16;
            bsk_v16i v[4];
            for (int r = 0; r < 4; r++)
                v[r] = bsk_epi_values(e, *(const bsk_v16i_u *)(acc + r * ld_acc + t),
                                      m0 + r, n0 + t, cnt, kind, act);
            bsk_store4_transposed(v, cnt, out, ldo, m0, n0 + t, kind);
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        for (int64_t t = 0; t < cnt_all; t += 16) {
            const int cnt = cnt_all - t < 16 ? (int)(cnt_all - t) : 16;
            bsk_epilogue16_k(e, *(const bsk_v16i_u *)(acc + r * ld_acc + t), m0 + r,
                             n0 + t, cnt, out, ldo, kind, act, yt);
        }
    }
}

#define BSK_EPI_CASE(kind, act, yt)                                            \
    bsk_epilogue_rows_k(e, acc, ld_acc, rows, m0, n0, nt, N, out, ldo, kind,   \
                        act, yt)

/* Dispatch once per tile to a loop specialised for (kind, act, yt). */
static inline __attribute__((unused)) void
bsk_epilogue_rows(const bsk_epilogue *e, const int32_t *acc, int64_t ld_acc,
                  int rows, int64_t m0, int64_t n0, int64_t nt, int64_t N,
                  void *out, int64_t ldo, int yt)
{
    const int act = e->kind == BSK_OUT_I32 ? BSK_ACT_NONE : e->act;
    const int key = (e->kind * 3 + act) * 2 + (yt ? 1 : 0);
    switch (key) {
    case 0: BSK_EPI_CASE(BSK_OUT_I32, BSK_ACT_NONE, 0); break;
    case 1: BSK_EPI_CASE(BSK_OUT_I32, BSK_ACT_NONE, 1); break;
    case 6: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_NONE, 0); break;
    case 7: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_NONE, 1); break;
    case 8: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_RELU, 0); break;
    case 9: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_RELU, 1); break;
    case 10: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_GELU, 0); break;
    case 11: BSK_EPI_CASE(BSK_OUT_F32, BSK_ACT_GELU, 1); break;
    case 12: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_NONE, 0); break;
    case 13: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_NONE, 1); break;
    case 14: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_RELU, 0); break;
    case 15: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_RELU, 1); break;
    case 16: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_GELU, 0); break;
    default: BSK_EPI_CASE(BSK_OUT_U8, BSK_ACT_GELU, 1); break;
    }
}
#undef BSK_EPI_CASE

/* Apply the epilogue to a row of `count` accumulators (any length). */
BSK_INLINE void bsk_epilogue_row(const bsk_epilogue *e, const int32_t *acc,
                                 int64_t m, int64_t n0, int64_t count,
                                 void *out, int64_t ldo, int y_transposed)
{
    for (int64_t t = 0; t < count; t += 16) {
        int c = count - t < 16 ? (int)(count - t) : 16;
        bsk_epilogue16(e, bsk_load16i(acc + t, c), m, n0 + t, c, out, ldo, y_transposed);
    }
}

#endif /* BLOCKSPARSE_EPILOGUE_H */
