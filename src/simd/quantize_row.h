/*
 * Per-row pieces of the asymmetric uint8 quantization (quantize_simd.h), on
 * the unit's vectors: the range of a row, its parameters, its codes.  Shared
 * by the quantization kernel and by the INT8 product that quantizes float
 * tokens while it packs them (qspmm_simd.h), so both give the same bytes.
 * Include from units compiled with -ffp-contract=off.
 */
#ifndef BLOCKSPARSE_QUANTIZE_ROW_H
#define BLOCKSPARSE_QUANTIZE_ROW_H

#include <math.h>

#include "simd/vec16.h"

/* Lanes that hold NaN or +-Inf (all bits set), from the exponent field: the
 * same on every ISA, whatever its compare instructions do with NaN. */
BSK_INLINE bsk_vi nonfinite_lanes(bsk_vf v)
{
    return ((bsk_vi)v & 0x7f800000) == 0x7f800000;
}

/* Widen [*lo, *hi] by the values of x; 1 if x holds NaN or Inf. */
static int range_of(const float *x, int64_t n, float *lo, float *hi)
{
    bsk_vf vlo = (bsk_vf){0}, vhi = (bsk_vf){0};
    bsk_vi bad = (bsk_vi){0};
    int64_t k = 0;
    for (; k + BSK_VL <= n; k += BSK_VL) {
        const bsk_vf v = bsk_vf_load(x + k);
        vlo = bsk_vf_min(v, vlo);
        vhi = bsk_vf_max(v, vhi);
        bad |= nonfinite_lanes(v);
    }
    float l = 0.0f, h = 0.0f;
    int nonfinite = 0;
    for (int i = 0; i < BSK_VL; i++) {
        l = vlo[i] < l ? vlo[i] : l;
        h = vhi[i] > h ? vhi[i] : h;
        nonfinite |= bad[i] != 0;
    }
    for (; k < n; k++) {
        l = x[k] < l ? x[k] : l;
        h = x[k] > h ? x[k] : h;
        nonfinite |= !isfinite(x[k]);
    }
    if (*lo > l)
        *lo = l;
    if (*hi < h)
        *hi = h;
    return nonfinite;
}

/* The parameters of [lo, hi] (bsk_vf_u8_params), with the scale taken from the
 * width in double precision where the float32 width overflows. */
static void params_of(float lo, float hi, float *scale, int32_t *zero)
{
    bsk_vf s, z;
    if (isinf(hi - lo)) {
        const float sd = (float)(((double)hi - (double)lo) / 255.0);
        s = (bsk_vf){0} + sd;
        z = bsk_vf_u8_code(((bsk_vf){0} - lo) / s, (bsk_vf){0});
    } else {
        bsk_vf_u8_params((bsk_vf){0} + lo, (bsk_vf){0} + hi, &s, &z);
    }
    *scale = s[0];
    *zero = (int32_t)z[0];
}

BSK_INLINE void quantize_row(const float *x, int64_t n, float s, int32_t z, uint8_t *q)
{
    const bsk_vf zf = (bsk_vf){0} + (float)z;
    const bsk_vf sv = (bsk_vf){0} + s;
#define BSK_QUANT_CODE(i) bsk_vf_u8_code(bsk_vf_load(x + k + BSK_VL * (i)) / sv, zf)
    int64_t k = 0;
    for (; k + 4 * BSK_VL <= n; k += 4 * BSK_VL)
        bsk_vf_store_bytes4(q + k, BSK_QUANT_CODE(0), BSK_QUANT_CODE(1), BSK_QUANT_CODE(2),
                            BSK_QUANT_CODE(3));
    for (; k + BSK_VL <= n; k += BSK_VL)
        *(bsk_vb_u *)(q + k) = bsk_vf_bytes(BSK_QUANT_CODE(0));
#undef BSK_QUANT_CODE
    if (k < n) {
        const bsk_vf v = bsk_vf_load_part(x + k, (int)(n - k));
        const bsk_vb b = bsk_vf_bytes(bsk_vf_u8_code(v / s, zf));
        bsk_vb_store_part(q + k, b, (int)(n - k));
    }
}

#endif /* BLOCKSPARSE_QUANTIZE_ROW_H */
