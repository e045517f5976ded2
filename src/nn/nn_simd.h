/*
 * Helpers shared by the encoder kernels in src/nn.
 *
 * The encoder kernels live in bsk_core, which is compiled with baseline
 * flags.  Each kernel body is therefore written once, on 16-lane GCC vector
 * types, and instantiated several times inside `#pragma GCC target` regions
 * (AVX-512, AVX2+FMA, baseline).  Everything here is static inline and
 * always_inline, so each instantiation gets its own copy compiled for its
 * own target and no wide instruction can reach code that runs before the
 * dispatcher has checked the CPU (bsk_isa_detected).
 *
 * OpenMP regions stay in the baseline dispatchers: they hand contiguous,
 * deterministic ranges of work to the per-ISA functions, so results do not
 * depend on the thread count.
 */
#ifndef BLOCKSPARSE_NN_SIMD_H
#define BLOCKSPARSE_NN_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blocksparse/bsk_internal.h"
#include "blocksparse/bsk_nn.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define BSK_NN_X86 1
#else
#define BSK_NN_X86 0
#endif

typedef uint8_t bsk_nn_v16b __attribute__((vector_size(16)));
typedef uint8_t bsk_nn_v16b_u __attribute__((vector_size(16), aligned(1)));

#define BSK_NN_CAT2(a, b) a##_##b
#define BSK_NN_CAT(a, b) BSK_NN_CAT2(a, b)

/* Arguments of the row-wise kernels (rowwise.c); unused fields are NULL. */
typedef struct {
    const float *X;
    int64_t ldx;
    const float *Res;
    int64_t ldr;
    float *Y;
    int64_t ldy;
    int64_t cols;
    const float *gamma, *beta, *bias;
    float eps;
    int act;
    uint8_t *Q;
    int64_t ldq;
    float *q_scale;
    int32_t *q_zero;
    const float *q_mul;
} bsk_nn_rows_args;

BSK_INLINE bsk_v16f bsk_nn_load(const float *p)
{
    return *(const bsk_v16f_u *)p;
}

BSK_INLINE void bsk_nn_store(float *p, bsk_v16f v)
{
    *(bsk_v16f_u *)p = v;
}

/* Load `count` (< 16 allowed) floats, zero-filling the rest. */
BSK_INLINE bsk_v16f bsk_nn_load_part(const float *p, int64_t count)
{
    if (count >= 16)
        return bsk_nn_load(p);
    bsk_v16f v = (bsk_v16f){0};
    memcpy(&v, p, (size_t)count * sizeof(float));
    return v;
}

BSK_INLINE void bsk_nn_store_part(float *p, bsk_v16f v, int64_t count)
{
    if (count >= 16)
        bsk_nn_store(p, v);
    else
        memcpy(p, &v, (size_t)count * sizeof(float));
}

BSK_INLINE float bsk_nn_hsum(bsk_v16f v)
{
    /* pairwise tree: a fixed order, so the same on every ISA */
    float s8[8], s4[4];
    for (int i = 0; i < 8; i++)
        s8[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++)
        s4[i] = s8[i] + s8[i + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

BSK_INLINE float bsk_nn_hmax(bsk_v16f v)
{
    float m = v[0];
    for (int i = 1; i < 16; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

BSK_INLINE float bsk_nn_hmin(bsk_v16f v)
{
    float m = v[0];
    for (int i = 1; i < 16; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

/*
 * exp(x) for x <= 0 (softmax arguments), Cephes-style: x = n ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for exp(r) (about 1 ulp), and 2^n put
 * into the exponent bits.  x below -87 gives about 1.6e-38, never 0: the
 * callers zero masked entries explicitly.
 */
BSK_INLINE bsk_v16f bsk_nn_exp16(bsk_v16f x)
{
    x = bsk_select(x > -87.0f, x, (bsk_v16f){0} - 87.0f);
    x = bsk_select(x < 88.0f, x, (bsk_v16f){0} + 88.0f);
    bsk_v16f n = x * 1.44269504088896341f;
    n = (n + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    bsk_v16f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    bsk_v16f p = (bsk_v16f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    bsk_v16f y = p * (r * r) + r + 1.0f;
    bsk_v16i e = (__builtin_convertvector(n, bsk_v16i) + 127) << 23;
    return y * (bsk_v16f)e;
}

/*
 * Dynamic per-row uint8 quantization, the same arithmetic as
 * bsk_quantize_u8 (src/quantize.c) and blocksparse.quantize_activations:
 *   lo = min(x, 0), hi = max(x, 0), scale = (hi - lo) / 255 (1 if 0),
 *   zero = clip(rint(-lo / scale), 0, 255),
 *   q = clip(rint(x / scale) + zero, 0, 255).
 * Only compares, adds and divides: the same bits on every ISA.
 */
BSK_INLINE float bsk_nn_rint_clamped(float v)
{
    v = v > -512.0f ? v : -512.0f;
    v = v < 512.0f ? v : 512.0f;
    return (v + 12582912.0f) - 12582912.0f;
}

BSK_INLINE void bsk_nn_qparams(float lo, float hi, float *scale, int32_t *zero)
{
    float s = (hi - lo) / 255.0f;
    if (!(s > 0.0f))
        s = 1.0f;
    float z = bsk_nn_rint_clamped(-lo / s);
    z = z < 0.0f ? 0.0f : z > 255.0f ? 255.0f : z;
    *scale = s;
    *zero = (int32_t)z;
}

/* x[k] * mul[k], or x[k] without mul; `count` < 16 zero-fills the rest */
BSK_INLINE bsk_v16f bsk_nn_load_mul(const float *x, const float *mul, int64_t count)
{
    bsk_v16f v = bsk_nn_load_part(x, count);
    return mul ? v * bsk_nn_load_part(mul, count) : v;
}

BSK_INLINE void bsk_nn_range(const float *x, const float *mul, int64_t n, float *lo,
                             float *hi)
{
    /* four independent min/max chains: the compare-select latency, not the
     * loads, would otherwise bound the loop */
    bsk_v16f vlo[4] = {{0}}, vhi[4] = {{0}};
    int64_t k = 0;
    for (; k + 64 <= n; k += 64) {
        for (int u = 0; u < 4; u++) {
            const bsk_v16f v = bsk_nn_load_mul(x + k + 16 * u, mul ? mul + k + 16 * u : 0, 16);
            vlo[u] = bsk_select(v < vlo[u], v, vlo[u]);
            vhi[u] = bsk_select(v > vhi[u], v, vhi[u]);
        }
    }
    for (; k < n; k += 16) {
        /* zero-filled tail lanes are harmless: the range always holds 0 */
        const bsk_v16f v = bsk_nn_load_mul(x + k, mul ? mul + k : 0, n - k);
        vlo[0] = bsk_select(v < vlo[0], v, vlo[0]);
        vhi[0] = bsk_select(v > vhi[0], v, vhi[0]);
    }
    for (int u = 1; u < 4; u++) {
        vlo[0] = bsk_select(vlo[u] < vlo[0], vlo[u], vlo[0]);
        vhi[0] = bsk_select(vhi[u] > vhi[0], vhi[u], vhi[0]);
    }
    *lo = bsk_nn_hmin(vlo[0]);
    *hi = bsk_nn_hmax(vhi[0]);
}

BSK_INLINE bsk_nn_v16b bsk_nn_quant16(bsk_v16f v, float s, float zf)
{
    v = v / s;
    v = bsk_select(v > -512.0f, v, (bsk_v16f){0} - 512.0f);
    v = bsk_select(v < 512.0f, v, (bsk_v16f){0} + 512.0f);
    v = (v + 12582912.0f) - 12582912.0f;
    v = v + zf;
    v = bsk_select(v > 0.0f, v, (bsk_v16f){0});
    v = bsk_select(v < 255.0f, v, (bsk_v16f){0} + 255.0f);
    return __builtin_convertvector(__builtin_convertvector(v, bsk_v16i), bsk_nn_v16b);
}

/* Quantize row x (times mul, if not NULL) with its own scale and zero point. */
BSK_INLINE void bsk_nn_quant_row(const float *x, const float *mul, int64_t n, uint8_t *q,
                                 float *scale, int32_t *zero)
{
    float lo, hi;
    bsk_nn_range(x, mul, n, &lo, &hi);
    bsk_nn_qparams(lo, hi, scale, zero);
    const float s = *scale, zf = (float)*zero;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        *(bsk_nn_v16b_u *)(q + k) = bsk_nn_quant16(bsk_nn_load_mul(x + k, mul ? mul + k : 0, 16),
                                                   s, zf);
    if (k < n) {
        bsk_nn_v16b b = bsk_nn_quant16(bsk_nn_load_mul(x + k, mul ? mul + k : 0, n - k), s, zf);
        memcpy(q + k, &b, (size_t)(n - k));
    }
}

/*
 * Which instantiation serves `isa`: 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline,
 * -1 = the ISA is not usable (not built or not supported by this CPU).
 */
BSK_INLINE int bsk_nn_level(bsk_isa isa)
{
    if (!bsk_isa_built(isa) || !bsk_isa_detected(isa))
        return -1;
#if BSK_NN_X86 && defined(BSK_HAVE_AVX512_VNNI)
    if (isa == BSK_ISA_AVX512_VNNI)
        return 2;
#endif
#if BSK_NN_X86 && defined(BSK_HAVE_AVX2)
    if (isa == BSK_ISA_AVX2 || isa == BSK_ISA_AVX_VNNI || isa == BSK_ISA_AVX512_VNNI)
        return 1;
#endif
    return 0;
}

#endif /* BLOCKSPARSE_NN_SIMD_H */
