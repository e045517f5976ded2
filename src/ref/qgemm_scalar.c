/*
 * Portable scalar reference of the dense INT8 product (bsk_qgemm): plain
 * loops over the packed weight panel (bsk.h, bsk_qdense), int32
 * accumulation, the shared epilogue.  Every vector variant must agree with
 * it bit for bit.
 */
#include "simd/epilogue.h"

/* W[m, k] from the panel: block m / MR, group k / 4, row m % MR, byte k % 4. */
static inline int32_t panel_weight(const bsk_qdense *W, int64_t G, int64_t m, int64_t k)
{
    const int8_t *p = (const int8_t *)W->panel;
    const int64_t mr = BSK_QGEMM_MR;
    return p[(((m / mr) * G + k / 4) * mr + m % mr) * 4 + k % 4];
}

bsk_status bsk_qgemm_u8s8s32_scalar(const bsk_qdense *W, const uint8_t *X, int64_t ldx,
                                    int64_t N, int xt, void *Y, int64_t ldy, int yt,
                                    const bsk_epilogue *epi, int nt)
{
    const int64_t M = W->M, K = W->K, G = (K + 3) / 4;
    int status = BSK_OK;
    (void)nt;
#pragma omp parallel num_threads(nt)
    {
        int32_t *acc = (int32_t *)bsk_alloc((size_t)(N > 0 ? N : 1) * sizeof(int32_t));
        if (!acc) {
#pragma omp atomic write
            status = BSK_ENOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            if (!acc)
                continue;
            for (int64_t n = 0; n < N; n++)
                acc[n] = 0;
            for (int64_t k = 0; k < K; k++) {
                const int32_t w = panel_weight(W, G, m, k);
                if (!xt) {
                    const uint8_t *x = X + k * ldx;
                    for (int64_t n = 0; n < N; n++)
                        acc[n] += w * (int32_t)x[n];
                } else {
                    for (int64_t n = 0; n < N; n++)
                        acc[n] += w * (int32_t)X[n * ldx + k];
                }
            }
            bsk_epilogue_row(epi, acc, m, 0, N, Y, ldy, yt);
        }
        free(acc);
    }
    return (bsk_status)status;
}
