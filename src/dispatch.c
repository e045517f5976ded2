/*
 * CPU feature detection, the kernel tables and dispatch.  This is the only
 * file that knows every ISA variant.  It is compiled with baseline flags, so
 * nothing that runs before the CPU check uses instructions the CPU may lack.
 *
 * Each variant has one table of kernel pointers (bsk_kernels, bsk_internal.h)
 * and, from setup.py, the mask of the CPU features its compiler flags enable
 * (see cpu_features.h).  One detection routine reads CPUID and XCR0 once and
 * fills `usable` with the tables of the variants that are built and whose
 * every feature, and the register state it needs, is present.  Everything
 * else looks up bsk_kernels_for(isa)->fn.
 */
#include "bsk_internal.h"
#include "cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BSK_X86 1
#endif

/* What setup.py passes for every variant it describes, built or not:
 *   BSK_VARIANT_FEATURES  [BSK_ISA_<V>] = {1, features its flags enable}, ...
 *   BSK_VARIANT_FLAGS     [BSK_ISA_<V>] = "its compiler flags", ...
 * A variant missing from them (say, this file built by another build system)
 * is never detected. */
#ifndef BSK_VARIANT_FEATURES
#define BSK_VARIANT_FEATURES
#endif
#ifndef BSK_VARIANT_FLAGS
#define BSK_VARIANT_FLAGS
#endif

/* ---- the kernel tables ------------------------------------------------------ */

static const bsk_kernels scalar_kernels = {
    .spmm_f32 = bsk_spmm_f32_scalar,
    .spmm_f64 = bsk_spmm_f64_scalar,
    .qspmm = NULL,
    .qgemm = bsk_qgemm_u8s8s32_scalar,
    .qgemm_name = "bsk_qgemm_u8s8s32_scalar",
    .quantize_u8 = bsk_quantize_u8_scalar,
    .nn_tokens = &bsk_nn_tokens_scalar,
    .nn_attention = &bsk_nn_attention_scalar,
    .nn_attention_q8 = &bsk_nn_attention_q8_scalar,
};

#ifdef BSK_HAVE_AVX2
static const bsk_kernels avx2_kernels = {
    .spmm_f32 = bsk_spmm_f32_avx2,
    .spmm_f64 = bsk_spmm_f64_avx2,
    .qspmm = bsk_qspmm_u8s8s32_avx2,
    .qspmm_row_name = "bsk_qspmm_u8s8s32_row1x4_avx2",
    .qspmm_strip_name = "bsk_qspmm_u8s8s32_strip4x1_avx2",
    .qlinear_f32 = bsk_qlinear_f32_avx2,
    .qgemm = bsk_qgemm_u8s8s32_avx2,
    .qgemm_name = "bsk_qgemm_u8s8s32_avx2",
    .quantize_u8 = bsk_quantize_u8_avx2,
    .nn_tokens = &bsk_nn_tokens_avx2,
    .nn_attention = &bsk_nn_attention_avx2,
    .nn_attention_q8 = &bsk_nn_attention_q8_avx2,
};
#endif

#if defined(BSK_HAVE_AVX_VNNI) && defined(BSK_HAVE_AVX2)
/* no float instructions beyond AVX2: the float and encoder kernels are AVX2's
 * (the INT8 attention is its own) */
static const bsk_kernels avx_vnni_kernels = {
    .spmm_f32 = bsk_spmm_f32_avx2,
    .spmm_f64 = bsk_spmm_f64_avx2,
    .qspmm = bsk_qspmm_u8s8s32_avx_vnni,
    .qspmm_row_name = "bsk_qspmm_u8s8s32_row1x4_avx_vnni",
    .qspmm_strip_name = "bsk_qspmm_u8s8s32_strip4x1_avx_vnni",
    .qlinear_f32 = bsk_qlinear_f32_avx_vnni,
    .qgemm = bsk_qgemm_u8s8s32_avx_vnni,
    .qgemm_name = "bsk_qgemm_u8s8s32_avx_vnni",
    .quantize_u8 = bsk_quantize_u8_avx_vnni,
    .nn_tokens = &bsk_nn_tokens_avx2,
    .nn_attention = &bsk_nn_attention_avx2,
    .nn_attention_q8 = &bsk_nn_attention_q8_avx_vnni,
};
#endif

#ifdef BSK_HAVE_AVX512_VNNI
static const bsk_kernels avx512_vnni_kernels = {
    .spmm_f32 = bsk_spmm_f32_avx512_vnni,
    .spmm_f64 = bsk_spmm_f64_avx512_vnni,
    .qspmm = bsk_qspmm_u8s8s32_avx512_vnni,
    .qspmm_row_name = "bsk_qspmm_u8s8s32_row1x4_avx512_vnni",
    .qspmm_strip_name = "bsk_qspmm_u8s8s32_strip4x1_avx512_vnni",
    .qlinear_f32 = bsk_qlinear_f32_avx512_vnni,
    .qgemm = bsk_qgemm_u8s8s32_avx512_vnni,
    .qgemm_name = "bsk_qgemm_u8s8s32_avx512_vnni",
    .quantize_u8 = bsk_quantize_u8_avx512_vnni,
    .nn_tokens = &bsk_nn_tokens_avx512_vnni,
    .nn_attention = &bsk_nn_attention_avx512_vnni,
    .nn_attention_q8 = &bsk_nn_attention_q8_avx512_vnni,
};
#endif

/* Every variant compiled into this build, by bsk_isa. */
static const bsk_kernels *const built[BSK_ISA_COUNT] = {
    [BSK_ISA_SCALAR] = &scalar_kernels,
#ifdef BSK_HAVE_AVX2
    [BSK_ISA_AVX2] = &avx2_kernels,
#endif
#if defined(BSK_HAVE_AVX_VNNI) && defined(BSK_HAVE_AVX2)
    [BSK_ISA_AVX_VNNI] = &avx_vnni_kernels,
#endif
#ifdef BSK_HAVE_AVX512_VNNI
    [BSK_ISA_AVX512_VNNI] = &avx512_vnni_kernels,
#endif
};

/* The features of every described variant, built or not (so that `info` can
 * say what this CPU could run), and the flags of each. */
static const struct {
    int described;
    uint64_t features;
} variant_features[BSK_ISA_COUNT] = {[BSK_ISA_SCALAR] = {1, 0}, BSK_VARIANT_FEATURES};
static const char *const variant_flags[BSK_ISA_COUNT] = {[BSK_ISA_SCALAR] = "",
                                                         BSK_VARIANT_FLAGS};

static const char *const isa_names[BSK_ISA_COUNT] = {
    [BSK_ISA_SCALAR] = "scalar",
    [BSK_ISA_AVX2] = "avx2",
    [BSK_ISA_AVX_VNNI] = "avx_vnni",
    [BSK_ISA_AVX512_VNNI] = "avx512_vnni",
};

/* ---- detection ---------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned leaf, subleaf, reg, bit;
    uint64_t xcr0;
} features[BSK_FEATURE_COUNT] = {
#define BSK_FEATURE_ROW(name, leaf, sub, reg, bit, xcr0) {#name, leaf, sub, reg, bit, xcr0},
    BSK_CPU_FEATURES(BSK_FEATURE_ROW)
#undef BSK_FEATURE_ROW
};

#ifdef BSK_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    /* xgetbv with ecx = 0, spelled as bytes so no -mxsave flag is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

uint64_t bsk_cpu_features(uint64_t *xcr0)
{
    uint64_t mask = 0, state = 0;
#ifdef BSK_X86
    const unsigned max_leaf = __get_cpuid_max(0, NULL);
    for (int f = 0; f < BSK_FEATURE_COUNT; f++) {
        unsigned r[4] = {0, 0, 0, 0};
        if (features[f].leaf > max_leaf ||
            !__get_cpuid_count(features[f].leaf, features[f].subleaf, &r[0], &r[1], &r[2],
                               &r[3]))
            continue;
        if ((r[features[f].reg] >> features[f].bit) & 1)
            mask |= UINT64_C(1) << f;
    }
    unsigned a, b, c, d;
    /* XGETBV exists only where the OS has enabled XSAVE (CPUID.1:ECX.OSXSAVE) */
    if (__get_cpuid(1, &a, &b, &c, &d) && ((c >> 27) & 1))
        state = xgetbv0();
#endif
    if (xcr0)
        *xcr0 = state;
    return mask;
}

uint32_t bsk_isa_mask_for(uint64_t cpu_features, uint64_t xcr0)
{
    uint32_t mask = 0;
    for (int isa = 0; isa < BSK_ISA_COUNT; isa++) {
        if (!variant_features[isa].described)
            continue;
        const uint64_t need = variant_features[isa].features;
        uint64_t need_state = 0;
        for (int f = 0; f < BSK_FEATURE_COUNT; f++)
            if ((need >> f) & 1)
                need_state |= features[f].xcr0;
        if ((need & ~cpu_features) == 0 && (need_state & ~xcr0) == 0)
            mask |= UINT32_C(1) << isa;
    }
    return mask;
}

/* The tables of the built variants this CPU can run, filled once. */
static const bsk_kernels *usable[BSK_ISA_COUNT];
static uint32_t detected_mask;
static int detection_done;

static void detect(void)
{
    if (__atomic_load_n(&detection_done, __ATOMIC_ACQUIRE))
        return;
    /* idempotent: threads racing here compute and store the same values */
    uint64_t xcr0;
    const uint64_t cpu = bsk_cpu_features(&xcr0);
    const uint32_t mask = bsk_isa_mask_for(cpu, xcr0);
    for (int isa = 0; isa < BSK_ISA_COUNT; isa++)
        __atomic_store_n(&usable[isa], (mask >> isa) & 1 ? built[isa] : NULL,
                         __ATOMIC_RELAXED);
    __atomic_store_n(&detected_mask, mask, __ATOMIC_RELAXED);
    __atomic_store_n(&detection_done, 1, __ATOMIC_RELEASE);
}

const bsk_kernels *bsk_kernels_for(bsk_isa isa)
{
    if (isa < 0 || isa >= BSK_ISA_COUNT)
        return NULL;
    detect();
    return __atomic_load_n(&usable[isa], __ATOMIC_RELAXED);
}

int bsk_isa_detected(bsk_isa isa)
{
    detect();
    return isa >= 0 && isa < BSK_ISA_COUNT &&
           ((__atomic_load_n(&detected_mask, __ATOMIC_RELAXED) >> isa) & 1);
}

int bsk_isa_built(bsk_isa isa)
{
    return isa >= 0 && isa < BSK_ISA_COUNT && built[isa] != NULL;
}

bsk_isa bsk_isa_best(void)
{
    for (int isa = BSK_ISA_COUNT - 1; isa > 0; isa--)
        if (bsk_kernels_for((bsk_isa)isa))
            return (bsk_isa)isa;
    return BSK_ISA_SCALAR;
}

const char *bsk_isa_name(bsk_isa isa)
{
    return isa >= 0 && isa < BSK_ISA_COUNT ? isa_names[isa] : "unknown";
}

uint64_t bsk_isa_features(bsk_isa isa)
{
    return isa >= 0 && isa < BSK_ISA_COUNT ? variant_features[isa].features : 0;
}

const char *bsk_isa_flags(bsk_isa isa)
{
    return bsk_isa_built(isa) ? variant_flags[isa] : NULL;
}

const char *bsk_feature_name(int bit)
{
    return bit >= 0 && bit < BSK_FEATURE_COUNT ? features[bit].name : NULL;
}

int bsk_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int bsk_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- dispatch ----------------------------------------------------------------- */

/* Waking a second thread costs microseconds (far more when the other core
 * is busy), so products with little work run on the calling thread only.
 * The threshold is in multiply-adds of stored work; results do not depend
 * on the thread count, so this changes speed only. */
static int64_t min_work_per_thread = (int64_t)1 << 17;

int64_t bsk_set_min_work_per_thread(int64_t work)
{
    return __atomic_exchange_n(&min_work_per_thread, work < 0 ? 0 : work, __ATOMIC_RELAXED);
}

static int threads_for(int num_threads, int64_t nnz, int64_t N)
{
    if (num_threads < 1)
        return 1;
    const int64_t per = __atomic_load_n(&min_work_per_thread, __ATOMIC_RELAXED);
    if (per == 0)
        return num_threads;
    const int64_t work = nnz * (N > 0 ? N : 1);
    const int64_t most = work / per;
    return most < 1 ? 1 : (most < num_threads ? (int)most : num_threads);
}

bsk_status bsk_spmm_f32(bsk_isa isa, const bsk_bcsr *W, const float *X,
                        int64_t ldx, int64_t N, float *Y, int64_t ldy,
                        int transposed, int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    num_threads = threads_for(num_threads, W->nnzb * W->R * W->C, N);
    return k->spmm_f32(W, X, ldx, N, Y, ldy, transposed, num_threads);
}

bsk_status bsk_spmm_f64(bsk_isa isa, const bsk_bcsr *W, const double *X,
                        int64_t ldx, int64_t N, double *Y, int64_t ldy,
                        int transposed, int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    num_threads = threads_for(num_threads, W->nnzb * W->R * W->C, N);
    return k->spmm_f64(W, X, ldx, N, Y, ldy, transposed, num_threads);
}

/* The one choice of INT8 kernel, used to run it and to name it: the variant's
 * vector kernel for blocksize (1, 4) and grouped (4, 1), else the scalar one
 * (any block shape, same results). */
static bsk_qspmm_fn choose_qspmm(const bsk_kernels *k, const bsk_qbcsr *W, const char **name)
{
    const int row = W->w.R == 1 && W->w.C == 4;
    const int strip = W->w.R == 4 && W->w.C == 1 && W->gptr;
    if (k && k->qspmm && (row || strip)) {
        *name = strip ? k->qspmm_strip_name : k->qspmm_row_name;
        return k->qspmm;
    }
    *name = "bsk_qspmm_u8s8s32_scalar";
    return bsk_qspmm_u8s8s32_scalar;
}

bsk_qspmm_fn bsk_qspmm_pick(const bsk_kernels *k, const bsk_qbcsr *W)
{
    const char *name;
    return choose_qspmm(k, W, &name);
}

const char *bsk_qspmm_kernel_name(bsk_isa isa, const bsk_qbcsr *W)
{
    const char *name;
    if (!bsk_isa_built(isa))
        return "bsk_qspmm";
    choose_qspmm(built[isa], W, &name);
    return name;
}

/* The epilogue's float term is for float outputs in the (M, N) layout
 * (bsk_epi_apply; the kernels' token-major epilogue has none). */
static int float_term_ok(const bsk_epilogue *epi, int y_transposed)
{
    return !epi || !epi->f_x ||
           (!y_transposed && epi->kind != BSK_OUT_I32 && epi->f_ncols >= 0 &&
            (!epi->f_ncols || (epi->f_cols && epi->f_dense)) &&
            (!epi->f_indptr || (epi->f_indices && epi->f_data)));
}

/* The epilogue float term's work for threads_for, in INT8 MACs: a float32
 * multiply-add per stored float weight and token, four lanes' worth of an
 * INT8 dot-product lane. */
static int64_t float_term_work(const bsk_epilogue *epi, int64_t M)
{
    if (!epi || !epi->f_x)
        return 0;
    return 4 * (M * epi->f_ncols + (epi->f_indptr ? (int64_t)epi->f_indptr[M] : 0));
}

bsk_status bsk_qspmm(bsk_isa isa, const bsk_qbcsr *W, const uint8_t *X,
                     int64_t ldx, int64_t N, int x_transposed, void *Y,
                     int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                     int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (W->w.K > BSK_MAX_K_INT8)
        return BSK_EOVERFLOW;
    if (!float_term_ok(epi, y_transposed))
        return BSK_EINVAL;
    /* the packing and the epilogue are work too: count one MAC per output */
    num_threads = threads_for(num_threads, W->w.nnzb * W->w.R * W->w.C + W->w.M +
                                               float_term_work(epi, W->w.M), N);
    const char *name;
    const bsk_qspmm_fn fn = choose_qspmm(k, W, &name);
    return fn(W, X, ldx, N, x_transposed, Y, ldy, y_transposed, epi, num_threads);
}

bsk_status bsk_qlinear_f32(bsk_isa isa, const bsk_qbcsr *W, const bsk_qdense *D,
                           const float *X, int64_t ldx, int64_t N, float *x_scale,
                           int32_t *x_zero, void *Y, int64_t ldy, const bsk_epilogue *epi,
                           int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (!W == !D || !epi->rowsum || epi->f_x || N < 0)
        return BSK_EINVAL;
    const int64_t M = W ? W->w.M : D->M, K = W ? W->w.K : D->K;
    if (K > BSK_MAX_K_INT8)
        return BSK_EOVERFLOW;
    if (N == 0)
        return BSK_OK;
    const int strip = W && W->w.R == 4 && W->w.C == 1 && W->gptr;
    if (strip && M > 0 && k->qlinear_f32) {
        /* quantizing a token is about one MAC per value */
        const int nt = threads_for(num_threads, W->w.nnzb * 4 + M + K, N);
        return k->qlinear_f32(W, X, ldx, N, x_scale, x_zero, Y, ldy, epi, nt);
    }
    /* the other kernels: quantize into the calling thread's scratch, then the
     * product (the same bytes and the same bits) */
    uint8_t *Q = (uint8_t *)bsk_scratch(BSK_SCRATCH_XQUANT, (size_t)(N * K) + 1);
    if (!Q)
        return BSK_ENOMEM;
    bsk_status st = bsk_quantize_u8(isa, X, N, K, ldx, BSK_QUANT_PER_ROW, x_scale, x_zero, Q, K,
                                    num_threads);
    if (st != BSK_OK)
        return st;
    bsk_epilogue e = *epi;
    e.x_scale = x_scale;
    e.x_zero = x_zero;
    return W ? bsk_qspmm(isa, W, Q, K, N, 1, Y, ldy, 1, &e, num_threads)
             : bsk_qgemm(isa, D, Q, K, N, 1, Y, ldy, 1, &e, num_threads);
}

const char *bsk_qgemm_kernel_name(bsk_isa isa)
{
    return bsk_isa_built(isa) ? built[isa]->qgemm_name : "bsk_qgemm";
}

bsk_status bsk_qgemm(bsk_isa isa, const bsk_qdense *W, const uint8_t *X,
                     int64_t ldx, int64_t N, int x_transposed, void *Y,
                     int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                     int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    if (W->K > BSK_MAX_K_INT8)
        return BSK_EOVERFLOW;
    if (!float_term_ok(epi, y_transposed))
        return BSK_EINVAL;
    num_threads = threads_for(num_threads, W->M * W->K + W->M + float_term_work(epi, W->M), N);
    return k->qgemm(W, X, ldx, N, x_transposed, Y, ldy, y_transposed, epi, num_threads);
}

bsk_status bsk_quantize_u8(bsk_isa isa, const float *X, int64_t rows,
                           int64_t cols, int64_t ldx, int mode, float *scale,
                           int32_t *zero, uint8_t *Q, int64_t ldq, int num_threads)
{
    const bsk_kernels *k = bsk_kernels_for(isa);
    if (!k)
        return BSK_EUNSUPPORTED;
    return k->quantize_u8(X, rows, cols, ldx, mode, scale, zero, Q, ldq, num_threads);
}
