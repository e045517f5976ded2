/*
 * The fused INT8 epilogue (bsk_epilogue in bsk.h), applied to the int32
 * accumulators of every INT8 kernel as its tiles are stored.
 *
 * Written once on the unit's vectors (BSK_VL lanes of vec16.h's bsk_vf,
 * bsk_vi: 16, or 8 in the AVX2 units).  Every variant, scalar included,
 * compiles it with -ffp-contract=off, so float32 and uint8 outputs are
 * bit-identical across ISAs: only IEEE add/mul/div and int<->float
 * conversions are used, in a fixed order, lane by lane.
 */
#ifndef BLOCKSPARSE_EPILOGUE_H
#define BLOCKSPARSE_EPILOGUE_H

#include "simd/vec16.h"

/*
 * The float term (see bsk.h): for each output, one fused multiply-add per
 * float weight of its row, the dense columns first (in their order), then the
 * row's sparse entries in storage order, so every ISA (the scalar one through
 * fmaf) gives the same bits.  The activations' rows are read in place, a
 * vector of tokens at a time.  Each output's sum is one dependent chain of FMAs, so the
 * callers hand over several outputs at once and these loops run their chains
 * side by side (rows x vectors of tokens); a dense column's activations are
 * loaded once for all the rows.  The order of each output's terms is the same
 * whatever the grouping.
 */
#define BSK_EPI_FV 4 /* token vectors per group, at most */
#if defined(__AVX512F__)
#define BSK_EPI_FR 4 /* rows per group: 4 x 4 accumulators fit the 32 registers */
#else
#define BSK_EPI_FR 2
#endif

/* Activations of vector v of nv at p; the last holds `tail` tokens unless
 * `full` (a constant: the whole-vector loops make no library calls). */
BSK_INLINE bsk_vf bsk_epi_xload(const float *p, int v, const int nv, int tail,
                                  const int full)
{
    if (full || v < nv - 1)
        return *(const bsk_vf_u *)p;
    return bsk_vf_load_part(p, tail);
}

/* The R x nv accumulators (R, nv <= 4) as variables of their own: a local
 * array of vectors stays in memory (a store after every FMA) even where each
 * index is a constant once the loops are unrolled.  BSK_EPI_EACH(X) applies
 * X(r, v) to every pair; the pairs past R or nv are dead code where R and nv
 * are constants. */
#define BSK_EPI_EACH_V(X, r) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#define BSK_EPI_EACH(X) \
    BSK_EPI_EACH_V(X, 0) BSK_EPI_EACH_V(X, 1) BSK_EPI_EACH_V(X, 2) BSK_EPI_EACH_V(X, 3)
#define BSK_EPI_ACC_IN(r, v) bsk_vf a##r##v = r < R && v < nv ? y[r][v] : (bsk_vf){0};
#define BSK_EPI_ACC_OUT(r, v) if (r < R && v < nv) y[r][v] = a##r##v;
/* row r's term w * x (x: the activations of the term's input feature) */
#define BSK_EPI_TERM_V(r, v) \
    if (r < R && v < nv) \
        a##r##v = bsk_vf_fma(w, bsk_epi_xload(xk + BSK_VL * v, v, nv, tail, full), a##r##v);
#define BSK_EPI_TERM(r) BSK_EPI_TERM_V(r, 0) BSK_EPI_TERM_V(r, 1) BSK_EPI_TERM_V(r, 2) \
    BSK_EPI_TERM_V(r, 3)
/* row r's sparse entry jj */
#define BSK_EPI_ENTRY(r, jj)                                                   \
    do {                                                                       \
        const int32_t j_ = (jj);                                               \
        const bsk_vf w = bsk_vf_splat(e->f_data[j_]);                          \
        const float *xk = x + (int64_t)e->f_indices[j_] * e->ld_fx;            \
        BSK_EPI_TERM(r)                                                        \
    } while (0)
/* row r's entries past those the rows have in common */
#define BSK_EPI_ENTRIES_LEFT(r)                                                \
    if (r < R)                                                                 \
        for (int32_t i = common; i < left[r]; i++)                             \
            BSK_EPI_ENTRY(r, j[r] + i);

/* The float term of rows m .. m+R-1 (R <= 4) over nv token vectors from n,
 * the last holding `tail` tokens (`full`: all BSK_VL, a constant): the dense
 * columns' terms in column order, then the sparse entries' in storage order,
 * one FMA chain per output; the rows' chains side by side (a dense column's
 * activations loaded once for all rows), while every row has sparse entries
 * left, then each row's rest. */
BSK_INLINE void bsk_epi_float_terms(const bsk_epilogue *e, bsk_vf y[][BSK_EPI_FV],
                                    const int R, const int nv, int64_t m, int64_t n, int tail,
                                    const int full)
{
    BSK_EPI_EACH(BSK_EPI_ACC_IN)
    const float *x = e->f_x + n;
    const int64_t nc = e->f_ncols;
    const float *wd = e->f_dense + m * nc;
    for (int64_t c = 0; c < nc; c++) {
        const float *xk = x + (int64_t)e->f_cols[c] * e->ld_fx;
        bsk_vf xv[BSK_EPI_FV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            xv[v] = bsk_epi_xload(xk + BSK_VL * v, v, nv, tail, full);
#define BSK_EPI_DENSE(r, v) \
        if (r < R && v < nv) a##r##v = bsk_vf_fma(bsk_vf_splat(wd[r * nc + c]), xv[v], a##r##v);
        BSK_EPI_EACH(BSK_EPI_DENSE)
#undef BSK_EPI_DENSE
    }
    if (e->f_indptr) {
        int32_t j[4] = {0, 0, 0, 0}, left[4] = {0, 0, 0, 0}, common = INT32_MAX;
        for (int r = 0; r < R; r++) {
            j[r] = e->f_indptr[m + r];
            left[r] = e->f_indptr[m + r + 1] - j[r];
            common = left[r] < common ? left[r] : common;
        }
        for (int32_t i = 0; i < common; i++) {
            if (0 < R) BSK_EPI_ENTRY(0, j[0] + i);
            if (1 < R) BSK_EPI_ENTRY(1, j[1] + i);
            if (2 < R) BSK_EPI_ENTRY(2, j[2] + i);
            if (3 < R) BSK_EPI_ENTRY(3, j[3] + i);
        }
        BSK_EPI_ENTRIES_LEFT(0)
        BSK_EPI_ENTRIES_LEFT(1)
        BSK_EPI_ENTRIES_LEFT(2)
        BSK_EPI_ENTRIES_LEFT(3)
    }
    BSK_EPI_EACH(BSK_EPI_ACC_OUT)
}

/* bsk_epi_float_terms with `full` a constant for each case. */
BSK_INLINE void bsk_epi_float_group(const bsk_epilogue *e, bsk_vf y[][BSK_EPI_FV],
                                    const int R, const int nv, int64_t m, int64_t n,
                                    int tail)
{
    if (tail == BSK_VL)
        bsk_epi_float_terms(e, y, R, nv, m, n, BSK_VL, 1);
    else
        bsk_epi_float_terms(e, y, R, nv, m, n, tail, 0);
}

/* The float term of one vector: row m, tokens n .. n+count-1.  Out of line
 * here and below: the kernels specialise their epilogue for every output
 * kind, activation and layout, and the float term inlined into each made the
 * INT8 units several times larger and slower to compile (minutes under the
 * sanitizers). */
static __attribute__((noinline, unused)) bsk_vf
bsk_epi_float_one(const bsk_epilogue *e, bsk_vf y, int64_t m, int64_t n, int count)
{
    bsk_vf a[1][BSK_EPI_FV];
    a[0][0] = y;
    bsk_epi_float_group(e, a, 1, 1, m, n, count);
    return a[0][0];
}

/* The epilogue's steps, for callers that add the float term in between:
 * the scaled float value of a vector of accumulators of row m (F32 and U8 outputs),
 * then bias, activation and the output's lanes. */
/* acc - x_zero[n] * rowsum[m], exact (the I32 output) */
BSK_INLINE bsk_vi bsk_epi_corrected(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                      bsk_vi zx)
{
    return e->rowsum ? (bsk_vi)((bsk_vu)acc - (bsk_vu)zx * (uint32_t)e->rowsum[m]) : acc;
}

BSK_INLINE bsk_vf bsk_epi_scaled(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                   bsk_vi zx, bsk_vf sx)
{
    return __builtin_convertvector(bsk_epi_corrected(e, acc, m, zx), bsk_vf) *
           (e->w_scale[m] * sx);
}

BSK_INLINE bsk_vi bsk_epi_finish(const bsk_epilogue *e, bsk_vf y, int64_t m,
                                   const int kind, const int act)
{
    if (e->bias)
        y = y + e->bias[m];
    if (act == BSK_ACT_RELU)
        y = bsk_vf_max(y, (bsk_vf){0});
    else if (act == BSK_ACT_GELU)
        y = bsk_vf_gelu(y);
    if (kind == BSK_OUT_F32)
        return (bsk_vi)y;
    /* uint8 requantization */
    const bsk_vf q = bsk_vf_u8_code(y / e->out_scale, (bsk_vf){0} + (float)e->out_zero);
    return __builtin_convertvector(q, bsk_vi);
}

/* The epilogue's arithmetic for a vector of accumulators of row m, tokens n ..
 * n+count-1, given the tokens' zero points zx (used only when e->rowsum is
 * set) and scales sx (unused for I32), loaded once by callers that apply it
 * to several rows: the int32 (I32), float32 (F32) or uint8-valued (U8, still
 * in 32-bit lanes) result.  kind and act are passed apart from e so that
 * callers can make them compile-time constants. */
BSK_INLINE bsk_vi bsk_epi_apply(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                  int64_t n, int count, bsk_vi zx, bsk_vf sx,
                                  const int kind, const int act)
{
    if (kind == BSK_OUT_I32)
        return bsk_epi_corrected(e, acc, m, zx);
    bsk_vf y = bsk_epi_scaled(e, acc, m, zx, sx);
    if (e->f_x)
        y = bsk_epi_float_one(e, y, m, n, count);
    return bsk_epi_finish(e, y, m, kind, act);
}

/* The tokens' zero points and scales for tokens n .. n+count-1, as
 * bsk_epi_apply takes them. */
BSK_INLINE void bsk_epi_tokens(const bsk_epilogue *e, int64_t n, int count, const int kind,
                               bsk_vi *zx, bsk_vf *sx)
{
    *zx = e->rowsum ? bsk_vi_load_part(e->x_zero + n, count) : (bsk_vi){0};
    *sx = kind == BSK_OUT_I32 ? (bsk_vf){0} : bsk_vf_load_part(e->x_scale + n, count);
}

/* The epilogue of a vector of accumulators of one token n and rows m .. (the
 * first `count` valid): the same arithmetic as bsk_epi_apply, with the rows'
 * terms as vectors and the token's as scalars, so the bits are the same. */
BSK_INLINE bsk_vi bsk_epi_apply_token(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                        int64_t n, int count, const int kind, const int act)
{
    if (e->rowsum)
        acc = (bsk_vi)((bsk_vu)acc - (bsk_vu)bsk_vi_load_part(e->rowsum + m, count) *
                                             (uint32_t)e->x_zero[n]);
    if (kind == BSK_OUT_I32)
        return acc;
    bsk_vf y = __builtin_convertvector(acc, bsk_vf);
    y = y * (bsk_vf_load_part(e->w_scale + m, count) * e->x_scale[n]);
    if (e->bias)
        y = y + bsk_vf_load_part(e->bias + m, count);
    if (act == BSK_ACT_RELU)
        y = bsk_vf_max(y, (bsk_vf){0});
    else if (act == BSK_ACT_GELU)
        y = bsk_vf_gelu(y);
    if (kind == BSK_OUT_F32)
        return (bsk_vi)y;
    const bsk_vf q = bsk_vf_u8_code(y / e->out_scale, (bsk_vf){0} + (float)e->out_zero);
    return __builtin_convertvector(q, bsk_vi);
}

/* bsk_epi_apply for a vector of accumulators of row m, tokens n .. (the first
 * `count` valid). */
BSK_INLINE bsk_vi bsk_epi_values(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                   int64_t n, int count, const int kind, const int act)
{
    bsk_vi zx;
    bsk_vf sx;
    bsk_epi_tokens(e, n, count, kind, &zx, &sx);
    return bsk_epi_apply(e, acc, m, n, count, zx, sx, kind, act);
}

/* Store the first `count` of a vector of epilogue results of row m, tokens n ..:
 * out[m, n + t] (row-major (M, N)) or, y_transposed, out[n + t, m]. */
BSK_INLINE void bsk_epi_store(bsk_vi v, int64_t m, int64_t n, int count, void *out,
                              int64_t ldo, const int kind, const int y_transposed)
{
    if (kind != BSK_OUT_U8) {
        int32_t *o = (int32_t *)out;
        if (!y_transposed && count == BSK_VL)
            *(bsk_vi_u *)(o + m * ldo + n) = v;
        else if (!y_transposed)
            for (int t = 0; t < count; t++)
                o[m * ldo + n + t] = v[t];
        else
            for (int t = 0; t < count; t++)
                o[(n + t) * ldo + m] = v[t];
        return;
    }
    const bsk_vb qb = __builtin_convertvector(v, bsk_vb);
    uint8_t *o = (uint8_t *)out;
    if (!y_transposed && count == BSK_VL)
        *(bsk_vb_u *)(o + m * ldo + n) = qb;
    else if (!y_transposed)
        for (int t = 0; t < count; t++)
            o[m * ldo + n + t] = qb[t];
    else
        for (int t = 0; t < count; t++)
            o[(n + t) * ldo + m] = qb[t];
}

/*
 * Apply the epilogue to a vector of accumulators of row m, tokens n .., of which
 * the first `count` are stored.  y_transposed selects out[m, n] (row-major
 * (M, N)) or out[n, m] ((N, M)).  kind, act and y_transposed are passed
 * separately from e so that callers can make them compile-time constants
 * (see bsk_epilogue_rows) and get a branch-free specialised loop.
 */
BSK_INLINE void bsk_epilogue_vec_k(const bsk_epilogue *e, bsk_vi acc, int64_t m,
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
BSK_INLINE void bsk_store4_transposed(const bsk_vi v[4], int count, void *out,
                                      int64_t ldo, int64_t m, int64_t n, const int kind)
{
    if (kind != BSK_OUT_U8) {
        /* in each 128-bit group g: lanes 4g, 4g + 1 of a and b, interleaved (lo), or
         * pairs of them (lo64); the second operand's lanes are numbered from BSK_VL */
#if BSK_VL == 16
        const bsk_vi lo = {0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29};
        const bsk_vi lo64 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
#else
        const bsk_vi lo = {0, 8, 1, 9, 4, 12, 5, 13};
        const bsk_vi lo64 = {0, 1, 8, 9, 4, 5, 12, 13};
#endif
        const bsk_vi hi = lo + 2;
        const bsk_vi hi64 = lo64 + 2;
        const bsk_vi ab0 = __builtin_shuffle(v[0], v[1], lo);
        const bsk_vi ab1 = __builtin_shuffle(v[0], v[1], hi);
        const bsk_vi cd0 = __builtin_shuffle(v[2], v[3], lo);
        const bsk_vi cd1 = __builtin_shuffle(v[2], v[3], hi);
        bsk_vi t[4];
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

BSK_INLINE void bsk_epilogue_vec(const bsk_epilogue *e, bsk_vi acc, int64_t m,
                                 int64_t n, int count, void *out, int64_t ldo,
                                 int y_transposed)
{
    bsk_epilogue_vec_k(e, acc, m, n, count, out, ldo, e->kind, e->act, y_transposed);
}

/* The whole epilogue, float term included, of rows m .. m+R-1 (row r's
 * accumulators at acc + r * ld_acc) over nv vectors of tokens n .. (the last
 * holding `tail`), stored in the (M, N) layout; R and nv are constants where
 * inlined, so that the accumulators stay in registers. */
BSK_INLINE void bsk_epi_float_tile_k(const bsk_epilogue *e, const int32_t *acc, int64_t ld_acc,
                                   int64_t m, int64_t n, const int R, const int nv, int tail,
                                   void *out, int64_t ldo, const int kind, const int act)
{
    bsk_vf y[4][BSK_EPI_FV];
    for (int v = 0; v < nv; v++) {
        const int cnt = v == nv - 1 ? tail : BSK_VL;
        bsk_vi zx;
        bsk_vf sx;
        bsk_epi_tokens(e, n + BSK_VL * v, cnt, kind, &zx, &sx);
        for (int r = 0; r < R; r++)
            y[r][v] = bsk_epi_scaled(e, bsk_vi_load_part(acc + r * ld_acc + BSK_VL * v, cnt),
                                     m + r, zx, sx);
    }
    bsk_epi_float_group(e, y, R, nv, m, n, tail);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < nv; v++)
            bsk_epi_store(bsk_epi_finish(e, y[r][v], m + r, kind, act), m + r, n + BSK_VL * v,
                          v == nv - 1 ? tail : BSK_VL, out, ldo, kind, 0);
}

#define BSK_EPI_FLOAT_TILE_FN(name, R, NV)                                     \
    static __attribute__((noinline, unused)) void name(                        \
        const bsk_epilogue *e, const int32_t *acc, int64_t ld_acc, int64_t m,  \
        int64_t n, int tail, void *out, int64_t ldo)                           \
    {                                                                          \
        bsk_epi_float_tile_k(e, acc, ld_acc, m, n, R, NV, tail, out, ldo,      \
                             e->kind, e->act);                                 \
    }
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_1_1, 1, 1)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_1_2, 1, 2)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_1_3, 1, 3)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_1_4, 1, 4)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_g_1, BSK_EPI_FR, 1)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_g_2, BSK_EPI_FR, 2)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_g_3, BSK_EPI_FR, 3)
BSK_EPI_FLOAT_TILE_FN(bsk_epi_float_tile_g_4, BSK_EPI_FR, 4)

/* bsk_epi_float_tile_k for R = 1 or BSK_EPI_FR rows and nv in 1 .. 4. */
BSK_INLINE void bsk_epi_float_tile(const bsk_epilogue *e, const int32_t *acc, int64_t ld_acc,
                                   int64_t m, int64_t n, int R, int nv, int tail, void *out,
                                   int64_t ldo)
{
    switch (nv + (R == 1 ? 0 : 4)) {
    case 1: bsk_epi_float_tile_1_1(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 2: bsk_epi_float_tile_1_2(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 3: bsk_epi_float_tile_1_3(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 4: bsk_epi_float_tile_1_4(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 5: bsk_epi_float_tile_g_1(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 6: bsk_epi_float_tile_g_2(e, acc, ld_acc, m, n, tail, out, ldo); break;
    case 7: bsk_epi_float_tile_g_3(e, acc, ld_acc, m, n, tail, out, ldo); break;
    default: bsk_epi_float_tile_g_4(e, acc, ld_acc, m, n, tail, out, ldo); break;
    }
}

/* The (4, 1) strips' epilogue of four rows m .. m+3 x one vector of tokens n
 * .. n+count-1 with the float term (q: the accumulators in, the results out;
 * zx, sx: the tokens' zero points and scales): bsk_epi_apply's steps, the
 * four rows' float chains side by side. */
static __attribute__((noinline, unused)) void
bsk_epi_float_strip(const bsk_epilogue *e, bsk_vi q[4], bsk_vi zx, bsk_vf sx, int64_t m,
                    int64_t n, int count)
{
    bsk_vf y[4][BSK_EPI_FV];
    for (int r = 0; r < 4; r++)
        y[r][0] = bsk_epi_scaled(e, q[r], m + r, zx, sx);
    bsk_epi_float_group(e, y, 4, 1, m, n, count);
    for (int r = 0; r < 4; r++)
        q[r] = bsk_epi_finish(e, y[r][0], m + r, e->kind, e->act);
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
        for (int64_t t = 0; t < cnt_all; t += BSK_VL) {
            const int cnt = cnt_all - t < BSK_VL ? (int)(cnt_all - t) : BSK_VL;
            bsk_vi v[4];
            for (int r = 0; r < 4; r++)
                v[r] = bsk_epi_values(e, *(const bsk_vi_u *)(acc + r * ld_acc + t),
                                      m0 + r, n0 + t, cnt, kind, act);
            bsk_store4_transposed(v, cnt, out, ldo, m0, n0 + t, kind);
        }
        return;
    }
    if (kind != BSK_OUT_I32 && e->f_x && !yt) {
        /* the float term over groups of BSK_EPI_FR rows x BSK_EPI_FV token vectors */
        for (int64_t t = 0; t < cnt_all; t += BSK_VL * BSK_EPI_FV) {
            const int64_t left = cnt_all - t;
            const int nv = left >= BSK_VL * BSK_EPI_FV ? BSK_EPI_FV
                                                       : (int)((left + BSK_VL - 1) / BSK_VL);
            const int64_t last = left - BSK_VL * (nv - 1);
            const int tail = (int)(last < BSK_VL ? last : BSK_VL);
            for (int r = 0; r < rows;) {
                const int R = r + BSK_EPI_FR <= rows ? BSK_EPI_FR : 1;
                bsk_epi_float_tile(e, acc + r * ld_acc + t, ld_acc, m0 + r, n0 + t, R, nv,
                                   tail, out, ldo);
                r += R;
            }
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        for (int64_t t = 0; t < cnt_all; t += BSK_VL) {
            const int cnt = cnt_all - t < BSK_VL ? (int)(cnt_all - t) : BSK_VL;
            bsk_epilogue_vec_k(e, *(const bsk_vi_u *)(acc + r * ld_acc + t), m0 + r,
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
    for (int64_t t = 0; t < count; t += BSK_VL) {
        int c = count - t < BSK_VL ? (int)(count - t) : BSK_VL;
        bsk_epilogue_vec(e, bsk_vi_load_part(acc + t, c), m, n0 + t, c, out, ldo, y_transposed);
    }
}

#endif /* BLOCKSPARSE_EPILOGUE_H */
