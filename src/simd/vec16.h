/*
 * 16-lane vectors (GCC/Clang vector extensions) and the arithmetic that the
 * INT8 epilogue, the activation quantization and the encoder kernels share:
 * round to nearest even, the uint8 code of a scaled value, the asymmetric
 * uint8 parameters of a range, erf and GELU.
 *
 * Each is written once, here.  They use only IEEE + - * /, compares and
 * explicit fused multiply-adds (bsk_fma16), in a fixed order, so where a unit
 * is compiled with -ffp-contract=off (the INT8 and quantization units, the
 * scalar units) every ISA gives the same bits.
 */
#ifndef BLOCKSPARSE_VEC16_H
#define BLOCKSPARSE_VEC16_H

#include <math.h>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#include "bsk_internal.h"

typedef float bsk_v16f __attribute__((vector_size(64)));
typedef int32_t bsk_v16i __attribute__((vector_size(64)));
typedef uint32_t bsk_v16u __attribute__((vector_size(64)));
typedef uint8_t bsk_v16b __attribute__((vector_size(16)));
/* unaligned views for loads and stores */
typedef float bsk_v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t bsk_v16i_u __attribute__((vector_size(64), aligned(4)));
typedef uint8_t bsk_v16b_u __attribute__((vector_size(16), aligned(1)));

BSK_INLINE bsk_v16f bsk_select(bsk_v16i mask, bsk_v16f a, bsk_v16f b)
{
    return (bsk_v16f)(((bsk_v16i)a & mask) | ((bsk_v16i)b & ~mask));
}

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

/* ---- rounding and uint8 quantization ------------------------------------------ */

/* 1.5 * 2^23: for |v| < 2^22, (v + M) - M is v rounded to the nearest integer,
 * ties to even (numpy.rint), because the sum has no fraction bits left. */
#define BSK_RINT_MAGIC 12582912.0f

BSK_INLINE bsk_v16f bsk_rint16(bsk_v16f v)
{
    return (v + BSK_RINT_MAGIC) - BSK_RINT_MAGIC;
}

/*
 * The uint8 code of v, a value already divided by its scale, with zero point
 * `zero`: clip(rint(v) + zero, 0, 255), as float lanes.  v is first clamped to
 * [-512, 512], which keeps the rounding trick in range (and cannot change the
 * clipped result) and maps NaN to -512.
 */
BSK_INLINE bsk_v16f bsk_u8_code16(bsk_v16f v, bsk_v16f zero)
{
    v = bsk_select(v > -512.0f, v, (bsk_v16f){0} - 512.0f);
    v = bsk_select(v < 512.0f, v, (bsk_v16f){0} + 512.0f);
    v = bsk_rint16(v) + zero;
    v = bsk_select(v > 0.0f, v, (bsk_v16f){0});
    return bsk_select(v < 255.0f, v, (bsk_v16f){0} + 255.0f);
}

/*
 * Asymmetric uint8 parameters of the ranges [lo, hi] (lo <= 0 <= hi), the
 * formulas of blocksparse.quantize_activations:
 *   scale = (hi - lo) / 255, or 1 if that is not positive (NaN included),
 *   zero  = clip(rint(-lo / scale), 0, 255)   (as float lanes).
 */
BSK_INLINE void bsk_u8_params16(bsk_v16f lo, bsk_v16f hi, bsk_v16f *scale, bsk_v16f *zero)
{
    bsk_v16f s = (hi - lo) / 255.0f;
    s = bsk_select(s > 0.0f, s, (bsk_v16f){0} + 1.0f);
    *zero = bsk_u8_code16(-lo / s, (bsk_v16f){0});
    *scale = s;
}

/* Float lanes holding integers in [0, 255] as bytes. */
BSK_INLINE bsk_v16b bsk_bytes16(bsk_v16f v)
{
    return __builtin_convertvector(__builtin_convertvector(v, bsk_v16i), bsk_v16b);
}

/* ---- fused multiply-add, erf and GELU ---------------------------------------------- */

/* a * b + c with one rounding: the FMA instruction where the unit is compiled
 * for it (every SIMD variant is), else the C library's fmaf, which is
 * correctly rounded too, so every ISA gives the same bits. */
BSK_INLINE bsk_v16f bsk_fma16(bsk_v16f a, bsk_v16f b, bsk_v16f c)
{
#if defined(__AVX512F__)
    return (bsk_v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    union { bsk_v16f v; __m256 h[2]; } x = {a}, y = {b}, z = {c};
    x.h[0] = _mm256_fmadd_ps(x.h[0], y.h[0], z.h[0]);
    x.h[1] = _mm256_fmadd_ps(x.h[1], y.h[1], z.h[1]);
    return x.v;
#else
    for (int t = 0; t < 16; t++)
        a[t] = fmaf(a[t], b[t], c[t]);
    return a;
#endif
}

/* The Abramowitz & Stegun 7.1.28 polynomial p(a), a = |x|:
 * erf(|x|) = 1 - 1 / p(a)^16 with |error| <= 3e-7.  p^16 overflows to inf
 * from a ~ 12 on, where 1 / p^16 = 0 is the right limit. */
BSK_INLINE bsk_v16f bsk_erfc_poly16(bsk_v16f a)
{
    bsk_v16f p = (bsk_v16f){0} + 0.0000430638f;
    p = bsk_fma16(p, a, (bsk_v16f){0} + 0.0002765672f);
    p = bsk_fma16(p, a, (bsk_v16f){0} + 0.0001520143f);
    p = bsk_fma16(p, a, (bsk_v16f){0} + 0.0092705272f);
    p = bsk_fma16(p, a, (bsk_v16f){0} + 0.0422820123f);
    p = bsk_fma16(p, a, (bsk_v16f){0} + 0.0705230784f);
    p = bsk_fma16(p, a, (bsk_v16f){0} + 1.0f);
    const bsk_v16f p2 = p * p, p4 = p2 * p2, p8 = p4 * p4;
    return p8 * p8;
}

BSK_INLINE bsk_v16f bsk_abs16(bsk_v16f x)
{
    return (bsk_v16f)((bsk_v16i)x & ~((bsk_v16i){0} + INT32_MIN));
}

/*
 * GELU(y) = 0.5 y (1 + erf(y / sqrt(2))).  With erf(|u|) = 1 - 1/p16 this is
 * max(y, 0) - 0.5 |y| / p16(|y| / sqrt(2)) for either sign of y: no sign
 * fix-up and no 1 - 1/p16, which loses the small terms.  |y| is capped at 32
 * in the numerator only, where p16 is already inf, so GELU(+-inf) = inf, 0.
 */
BSK_INLINE bsk_v16f bsk_gelu16(bsk_v16f y)
{
    bsk_v16f a = bsk_abs16(y);
    const bsk_v16f a32 = bsk_select(a < 32.0f, a, (bsk_v16f){0} + 32.0f);
    const bsk_v16f h = (0.5f * a32) / bsk_erfc_poly16(a * 0.70710678118654752f);
    return bsk_select(y > 0.0f, y, (bsk_v16f){0}) - h;
}

#endif /* BLOCKSPARSE_VEC16_H */
