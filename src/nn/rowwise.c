/*
 * Row-wise encoder kernels: residual add + LayerNorm (+ uint8 quantization
 * of the result), bias + activation, per-row uint8 quantization.
 * rowwise_body.h is instantiated for the baseline, AVX2+FMA and AVX-512;
 * the dispatchers below pick one with bsk_nn_level and split the rows over
 * the threads.
 */
#include "nn_simd.h"

#define BSK_NN_SFX base
#include "rowwise_body.h"
#undef BSK_NN_SFX

#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define BSK_NN_SFX avx2
#include "rowwise_body.h"
#undef BSK_NN_SFX
#pragma GCC pop_options
#endif

#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#pragma GCC optimize("fp-contract=fast")
#define BSK_NN_SFX avx512
#include "rowwise_body.h"
#undef BSK_NN_SFX
#pragma GCC pop_options
#endif

typedef void (*rows_fn)(const bsk_nn_rows_args *, int64_t, int64_t);

#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
#define BSK_NN_AVX2_OR_BASE(name) name##_avx2
#else
#define BSK_NN_AVX2_OR_BASE(name) name##_base
#endif
#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
#define BSK_NN_AVX512_OR_BASE(name) name##_avx512
#else
#define BSK_NN_AVX512_OR_BASE(name) name##_base
#endif
#define BSK_NN_TABLE(name) \
    {name##_base, BSK_NN_AVX2_OR_BASE(name), BSK_NN_AVX512_OR_BASE(name)}

static const rows_fn add_layernorm_fns[3] = BSK_NN_TABLE(add_layernorm_rows);
static const rows_fn bias_act_fns[3] = BSK_NN_TABLE(bias_act_rows);
static const rows_fn quantize_fns[3] = BSK_NN_TABLE(quantize_rows);

/* Split rows [0, rows) over up to num_threads threads (fewer for small
 * inputs, where waking threads costs more than the work). */
static bsk_status run_rows(const rows_fn *table, bsk_isa isa, const bsk_nn_rows_args *a,
                           int64_t rows, int num_threads)
{
    const int level = bsk_nn_level(isa);
    if (level < 0)
        return BSK_EUNSUPPORTED;
    if (rows <= 0 || a->cols <= 0)
        return BSK_OK;
    const rows_fn fn = table[level];
    int64_t nt = num_threads < 1 ? 1 : num_threads;
    const int64_t by_work = rows * a->cols / 8192;
    if (nt > by_work)
        nt = by_work > 1 ? by_work : 1;
    if (nt > rows)
        nt = rows;
    if (nt == 1) {
        fn(a, 0, rows);
        return BSK_OK;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)nt)
    {
        int64_t lo, hi;
        bsk_split(rows, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
        fn(a, lo, hi);
    }
#else
    fn(a, 0, rows);
#endif
    return BSK_OK;
}

static int bad_dims(int64_t rows, int64_t cols, int64_t ld)
{
    return rows < 0 || cols < 0 || ld < cols;
}

bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int64_t ldx,
                                 const float *Res, int64_t ldr, int64_t rows,
                                 int64_t cols, const float *gamma,
                                 const float *beta, float eps, float *Y,
                                 int64_t ldy, uint8_t *Q, int64_t ldq,
                                 float *q_scale, int32_t *q_zero,
                                 const float *q_mul, int num_threads)
{
    if (bad_dims(rows, cols, ldx) || bad_dims(rows, cols, ldy) ||
        (Res && ldr < cols) || (Q && (ldq < cols || !q_scale || !q_zero)) ||
        !(eps >= 0.0f) || (rows && cols && (!X || !Y || !gamma || !beta)))
        return BSK_EINVAL;
    bsk_nn_rows_args a = {0};
    a.X = X;
    a.ldx = ldx;
    a.Res = Res;
    a.ldr = ldr;
    a.Y = Y;
    a.ldy = ldy;
    a.cols = cols;
    a.gamma = gamma;
    a.beta = beta;
    a.eps = eps;
    a.Q = Q;
    a.ldq = ldq;
    a.q_scale = q_scale;
    a.q_zero = q_zero;
    a.q_mul = q_mul;
    return run_rows(add_layernorm_fns, isa, &a, rows, num_threads);
}

bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t rows, int64_t cols,
                            int64_t ldy, const float *bias, int act,
                            int num_threads)
{
    if (bad_dims(rows, cols, ldy) || act < BSK_ACT_NONE || act > BSK_ACT_GELU ||
        (rows && cols && !Y))
        return BSK_EINVAL;
    bsk_nn_rows_args a = {0};
    a.Y = Y;
    a.ldy = ldy;
    a.cols = cols;
    a.bias = bias;
    a.act = act;
    return run_rows(bias_act_fns, isa, &a, rows, num_threads);
}

bsk_status bsk_quantize_rows_u8(bsk_isa isa, const float *X, int64_t rows,
                                int64_t cols, int64_t ldx, uint8_t *Q,
                                int64_t ldq, float *q_scale, int32_t *q_zero,
                                const float *q_mul, int num_threads)
{
    if (bad_dims(rows, cols, ldx) || ldq < cols ||
        (rows && (!X || !Q || !q_scale || !q_zero)))
        return BSK_EINVAL;
    bsk_nn_rows_args a = {0};
    a.X = X;
    a.ldx = ldx;
    a.cols = cols;
    a.Q = Q;
    a.ldq = ldq;
    a.q_scale = q_scale;
    a.q_zero = q_zero;
    a.q_mul = q_mul;
    if (cols == 0) {
        /* an empty row quantizes with scale 1, zero point 0 */
        for (int64_t r = 0; r < rows; r++) {
            q_scale[r] = 1.0f;
            q_zero[r] = 0;
        }
        return BSK_OK;
    }
    return run_rows(quantize_fns, isa, &a, rows, num_threads);
}
