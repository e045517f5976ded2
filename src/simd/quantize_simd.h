/*
 * Asymmetric uint8 quantization of float32 activations (one pass for the
 * range, one for the values), compiled once per ISA variant (the including
 * file defines BSK_QUANT_FN) with -ffp-contract=off.  The arithmetic is
 * vec16.h's (bsk_u8_params16, bsk_u8_code16, on the unit's vectors
 * bsk_vf), which matches NumPy float32 exactly, so every variant gives the
 * same bytes:
 *   scale = (max(hi, 0) - min(lo, 0)) / 255   (1 if that is 0)
 *   zero  = clip(rint(-min(lo, 0) / scale), 0, 255)
 *   q     = clip(rint(x / scale) + zero, 0, 255)
 */
#include <math.h>

#include "simd/vec16.h"
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* The parameters of [lo, hi] (bsk_u8_params16), with the scale taken from the
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

/* 1 if x holds NaN or Inf (the check of a static quantization). */
static int any_nonfinite(const float *x, int64_t n)
{
    bsk_vi bad = (bsk_vi){0};
    int64_t k = 0;
    for (; k + BSK_VL <= n; k += BSK_VL)
        bad |= nonfinite_lanes(bsk_vf_load(x + k));
    int nonfinite = 0;
    for (int i = 0; i < BSK_VL; i++)
        nonfinite |= bad[i] != 0;
    for (; k < n; k++)
        nonfinite |= !isfinite(x[k]);
    return nonfinite;
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

bsk_status BSK_QUANT_FN(const float *X, int64_t rows, int64_t cols,
                           int64_t ldx, int mode, float *scale, int32_t *zero,
                           uint8_t *Q, int64_t ldq, int num_threads)
{
    if (rows < 0 || cols < 0 || mode < BSK_QUANT_STATIC || mode > BSK_QUANT_PER_ROW)
        return BSK_EINVAL;
    if (num_threads < 1)
        num_threads = 1;
    int nonfinite = 0;
    if (mode == BSK_QUANT_PER_TENSOR) {
        float lo = 0.0f, hi = 0.0f;
        for (int64_t r = 0; r < rows; r++)
            nonfinite |= range_of(X + r * ldx, cols, &lo, &hi);
        if (nonfinite)
            return BSK_ENONFINITE;
        params_of(lo, hi, &scale[0], &zero[0]);
    }
    if (mode != BSK_QUANT_PER_ROW && !(scale[0] > 0.0f && isfinite(scale[0])))
        return BSK_EINVAL;
    bsk_team_clock clock;
    num_threads = bsk_team_begin(&clock, num_threads);
#pragma omp parallel num_threads(num_threads) reduction(| : nonfinite)
    {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    BSK_TEAM_ENTER(&clock, t);
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < rows; r++) {
        float s = scale[0];
        int32_t z = zero[0];
        if (mode == BSK_QUANT_PER_ROW) {
            float lo = 0.0f, hi = 0.0f;
            nonfinite |= range_of(X + r * ldx, cols, &lo, &hi);
            params_of(lo, hi, &scale[r], &zero[r]);
            s = scale[r];
            z = zero[r];
        } else if (mode == BSK_QUANT_STATIC) {
            nonfinite |= any_nonfinite(X + r * ldx, cols);
        }
        quantize_row(X + r * ldx, cols, s, z, Q + r * ldq);
    }
    BSK_TEAM_LEAVE(&clock, t);
    }
    bsk_team_end(&clock);
    return nonfinite ? BSK_ENONFINITE : BSK_OK;
}
