/*
 * Asymmetric uint8 quantization of float32 activations (one pass for the
 * range, one for the values), compiled once per ISA variant (the including
 * file defines BSK_QUANT_FN) with -ffp-contract=off.  The arithmetic is
 * vec16.h's (bsk_vf_u8_params, bsk_vf_u8_code, on the unit's vectors
 * bsk_vf), which matches NumPy float32 exactly, so every variant gives the
 * same bytes:
 *   scale = (max(hi, 0) - min(lo, 0)) / 255   (1 if that is 0)
 *   zero  = clip(rint(-min(lo, 0) / scale), 0, 255)
 *   q     = clip(rint(x / scale) + zero, 0, 255)
 */
#include "simd/quantize_row.h"
#ifdef _OPENMP
#include <omp.h>
#endif

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
