/*
 * Internal helpers shared by the kernel variants.  Everything here is
 * static inline: each ISA's translation unit gets its own copy compiled with
 * its own flags, so no AVX-512 code can leak into a baseline caller.
 *
 * The INT8 epilogue is written once with GCC/Clang vector extensions on
 * 16-lane vectors.  Every variant (scalar included) runs this same source,
 * compiled with -ffp-contract=off, so float32 and uint8 outputs are
 * bit-identical across ISAs: only IEEE add/mul/div and int<->float
 * conversions are used, in a fixed order.
 */
#ifndef BLOCKSPARSE_BSK_INTERNAL_H
#define BLOCKSPARSE_BSK_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blocksparse/bsk.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BSK_INLINE static inline __attribute__((always_inline))

typedef float bsk_v16f __attribute__((vector_size(64)));
typedef int32_t bsk_v16i __attribute__((vector_size(64)));
typedef uint32_t bsk_v16u __attribute__((vector_size(64)));
/* unaligned views for loads and stores */
typedef float bsk_v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t bsk_v16i_u __attribute__((vector_size(64), aligned(4)));

BSK_INLINE void *bsk_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

BSK_INLINE bsk_v16f bsk_select(bsk_v16i mask, bsk_v16f a, bsk_v16f b)
{
    return (bsk_v16f)(((bsk_v16i)a & mask) | ((bsk_v16i)b & ~mask));
}

/* erf by Abramowitz & Stegun 7.1.28 (|error| <= 3e-7): only +, *, / so the
 * result is the same on every ISA. */
BSK_INLINE bsk_v16f bsk_erf16(bsk_v16f x)
{
    const bsk_v16i sign = (bsk_v16i)x & ((bsk_v16i){0} + INT32_MIN);
    bsk_v16f a = (bsk_v16f)((bsk_v16i)x & ~((bsk_v16i){0} + INT32_MIN));
    a = bsk_select(a < 6.0f, a, (bsk_v16f){0} + 6.0f); /* erf(6) == 1 in fp32 */
    bsk_v16f p = (bsk_v16f){0} + 0.0000430638f;
    p = p * a + 0.0002765672f;
    p = p * a + 0.0001520143f;
    p = p * a + 0.0092705272f;
    p = p * a + 0.0422820123f;
    p = p * a + 0.0705230784f;
    p = p * a + 1.0f;
    bsk_v16f p2 = p * p, p4 = p2 * p2, p8 = p4 * p4, p16 = p8 * p8;
    bsk_v16f r = 1.0f - 1.0f / p16;
    return (bsk_v16f)((bsk_v16i)r | sign);
}

/* GELU(y) = 0.5 * y * (1 + erf(y / sqrt(2))) */
BSK_INLINE bsk_v16f bsk_gelu16(bsk_v16f y)
{
    return 0.5f * y * (1.0f + bsk_erf16(y * 0.70710678118654752f));
}

typedef uint8_t bsk_v16b __attribute__((vector_size(16)));
typedef uint8_t bsk_v16b_u __attribute__((vector_size(16), aligned(1)));

/* Load `count` (<= 16) 32-bit values, zero-filling the rest; a full load
 * when count == 16 (the common case, kept free of library calls). */
BSK_INLINE bsk_v16i bsk_load16i(const int32_t *p, int count)
{
    if (count == 16)
        return *(const bsk_v16i_u *)p;
    bsk_v16i v = (bsk_v16i){0};
    for (int t = 0; t < count; t++)
        v[t] = p[t];
    return v;
}

BSK_INLINE bsk_v16f bsk_load16f(const float *p, int count)
{
    if (count == 16)
        return *(const bsk_v16f_u *)p;
    bsk_v16f v = (bsk_v16f){0};
    for (int t = 0; t < count; t++)
        v[t] = p[t];
    return v;
}

/*
 * Apply the epilogue to 16 accumulators of row m, tokens n .. n+15, of which
 * the first `count` are stored.  y_transposed selects out[m, n] (row-major
 * (M, N)) or out[n, m] ((N, M)).  kind, act and y_transposed are passed
 * separately from e so that callers can make them compile-time constants
 * (see bsk_epilogue_rows) and get a branch-free specialised loop.
 */
/* The epilogue's arithmetic for 16 accumulators of row m: the int32
 * (I32), float32 (F32) or uint8-valued (U8, still in 32-bit lanes) result. */
BSK_INLINE bsk_v16i bsk_epi_values(const bsk_epilogue *e, bsk_v16i acc, int64_t m,
                                   int64_t n, int count, const int kind, const int act)
{
    if (e->rowsum) {
        const bsk_v16i zx = bsk_load16i(e->x_zero + n, count);
        acc = (bsk_v16i)((bsk_v16u)acc - (bsk_v16u)zx * (uint32_t)e->rowsum[m]);
    }
    if (kind == BSK_OUT_I32)
        return acc;

    const bsk_v16f sx = bsk_load16f(e->x_scale + n, count);
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

    /* uint8 requantization, round half to even like numpy.rint */
    bsk_v16f q = y / e->out_scale;
    q = bsk_select(q > -512.0f, q, (bsk_v16f){0} - 512.0f); /* also maps NaN */
    q = bsk_select(q < 512.0f, q, (bsk_v16f){0} + 512.0f);
    q = (q + 12582912.0f) - 12582912.0f; /* 1.5 * 2^23: rint for |q| < 2^22 */
    q = q + (float)e->out_zero;
    q = bsk_select(q > 0.0f, q, (bsk_v16f){0});
    q = bsk_select(q < 255.0f, q, (bsk_v16f){0} + 255.0f);
    return __builtin_convertvector(q, bsk_v16i);
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
    const bsk_v16i v = bsk_epi_values(e, acc, m, n, count, kind, act);
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

/* Deterministic static split of [0, n) into `parts` contiguous ranges. */
BSK_INLINE void bsk_split(int64_t n, int parts, int part, int64_t *lo, int64_t *hi)
{
    int64_t q = n / parts, r = n % parts;
    *lo = part * q + (part < r ? part : r);
    *hi = *lo + q + (part < r ? 1 : 0);
}

/* ---- per-variant kernel entry points (defined in src/<isa>/) ------------ */

#define BSK_DECLARE_VARIANT(sfx)                                              \
    bsk_status bsk_spmm_f32_##sfx(const bsk_bcsr *W, const float *X,          \
                                  int64_t ldx, int64_t N, float *Y,           \
                                  int64_t ldy, int transposed, int nt);       \
    bsk_status bsk_spmm_f64_##sfx(const bsk_bcsr *W, const double *X,         \
                                  int64_t ldx, int64_t N, double *Y,          \
                                  int64_t ldy, int transposed, int nt);       \
    bsk_status bsk_qspmm_u8s8s32_##sfx(const bsk_qbcsr *W, const uint8_t *X,  \
                                       int64_t ldx, int64_t N, int xt,        \
                                       void *Y, int64_t ldy, int yt,          \
                                       const bsk_epilogue *epi, int nt);       \
    bsk_status bsk_quantize_u8_##sfx(const float *X, int64_t rows,             \
                                     int64_t cols, int64_t ldx, int mode,     \
                                     float *scale, int32_t *zero, uint8_t *Q, \
                                     int64_t ldq, int num_threads);

BSK_DECLARE_VARIANT(scalar)
BSK_DECLARE_VARIANT(avx2)
BSK_DECLARE_VARIANT(avx_vnni)
BSK_DECLARE_VARIANT(avx512_vnni)

#endif /* BLOCKSPARSE_BSK_INTERNAL_H */
