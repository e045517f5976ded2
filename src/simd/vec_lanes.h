/*
 * The lane-wise arithmetic of vec16.h for one vector width, written once.
 * vec16.h includes this file with BSK_VW 16 and, in units compiled for AVX2,
 * again with BSK_VW 8 (an 8-float vector is one ymm register; a 16-float one
 * has no machine mode there: see BSK_VL, the unit's vector).  Before each
 * inclusion vec16.h defines the width's types bsk_v<W>f / i / u / b, its
 * primitives bsk_max<W>f, bsk_min<W>f, bsk_fma<W> and bsk_low_bytes<W>, and
 * BSK_VW_IOTA, the lane numbers.  The names made here carry the width: bsk_rint16, bsk_rint8.
 *
 * Every lane gets the same operations in the same order whatever the width,
 * so the 8- and 16-lane forms give the same bits.
 */
#define BSK_VW_CAT2(a, w, b) a##w##b
#define BSK_VW_CAT(a, w, b) BSK_VW_CAT2(a, w, b)
#define VW_F BSK_VW_CAT(bsk_v, BSK_VW, f)
#define VW_I BSK_VW_CAT(bsk_v, BSK_VW, i)
#define VW_B BSK_VW_CAT(bsk_v, BSK_VW, b)
#define VW_FN(name) BSK_VW_CAT(name, BSK_VW, )
#define VW_MAX BSK_VW_CAT(bsk_max, BSK_VW, f)
#define VW_MIN BSK_VW_CAT(bsk_min, BSK_VW, f)
#define VW_FMA BSK_VW_CAT(bsk_fma, BSK_VW, )

/* mask ? a : b per lane (mask lanes all ones or all zeros) */
BSK_INLINE VW_F VW_FN(bsk_select)(VW_I mask, VW_F a, VW_F b)
{
    return (VW_F)(((VW_I)a & mask) | ((VW_I)b & ~mask));
}

/* v with the lanes from `count` on set to 0 (in registers). */
BSK_INLINE VW_F BSK_VW_CAT(bsk_keep, BSK_VW, f)(VW_F v, int count)
{
    const VW_I lane = BSK_VW_IOTA;
    return (VW_F)((VW_I)v & (lane < count));
}

/* ---- rounding and uint8 quantization ------------------------------------------ */

/* v rounded to the nearest integer, ties to even, for |v| < 2^22 (see
 * BSK_RINT_MAGIC). */
BSK_INLINE VW_F VW_FN(bsk_rint)(VW_F v)
{
    return (v + BSK_RINT_MAGIC) - BSK_RINT_MAGIC;
}

/*
 * The uint8 code of v, a value already divided by its scale, with zero point
 * `zero`: clip(rint(v) + zero, 0, 255), as float lanes.  v is first clamped to
 * [-512, 512], which keeps the rounding trick in range (and cannot change the
 * clipped result) and maps NaN to -512.
 */
BSK_INLINE VW_F VW_FN(bsk_u8_code)(VW_F v, VW_F zero)
{
    v = VW_MAX(v, (VW_F){0} - 512.0f);
    v = VW_MIN(v, (VW_F){0} + 512.0f);
    v = VW_FN(bsk_rint)(v) + zero;
    v = VW_MAX(v, (VW_F){0});
    return VW_MIN(v, (VW_F){0} + 255.0f);
}

/*
 * Asymmetric uint8 parameters of the ranges [lo, hi] (lo <= 0 <= hi), the
 * formulas of blocksparse.quantize_activations:
 *   scale = (hi - lo) / 255, or 1 if that is not positive (NaN included),
 *   zero  = clip(rint(-lo / scale), 0, 255)   (as float lanes).
 */
BSK_INLINE void VW_FN(bsk_u8_params)(VW_F lo, VW_F hi, VW_F *scale, VW_F *zero)
{
    VW_F s = (hi - lo) / 255.0f;
    s = VW_FN(bsk_select)(s > 0.0f, s, (VW_F){0} + 1.0f);
    *zero = VW_FN(bsk_u8_code)(-lo / s, (VW_F){0});
    *scale = s;
}

/* Float lanes holding integers in [0, 255] as bytes. */
BSK_INLINE VW_B VW_FN(bsk_bytes)(VW_F v)
{
    return VW_FN(bsk_low_bytes)(__builtin_convertvector(v, VW_I));
}

/* ---- erf and GELU ---------------------------------------------------------------- */

/* The Abramowitz & Stegun 7.1.28 polynomial p(a), a = |x|:
 * erf(|x|) = 1 - 1 / p(a)^16 with |error| <= 3e-7.  p^16 overflows to inf
 * from a ~ 12 on, where 1 / p^16 = 0 is the right limit. */
BSK_INLINE VW_F VW_FN(bsk_erfc_poly)(VW_F a)
{
    VW_F p = (VW_F){0} + 0.0000430638f;
    p = VW_FMA(p, a, (VW_F){0} + 0.0002765672f);
    p = VW_FMA(p, a, (VW_F){0} + 0.0001520143f);
    p = VW_FMA(p, a, (VW_F){0} + 0.0092705272f);
    p = VW_FMA(p, a, (VW_F){0} + 0.0422820123f);
    p = VW_FMA(p, a, (VW_F){0} + 0.0705230784f);
    p = VW_FMA(p, a, (VW_F){0} + 1.0f);
    const VW_F p2 = p * p, p4 = p2 * p2, p8 = p4 * p4;
    return p8 * p8;
}

BSK_INLINE VW_F VW_FN(bsk_abs)(VW_F x)
{
    return (VW_F)((VW_I)x & ~((VW_I){0} + INT32_MIN));
}

/*
 * GELU(y) = 0.5 y (1 + erf(y / sqrt(2))).  With erf(|u|) = 1 - 1/p16 this is
 * max(y, 0) - 0.5 |y| / p16(|y| / sqrt(2)) for either sign of y: no sign
 * fix-up and no 1 - 1/p16, which loses the small terms.  |y| is capped at 32
 * in the numerator only, where p16 is already inf, so GELU(+-inf) = inf, 0.
 */
BSK_INLINE VW_F VW_FN(bsk_gelu)(VW_F y)
{
    VW_F a = VW_FN(bsk_abs)(y);
    const VW_F a32 = VW_MIN(a, (VW_F){0} + 32.0f);
    const VW_F h = (0.5f * a32) / VW_FN(bsk_erfc_poly)(a * 0.70710678118654752f);
    return VW_MAX(y, (VW_F){0}) - h;
}

#undef VW_F
#undef VW_I
#undef VW_B
#undef VW_FN
#undef VW_MAX
#undef VW_MIN
#undef VW_FMA
#undef BSK_VW_CAT
#undef BSK_VW_CAT2
