/*
 * Vectorized float block-CSR x dense kernels, written once with GCC/Clang
 * vector extensions and compiled per ISA (see src/avx2, src/avx512vnni):
 * the including file defines
 *   BSK_T       float or double
 *   BSK_VBYTES  vector width in bytes (32 for AVX2, 64 for AVX-512)
 *   BSK_ACC     accumulator vectors the register file holds comfortably
 *   BSK_FN      name of the entry point to define
 *
 * Work unit: RB rows of one block row times a panel of NT = NV * lanes
 * tokens.  The accumulators stay in registers; each stored weight is
 * broadcast once and multiplied into NV activation vectors (one row of X).
 */
#include "blocksparse/bsk_internal.h"

typedef BSK_T bsk_vec __attribute__((vector_size(BSK_VBYTES)));
typedef BSK_T bsk_vec_u __attribute__((vector_size(BSK_VBYTES), aligned(sizeof(BSK_T))));
#define BSK_LANES ((int64_t)(BSK_VBYTES / sizeof(BSK_T)))

/* Y[r0 .. r0+RB) x [0, NT) of block row i = W[..] @ X panel; X, Y point at
 * the panel's first token, with leading dimensions ldx, ldy. */
BSK_INLINE void panel(const bsk_bcsr *W, int64_t i, int64_t r0, const int RB,
                      const int NV, const BSK_T *X, int64_t ldx, BSK_T *Y,
                      int64_t ldy)
{
    const int64_t R = W->R, C = W->C;
    const BSK_T *data = (const BSK_T *)W->data;
    bsk_vec acc[8][8];
#pragma GCC unroll 8
    for (int rr = 0; rr < RB; rr++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            acc[rr][v] = (bsk_vec){0};

    for (int64_t j = W->indptr[i]; j < W->indptr[i + 1]; j++) {
        const BSK_T *blk = data + j * R * C + r0 * C;
        const BSK_T *xk = X + (int64_t)W->indices[j] * C * ldx;
        for (int64_t c = 0; c < C; c++, xk += ldx) {
            bsk_vec x[8];
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++)
                x[v] = *(const bsk_vec_u *)(xk + v * BSK_LANES);
#pragma GCC unroll 8
            for (int rr = 0; rr < RB; rr++) {
                const BSK_T w = blk[rr * C + c];
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    acc[rr][v] += w * x[v];
            }
        }
    }
#pragma GCC unroll 8
    for (int rr = 0; rr < RB; rr++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            *(bsk_vec_u *)(Y + (i * R + r0 + rr) * ldy + v * BSK_LANES) = acc[rr][v];
}

typedef void (*panel_fn)(const bsk_bcsr *, int64_t, int64_t, const BSK_T *,
                         int64_t, BSK_T *, int64_t);

#define BSK_PANEL(RB, NV)                                                     \
    static void panel_##RB##_##NV(const bsk_bcsr *W, int64_t i, int64_t r0,   \
                                  const BSK_T *X, int64_t ldx, BSK_T *Y,      \
                                  int64_t ldy)                                \
    {                                                                         \
        panel(W, i, r0, RB, NV, X, ldx, Y, ldy);                              \
    }
BSK_PANEL(1, 8)
BSK_PANEL(2, 8)
BSK_PANEL(2, 4)
BSK_PANEL(4, 4)
BSK_PANEL(4, 2)
BSK_PANEL(8, 2)
BSK_PANEL(8, 1)

/* Pick rows per unit (RB divides R) and vectors per row for the register file. */
static panel_fn choose_panel(int64_t R, int *rb, int *nv)
{
    *rb = R % 8 == 0 ? 8 : R % 4 == 0 ? 4 : R % 2 == 0 ? 2 : 1;
    int want = BSK_ACC / *rb;
    switch (*rb) {
    case 1: *nv = 8; return panel_1_8;
    case 2: if (want >= 8) { *nv = 8; return panel_2_8; }
            *nv = 4; return panel_2_4;
    case 4: if (want >= 4) { *nv = 4; return panel_4_4; }
            *nv = 2; return panel_4_2;
    default: if (want >= 2) { *nv = 2; return panel_8_2; }
             *nv = 1; return panel_8_1;
    }
}

bsk_status BSK_FN(const bsk_bcsr *W, const BSK_T *X, int64_t ldx, int64_t N,
                  BSK_T *Y, int64_t ldy, int transposed, int nt)
{
    int rb, nv;
    panel_fn fn = choose_panel(W->R, &rb, &nv);
    const int64_t NT = nv * BSK_LANES, K = W->K, M = W->M;
    const int64_t nbr = M / W->R, units = nbr * (W->R / rb);
    const int64_t ntiles = (N + NT - 1) / NT;
    int status = BSK_OK;
    (void)nt;

    if (!transposed) {
        /* Y (M, N) = W @ X (K, N).  Full tiles read X in place; the ragged
         * last tile goes through a zero-padded per-thread copy. */
        const int64_t nfull = N / NT, tail = N - nfull * NT;
#pragma omp parallel num_threads(nt)
        {
            BSK_T *xs = NULL, *ys = NULL;
            if (tail) {
                xs = (BSK_T *)bsk_alloc((size_t)(K * NT) * sizeof(BSK_T));
                ys = (BSK_T *)bsk_alloc((size_t)(M * NT) * sizeof(BSK_T));
                if (!xs || !ys) {
#pragma omp atomic write
                    status = BSK_ENOMEM;
                } else {
                    for (int64_t k = 0; k < K; k++) {
                        memcpy(xs + k * NT, X + k * ldx + nfull * NT, (size_t)tail * sizeof(BSK_T));
                        memset(xs + k * NT + tail, 0, (size_t)(NT - tail) * sizeof(BSK_T));
                    }
                }
            }
#pragma omp for schedule(static)
            for (int64_t u = 0; u < units; u++) {
                const int64_t i = u / (W->R / rb), r0 = (u % (W->R / rb)) * rb;
                for (int64_t t = 0; t < nfull; t++)
                    fn(W, i, r0, X + t * NT, ldx, Y + t * NT, ldy);
                if (tail && xs && ys) {
                    fn(W, i, r0, xs, NT, ys, NT);
                    for (int rr = 0; rr < rb; rr++) {
                        const int64_t m = i * W->R + r0 + rr;
                        memcpy(Y + m * ldy + nfull * NT, ys + m * NT, (size_t)tail * sizeof(BSK_T));
                    }
                }
            }
            free(xs);
            free(ys);
        }
        return (bsk_status)status;
    }

    /* Y (N, M) = X (N, K) @ W.T: per token tile, transpose the tile of X into
     * a shared (K, NT) panel, run the panel kernel over all rows in parallel,
     * then transpose the (M, NT) result back. */
    BSK_T *xs = (BSK_T *)bsk_alloc((size_t)(K * NT) * sizeof(BSK_T));
    BSK_T *ys = (BSK_T *)bsk_alloc((size_t)(M * NT) * sizeof(BSK_T));
    if (!xs || !ys) {
        free(xs);
        free(ys);
        return BSK_ENOMEM;
    }
#pragma omp parallel num_threads(nt)
    for (int64_t t = 0; t < ntiles; t++) {
        const int64_t n0 = t * NT, cnt = N - n0 < NT ? N - n0 : NT;
#pragma omp for schedule(static)
        for (int64_t k0 = 0; k0 < K; k0 += 64) {
            const int64_t k1 = k0 + 64 < K ? k0 + 64 : K;
            for (int64_t k = k0; k < k1; k++)
                for (int64_t n = cnt; n < NT; n++)
                    xs[k * NT + n] = 0;
            for (int64_t n = 0; n < cnt; n++) {
                const BSK_T *xr = X + (n0 + n) * ldx;
                for (int64_t k = k0; k < k1; k++)
                    xs[k * NT + n] = xr[k];
            }
        }
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; u++)
            fn(W, u / (W->R / rb), (u % (W->R / rb)) * rb, xs, NT, ys, NT);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < cnt; n++) {
            BSK_T *yr = Y + (n0 + n) * ldy;
            for (int64_t m = 0; m < M; m++)
                yr[m] = ys[m * NT + n];
        }
    }
    free(xs);
    free(ys);
    return BSK_OK;
}
