/*
 * Portable scalar reference kernels: straightforward loops over block-CSR,
 * any block shape.  Every other variant must agree with these (exactly for
 * the integer paths).  Built with baseline flags on every platform.
 */
#include "simd/epilogue.h"

#define BSK_DEFINE_SPMM_SCALAR(T, name)                                        \
    bsk_status name(const bsk_bcsr *W, const T *X, int64_t ldx, int64_t N,     \
                    T *Y, int64_t ldy, int transposed, int nt)                 \
    {                                                                          \
        const int64_t R = W->R, C = W->C, nbr = W->M / R;                     \
        const T *data = (const T *)W->data;                                    \
        int status = BSK_OK;                                                   \
        (void)nt;                                                              \
        _Pragma("omp parallel num_threads(nt)")                                \
        {                                                                      \
            T *acc = (T *)bsk_alloc((size_t)(N > 0 ? N : 1) * sizeof(T));      \
            if (!acc) {                                                        \
                _Pragma("omp atomic write") status = BSK_ENOMEM;               \
            }                                                                  \
            _Pragma("omp for schedule(static)")                                \
            for (int64_t i = 0; i < nbr; i++) {                               \
                if (!acc)                                                      \
                    continue;                                                  \
                for (int64_t r = 0; r < R; r++) {                              \
                    const int64_t m = i * R + r;                               \
                    for (int64_t n = 0; n < N; n++)                            \
                        acc[n] = 0;                                            \
                    for (int64_t j = W->indptr[i]; j < W->indptr[i + 1]; j++) {\
                        const T *blk = data + j * R * C + r * C;               \
                        for (int64_t c = 0; c < C; c++) {                      \
                            const int64_t k = (int64_t)W->indices[j] * C + c;  \
                            const T w = blk[c];                                \
                            if (!transposed) {                                 \
                                const T *x = X + k * ldx;                      \
                                for (int64_t n = 0; n < N; n++)                \
                                    acc[n] += w * x[n];                        \
                            } else {                                           \
                                for (int64_t n = 0; n < N; n++)                \
                                    acc[n] += w * X[n * ldx + k];              \
                            }                                                  \
                        }                                                      \
                    }                                                          \
                    if (!transposed)                                           \
                        memcpy(Y + m * ldy, acc, (size_t)N * sizeof(T));       \
                    else                                                       \
                        for (int64_t n = 0; n < N; n++)                        \
                            Y[n * ldy + m] = acc[n];                           \
                }                                                              \
            }                                                                  \
            free(acc);                                                         \
        }                                                                      \
        return (bsk_status)status;                                             \
    }

BSK_DEFINE_SPMM_SCALAR(float, bsk_spmm_f32_scalar)
BSK_DEFINE_SPMM_SCALAR(double, bsk_spmm_f64_scalar)

bsk_status bsk_qspmm_u8s8s32_scalar(const bsk_qbcsr *Wq, const uint8_t *X,
                                    int64_t ldx, int64_t N, int xt, void *Y,
                                    int64_t ldy, int yt,
                                    const bsk_epilogue *epi, int nt)
{
    const bsk_bcsr *W = &Wq->w;
    const int64_t R = W->R, C = W->C, nbr = W->M / R;
    const int8_t *data = (const int8_t *)W->data;
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
        for (int64_t i = 0; i < nbr; i++) {
            if (!acc)
                continue;
            for (int64_t r = 0; r < R; r++) {
                for (int64_t n = 0; n < N; n++)
                    acc[n] = 0;
                for (int64_t j = W->indptr[i]; j < W->indptr[i + 1]; j++) {
                    const int8_t *blk = data + j * R * C + r * C;
                    for (int64_t c = 0; c < C; c++) {
                        const int64_t k = (int64_t)W->indices[j] * C + c;
                        const int32_t w = blk[c];
                        if (!xt) {
                            const uint8_t *x = X + k * ldx;
                            for (int64_t n = 0; n < N; n++)
                                acc[n] += w * (int32_t)x[n];
                        } else {
                            for (int64_t n = 0; n < N; n++)
                                acc[n] += w * (int32_t)X[n * ldx + k];
                        }
                    }
                }
                bsk_epilogue_row(epi, acc, i * R + r, 0, N, Y, ldy, yt);
            }
        }
        free(acc);
    }
    return (bsk_status)status;
}
