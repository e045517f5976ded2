/*
 * CPU feature detection and kernel dispatch.  This is the only file that
 * knows every ISA variant; it is compiled with baseline flags, so nothing
 * reachable before detection uses instructions the CPU may lack.
 */
#include "blocksparse/bsk_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BSK_X86 1
#endif

/* ---- detection ----------------------------------------------------------- */

#ifdef BSK_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    /* xgetbv with ecx = 0, spelled as bytes so no -mxsave flag is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static int detect_mask(void)
{
    int mask = 1 << BSK_ISA_SCALAR;
#ifdef BSK_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return mask;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx)
        return mask;
    const uint64_t xcr0 = xgetbv0();
    const int ymm_os = (xcr0 & 0x6) == 0x6;         /* SSE + AVX state */
    const int zmm_os = ymm_os && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM hi */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return mask;
    const int avx2 = (b >> 5) & 1;
    const int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1;
    const int avx512vl = (b >> 31) & 1, avx512vnni = (c >> 11) & 1;
    unsigned a1 = 0, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    const int avxvnni = (a1 >> 4) & 1;
    if (ymm_os && avx2 && fma) {
        mask |= 1 << BSK_ISA_AVX2;
        if (avxvnni)
            mask |= 1 << BSK_ISA_AVX_VNNI;
        if (zmm_os && avx512f && avx512bw && avx512vl && avx512vnni)
            mask |= 1 << BSK_ISA_AVX512_VNNI;
    }
#endif
    return mask;
}

static int detected_cache = -1;

int bsk_isa_detected(bsk_isa isa)
{
    int mask = __atomic_load_n(&detected_cache, __ATOMIC_ACQUIRE);
    if (mask < 0) {
        mask = detect_mask(); /* idempotent: a race only repeats the work */
        __atomic_store_n(&detected_cache, mask, __ATOMIC_RELEASE);
    }
    return isa >= 0 && isa < BSK_ISA_COUNT && ((mask >> isa) & 1);
}

int bsk_isa_built(bsk_isa isa)
{
    switch (isa) {
    case BSK_ISA_SCALAR: return 1;
#ifdef BSK_HAVE_AVX2
    case BSK_ISA_AVX2: return 1;
#endif
#ifdef BSK_HAVE_AVX_VNNI
    case BSK_ISA_AVX_VNNI: return 1;
#endif
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_ISA_AVX512_VNNI: return 1;
#endif
    default: return 0;
    }
}

bsk_isa bsk_isa_best(void)
{
    for (int isa = BSK_ISA_COUNT - 1; isa > 0; isa--)
        if (bsk_isa_built((bsk_isa)isa) && bsk_isa_detected((bsk_isa)isa))
            return (bsk_isa)isa;
    return BSK_ISA_SCALAR;
}

const char *bsk_isa_name(bsk_isa isa)
{
    static const char *names[BSK_ISA_COUNT] = {"scalar", "avx2", "avx_vnni", "avx512_vnni"};
    return isa >= 0 && isa < BSK_ISA_COUNT ? names[isa] : "unknown";
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

/* ---- dispatch ------------------------------------------------------------ */

static int usable(bsk_isa isa)
{
    return bsk_isa_built(isa) && bsk_isa_detected(isa);
}

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
    if (!usable(isa))
        return BSK_EUNSUPPORTED;
    num_threads = threads_for(num_threads, W->nnzb * W->R * W->C, N);
    switch (isa) {
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_ISA_AVX512_VNNI:
        return bsk_spmm_f32_avx512_vnni(W, X, ldx, N, Y, ldy, transposed, num_threads);
#endif
#ifdef BSK_HAVE_AVX2
    case BSK_ISA_AVX_VNNI: /* no float instructions beyond AVX2 */
    case BSK_ISA_AVX2:
        return bsk_spmm_f32_avx2(W, X, ldx, N, Y, ldy, transposed, num_threads);
#endif
    default:
        return bsk_spmm_f32_scalar(W, X, ldx, N, Y, ldy, transposed, num_threads);
    }
}

bsk_status bsk_spmm_f64(bsk_isa isa, const bsk_bcsr *W, const double *X,
                        int64_t ldx, int64_t N, double *Y, int64_t ldy,
                        int transposed, int num_threads)
{
    if (!usable(isa))
        return BSK_EUNSUPPORTED;
    num_threads = threads_for(num_threads, W->nnzb * W->R * W->C, N);
    switch (isa) {
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_ISA_AVX512_VNNI:
        return bsk_spmm_f64_avx512_vnni(W, X, ldx, N, Y, ldy, transposed, num_threads);
#endif
#ifdef BSK_HAVE_AVX2
    case BSK_ISA_AVX_VNNI:
    case BSK_ISA_AVX2:
        return bsk_spmm_f64_avx2(W, X, ldx, N, Y, ldy, transposed, num_threads);
#endif
    default:
        return bsk_spmm_f64_scalar(W, X, ldx, N, Y, ldy, transposed, num_threads);
    }
}

static int qspmm_has_fast_path(const bsk_qbcsr *W)
{
    return (W->w.R == 1 && W->w.C == 4) || (W->w.R == 4 && W->w.C == 1 && W->gptr);
}

const char *bsk_qspmm_kernel_name(bsk_isa isa, const bsk_qbcsr *W)
{
    if (!qspmm_has_fast_path(W) || isa == BSK_ISA_SCALAR)
        return "bsk_qspmm_u8s8s32_scalar";
    const int strip = W->w.R == 4;
    switch (isa) {
    case BSK_ISA_AVX512_VNNI:
        return strip ? "bsk_qspmm_u8s8s32_strip4x1_avx512_vnni" : "bsk_qspmm_u8s8s32_row1x4_avx512_vnni";
    case BSK_ISA_AVX_VNNI:
        return strip ? "bsk_qspmm_u8s8s32_strip4x1_avx_vnni" : "bsk_qspmm_u8s8s32_row1x4_avx_vnni";
    default:
        return strip ? "bsk_qspmm_u8s8s32_strip4x1_avx2" : "bsk_qspmm_u8s8s32_row1x4_avx2";
    }
}

bsk_status bsk_qspmm(bsk_isa isa, const bsk_qbcsr *W, const uint8_t *X,
                     int64_t ldx, int64_t N, int x_transposed, void *Y,
                     int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                     int num_threads)
{
    if (!usable(isa))
        return BSK_EUNSUPPORTED;
    if (W->w.K > BSK_MAX_K_INT8)
        return BSK_EOVERFLOW;
    /* the packing and the epilogue are work too: count one MAC per output */
    num_threads = threads_for(num_threads, W->w.nnzb * W->w.R * W->w.C + W->w.M, N);
    bsk_status st = BSK_EUNSUPPORTED;
    if (qspmm_has_fast_path(W)) {
        switch (isa) {
#ifdef BSK_HAVE_AVX512_VNNI
        case BSK_ISA_AVX512_VNNI:
            st = bsk_qspmm_u8s8s32_avx512_vnni(W, X, ldx, N, x_transposed, Y, ldy,
                                               y_transposed, epi, num_threads);
            break;
#endif
#ifdef BSK_HAVE_AVX_VNNI
        case BSK_ISA_AVX_VNNI:
            st = bsk_qspmm_u8s8s32_avx_vnni(W, X, ldx, N, x_transposed, Y, ldy,
                                            y_transposed, epi, num_threads);
            break;
#endif
#ifdef BSK_HAVE_AVX2
        case BSK_ISA_AVX2:
            st = bsk_qspmm_u8s8s32_avx2(W, X, ldx, N, x_transposed, Y, ldy,
                                        y_transposed, epi, num_threads);
            break;
#endif
        default:
            break;
        }
    }
    if (st != BSK_EUNSUPPORTED)
        return st;
    /* any other block shape, or no vector variant: the reference kernel */
    return bsk_qspmm_u8s8s32_scalar(W, X, ldx, N, x_transposed, Y, ldy,
                                    y_transposed, epi, num_threads);
}

bsk_status bsk_quantize_u8(bsk_isa isa, const float *X, int64_t rows,
                           int64_t cols, int64_t ldx, int mode, float *scale,
                           int32_t *zero, uint8_t *Q, int64_t ldq, int num_threads)
{
    if (!usable(isa))
        return BSK_EUNSUPPORTED;
    switch (isa) {
#ifdef BSK_HAVE_AVX512_VNNI
    case BSK_ISA_AVX512_VNNI:
        return bsk_quantize_u8_avx512_vnni(X, rows, cols, ldx, mode, scale, zero, Q, ldq, num_threads);
#endif
#ifdef BSK_HAVE_AVX_VNNI
    case BSK_ISA_AVX_VNNI:
        return bsk_quantize_u8_avx_vnni(X, rows, cols, ldx, mode, scale, zero, Q, ldq, num_threads);
#endif
#ifdef BSK_HAVE_AVX2
    case BSK_ISA_AVX2:
        return bsk_quantize_u8_avx2(X, rows, cols, ldx, mode, scale, zero, Q, ldq, num_threads);
#endif
    default:
        return bsk_quantize_u8_scalar(X, rows, cols, ldx, mode, scale, zero, Q, ldq, num_threads);
    }
}
