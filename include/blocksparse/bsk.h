/*
 * blocksparse C kernel API (C11, no Python headers).
 *
 * Storage is block-CSR in SciPy's convention: a matrix of shape (M, K) with
 * blocks of shape (R, C); block row i owns blocks indptr[i] .. indptr[i+1]-1,
 * block j sits at block column indices[j] and holds data[j*R*C .. +R*C)
 * in row-major order.  A weight of a Linear layer is (out_features,
 * in_features) = (M, K): blocksize (4, 1) is four consecutive output rows in
 * one input column, (1, 4) four consecutive weights of one row along K.
 *
 * Every entry point returns a bsk_status and never prints, aborts or exits.
 * Callers (the Cython layer) validate shapes, dtypes and index ranges first;
 * the kernels re-check only what they need not to write out of bounds.
 */
#ifndef BLOCKSPARSE_BSK_H
#define BLOCKSPARSE_BSK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    BSK_OK = 0,
    BSK_EINVAL = 1,       /* bad argument */
    BSK_ENOMEM = 2,       /* allocation failed */
    BSK_EUNSUPPORTED = 3, /* ISA or case not available in this variant */
    BSK_EOVERFLOW = 4,    /* int32 accumulation or index range exceeded */
    BSK_ENONFINITE = 5    /* a float input holds NaN or Inf */
} bsk_status;

/* Instruction-set variants, in increasing order of preference. */
typedef enum {
    BSK_ISA_SCALAR = 0,      /* portable C, the reference */
    BSK_ISA_AVX2 = 1,        /* AVX2 + FMA */
    BSK_ISA_AVX_VNNI = 2,    /* AVX2 + AVX-VNNI (256-bit vpdpbusd) */
    BSK_ISA_AVX512_VNNI = 3, /* AVX-512 F/BW/VL/DQ + VNNI */
    BSK_ISA_COUNT = 4
} bsk_isa;

/* Read-only view of a block-CSR matrix (float32, float64 or int8 data). */
typedef struct {
    int64_t M, K;          /* matrix shape */
    int64_t R, C;          /* block shape */
    int64_t nnzb;          /* stored blocks */
    const int32_t *indptr; /* M / R + 1 entries */
    const int32_t *indices;/* nnzb entries, block columns */
    const void *data;      /* nnzb * R * C elements */
} bsk_bcsr;

/*
 * INT8 weights packed once at quantize time.  For blocksize (1, 4) the BCSR
 * view is used as is (one block = one 32-bit VNNI group).  For blocksize
 * (4, 1) the blocks of each 4-row strip are grouped four at a time:
 * group g of a strip has columns gcols[4g .. 4g+3] and, for each of the four
 * rows r, the 32-bit word gw[4g + r] holding the row's four weights in
 * column order.  Strips whose block count is not a multiple of four are
 * padded with zero weights (column = last real column).
 */
typedef struct {
    bsk_bcsr w;             /* int8 data */
    const int32_t *gptr;    /* (4, 1) only: M / 4 + 1 group offsets */
    const int32_t *gcols;   /* (4, 1) only: 4 columns per group */
    const int32_t *gw;      /* (4, 1) only: 4 packed rows per group */
} bsk_qbcsr;

/* Output kinds and activations of the fused INT8 epilogue. */
enum { BSK_OUT_I32 = 0, BSK_OUT_F32 = 1, BSK_OUT_U8 = 2 };
enum { BSK_ACT_NONE = 0, BSK_ACT_RELU = 1, BSK_ACT_GELU = 2 };

/*
 * Epilogue applied to every int32 accumulator acc[m, n]:
 *   t = acc - x_zero[n] * rowsum[m]                         (exact int32)
 *   I32: out = t
 *   F32: y = (float)t * (w_scale[m] * x_scale[n]) [+ float term] + bias[m],
 *        then act
 *   U8 : q = clip(rint(y / out_scale) + out_zero, 0, 255)
 * rowsum may be NULL when every x_zero is 0; bias may be NULL.
 * x_scale and x_zero have one entry per token (N).
 *
 * Float term (f_x not NULL; F32 and U8 outputs in the (M, N) layout only,
 * else the product returns BSK_EINVAL): float32 weights F (M, K) times
 * float32 activations f_x (K, N), row stride ld_fx, added before the bias one
 * fused multiply-add at a time, y = fma(F[m, k], f_x[k * ld_fx + n], y): first
 * the f_ncols dense columns k = f_cols[c] (values f_dense[m * f_ncols + c]),
 * in that order, then, if f_indptr is not NULL, the CSR entries k =
 * f_indices[j] (values f_data[j]) for j from f_indptr[m] up.  The order is
 * the same on every ISA, and so are the bits.  F carries the weights an INT8
 * row keeps in float32 (blocksparse.nn's outlier features and weights).
 */
typedef struct {
    int kind;
    int act;
    const int32_t *rowsum;
    const float *w_scale;
    const float *x_scale;
    const int32_t *x_zero;
    const float *bias;
    float out_scale;
    int32_t out_zero;
    const float *f_x;
    int64_t ld_fx;
    int64_t f_ncols;
    const int32_t *f_cols;
    const float *f_dense;
    const int32_t *f_indptr;
    const int32_t *f_indices;
    const float *f_data;
} bsk_epilogue;

/* ---- CPU features and threads ------------------------------------------ */

/* Best variant that is both compiled in and usable on this CPU and OS. */
bsk_isa bsk_isa_best(void);
/* 1 if the variant was compiled into this build. */
int bsk_isa_built(bsk_isa isa);
/* 1 if the CPU and OS support the variant (CPUID + XGETBV, see below). */
int bsk_isa_detected(bsk_isa isa);
/* Stable lower-case name ("scalar", "avx2", "avx_vnni", "avx512_vnni"). */
const char *bsk_isa_name(bsk_isa isa);
/* Threads OpenMP would use by default (1 without OpenMP). */
int bsk_default_threads(void);
/* 1 if built with OpenMP. */
int bsk_have_openmp(void);
/*
 * What detection checks (for diagnostics and tests).  A variant runs only
 * where CPUID reports every CPU feature its compiler flags enable and XCR0
 * shows the operating system saving the registers those features use.
 */
/* Mask of the features (bits named by bsk_feature_name) of a variant. */
uint64_t bsk_isa_features(bsk_isa isa);
/* Name of feature bit `bit` ("AVX2", "AVX512VNNI", ...); NULL past the last. */
const char *bsk_feature_name(int bit);
/* Features this CPU reports, and in *xcr0 (if not NULL) the XCR0 register. */
uint64_t bsk_cpu_features(uint64_t *xcr0);
/* Variants (bit i: bsk_isa i) that detection accepts for these features and
 * XCR0: the detection routine itself, on any inputs. */
uint32_t bsk_isa_mask_for(uint64_t features, uint64_t xcr0);
/* Compiler flags the variant was built with ("" for scalar), NULL if not built. */
const char *bsk_isa_flags(bsk_isa isa);
/* Products with less stored work (multiply-adds) per thread than this use
 * fewer threads; 0 always uses the requested count (for tests).  Returns
 * the previous value. */
int64_t bsk_set_min_work_per_thread(int64_t work);
/* Adaptive team size (src/team.c): four parallel regions among the last 64
 * held up by the scheduler (threads entering or leaving more than a
 * millisecond apart: other processes on the cores) make the next regions
 * run on one thread for 10 ms to 1.28 s, unless that one thread too waits for
 * a CPU (every core shared: the full team then gets the bigger share, and
 * held-up regions are ignored for 10 ms to 1.28 s).  Results never depend on
 * it.  On unless the environment has BLOCKSPARSE_ADAPTIVE_THREADS=0 or this
 * turns it off. */
void bsk_team_set_adaptive(int on);
int bsk_team_adaptive(void);
/* Whether it is on, how long regions still run on one thread (ns), how many
 * held-up regions were seen since the process started, how long held-up
 * regions are still ignored (ns) and how many one-thread windows were ended
 * because the one thread waited for a CPU. */
void bsk_team_state(int *on, int64_t *single_for_ns, int64_t *count, int64_t *team_for_ns,
                    int64_t *shared_ends);

/* ---- float products ------------------------------------------------------ */

/*
 * transposed == 0: Y (M, N) = W @ X, X of shape (K, N).
 * transposed == 1: Y (N, M) = X @ W.T, X of shape (N, K).
 * Rows of X and Y are contiguous with leading dimensions ldx, ldy.
 * Y is overwritten.  Any block shape.
 */
bsk_status bsk_spmm_f32(bsk_isa isa, const bsk_bcsr *W, const float *X,
                        int64_t ldx, int64_t N, float *Y, int64_t ldy,
                        int transposed, int num_threads);
bsk_status bsk_spmm_f64(bsk_isa isa, const bsk_bcsr *W, const double *X,
                        int64_t ldx, int64_t N, double *Y, int64_t ldy,
                        int transposed, int num_threads);

/* ---- INT8 products ------------------------------------------------------- */

/* Largest K for which K * 255 * 128 fits in int32 (exact accumulation). */
#define BSK_MAX_K_INT8 ((int64_t)65793)

/*
 * Integer core with fused epilogue: acc = Wq (M, K) int8 @ X (K, N) uint8.
 * x_transposed == 1 means X is given as (N, K) (the Linear form);
 * y_transposed == 1 means the output is (N, M).  Output dtype by epi->kind:
 * int32, float32 or uint8.  Every ISA variant returns the same bits.
 */
bsk_status bsk_qspmm(bsk_isa isa, const bsk_qbcsr *W, const uint8_t *X,
                     int64_t ldx, int64_t N, int x_transposed, void *Y,
                     int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                     int num_threads);

/*
 * Dense INT8 weights for bsk_qgemm, packed once: the rows in blocks of
 * BSK_QGEMM_MR, each block stored K-group by K-group, so that the kernel
 * reads it linearly:
 *   panel[(b * G + g) * BSK_QGEMM_MR + r] = the 32-bit VNNI group holding
 *   W[b * MR + r, 4g .. 4g + 3] (little-endian bytes),
 * G = ceil(K / 4), ceil(M / MR) blocks; rows >= M and columns >= K are zero.
 */
#define BSK_QGEMM_MR 8
typedef struct {
    int64_t M, K;          /* matrix shape */
    const int32_t *panel;  /* ceil(M / MR) * ceil(K / 4) * MR groups */
} bsk_qdense;

/*
 * Dense INT8 product with the fused epilogue: acc = Wq (M, K) int8 @ X
 * (K, N) uint8, then epi exactly as bsk_qspmm (rowsum: the row sums of W).
 * Arguments as bsk_qspmm; every ISA variant returns the same bits, and the
 * same bits as bsk_qspmm with the same weights.
 */
bsk_status bsk_qgemm(bsk_isa isa, const bsk_qdense *W, const uint8_t *X,
                     int64_t ldx, int64_t N, int x_transposed, void *Y,
                     int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                     int num_threads);

/*
 * Quantize float32 X (rows, cols) to uint8 Q.  mode BSK_QUANT_STATIC uses
 * scale[0], zero[0]; BSK_QUANT_PER_TENSOR computes them from the data into
 * scale[0], zero[0]; BSK_QUANT_PER_ROW computes one pair per row into
 * scale[r], zero[r].  A range whose float32 width hi - lo overflows gets its
 * scale from the width in double precision, so finite input always has a
 * finite scale.  Returns BSK_ENONFINITE (Q then undefined) if X holds NaN or
 * Inf.  Every ISA variant gives the same bytes.
 */
enum { BSK_QUANT_STATIC = 0, BSK_QUANT_PER_TENSOR = 1, BSK_QUANT_PER_ROW = 2 };
bsk_status bsk_quantize_u8(bsk_isa isa, const float *X, int64_t rows,
                           int64_t cols, int64_t ldx, int mode, float *scale, int32_t *zero,
                           uint8_t *Q, int64_t ldq, int num_threads);

/*
 * The Linear form on float32 tokens: X (N, K) float32 quantized per token
 * exactly as bsk_quantize_u8's BSK_QUANT_PER_ROW mode (parameters into
 * x_scale[N], x_zero[N]), then Y (N, M) = the product with exactly one of
 * W (sparse) and D (dense) and epi, as bsk_qspmm / bsk_qgemm with
 * x_transposed = y_transposed = 1 (epi's x_scale and x_zero are ignored;
 * rowsum is required; no float term).  The grouped (4, 1) kernels quantize
 * each tile of tokens as they pack it (no uint8 copy of X); the others
 * quantize first.  Same bits on every ISA variant, and the bits of the two
 * separate calls.  BSK_ENONFINITE if X holds NaN or Inf.
 */
bsk_status bsk_qlinear_f32(bsk_isa isa, const bsk_qbcsr *W, const bsk_qdense *D,
                           const float *X, int64_t ldx, int64_t N, float *x_scale,
                           int32_t *x_zero, void *Y, int64_t ldy, const bsk_epilogue *epi,
                           int num_threads);

/* Name of the INT8 kernel that bsk_qspmm runs for this ISA and matrix. */
const char *bsk_qspmm_kernel_name(bsk_isa isa, const bsk_qbcsr *W);
/* Name of the kernel that bsk_qgemm runs for this ISA. */
const char *bsk_qgemm_kernel_name(bsk_isa isa);

#ifdef __cplusplus
}
#endif
#endif /* BLOCKSPARSE_BSK_H */
