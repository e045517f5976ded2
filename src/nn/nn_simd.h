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
 * Layout (bsk_nn.h): activations are features x tokens, row-major, so one
 * 16-lane vector holds one feature of 16 consecutive tokens.  Per-token
 * reductions (LayerNorm statistics, quantization ranges, softmax over keys)
 * are then lane-wise: no horizontal operations, and the order of every sum
 * is fixed by the feature loop alone.
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

/* Arguments of the token-block kernels (tokens.c); unused fields are NULL. */
typedef struct {
    const float *X;       /* (features, tokens) */
    const float *Xt;      /* (tokens, features), transposed into Y first */
    const float *Res;     /* (features, tokens) */
    float *Y;             /* (features, tokens) */
    int64_t features, tokens;
    const float *gamma, *beta, *bias;
    float eps;
    int act;
    uint8_t *Q;           /* (features, tokens) */
    float *q_scale;       /* (tokens) */
    int32_t *q_zero;      /* (tokens) */
    const float *q_mul;   /* (features) */
} bsk_nn_tok_args;

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

BSK_INLINE void bsk_nn_store_bytes(uint8_t *p, bsk_nn_v16b v, int64_t count)
{
    if (count >= 16)
        *(bsk_nn_v16b_u *)p = v;
    else
        memcpy(p, &v, (size_t)count);
}

BSK_INLINE bsk_v16f bsk_nn_max(bsk_v16f a, bsk_v16f b)
{
    return bsk_select(a > b, a, b);
}

BSK_INLINE bsk_v16f bsk_nn_min(bsk_v16f a, bsk_v16f b)
{
    return bsk_select(a < b, a, b);
}

/*
 * exp(x) for x <= 0 (softmax arguments), Cephes-style: x = n ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for exp(r) (about 1 ulp), and 2^n put
 * into the exponent bits.  x below -87 gives about 1.6e-38, never 0.
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
 * Dynamic per-token uint8 quantization, the same arithmetic as
 * bsk_quantize_u8 (src/quantize.c) and blocksparse.quantize_activations,
 * lane by lane:
 *   lo = min(x, 0), hi = max(x, 0), scale = (hi - lo) / 255 (1 if 0),
 *   zero = clip(rint(-lo / scale), 0, 255),
 *   q = clip(rint(x / scale) + zero, 0, 255).
 * Only compares, adds and divides: the same bits on every ISA.
 */
BSK_INLINE bsk_v16f bsk_nn_rint_clamped16(bsk_v16f v)
{
    v = bsk_select(v > -512.0f, v, (bsk_v16f){0} - 512.0f);
    v = bsk_select(v < 512.0f, v, (bsk_v16f){0} + 512.0f);
    return (v + 12582912.0f) - 12582912.0f;
}

/* scale and zero point (as float) per lane from the lane ranges */
BSK_INLINE void bsk_nn_qparams16(bsk_v16f lo, bsk_v16f hi, bsk_v16f *scale, bsk_v16f *zero)
{
    bsk_v16f s = (hi - lo) / 255.0f;
    s = bsk_select(s > 0.0f, s, (bsk_v16f){0} + 1.0f); /* also maps NaN to 1 */
    bsk_v16f z = bsk_nn_rint_clamped16(-lo / s);
    z = bsk_select(z > 0.0f, z, (bsk_v16f){0});
    z = bsk_select(z < 255.0f, z, (bsk_v16f){0} + 255.0f);
    *scale = s;
    *zero = z;
}

BSK_INLINE bsk_nn_v16b bsk_nn_quant16(bsk_v16f v, bsk_v16f s, bsk_v16f zf)
{
    /* no +-512 clamp before the rounding, unlike bsk_nn_rint_clamped16: it
     * cannot change the clipped result (NaN and +-inf included), and the
     * range makes |v / s| <= 255 anyway */
    v = ((v / s + 12582912.0f) - 12582912.0f) + zf;
    v = bsk_select(v > 0.0f, v, (bsk_v16f){0});
    v = bsk_select(v < 255.0f, v, (bsk_v16f){0} + 255.0f);
    return __builtin_convertvector(__builtin_convertvector(v, bsk_v16i), bsk_nn_v16b);
}

/* Loads and stores of the 16 tokens at p; `full` (a compile-time constant
 * at every call) selects plain 16-lane accesses, else `cnt` lanes. */
BSK_INLINE bsk_v16f bsk_nn_ld(const float *p, const int full, int64_t cnt)
{
    return full ? bsk_nn_load(p) : bsk_nn_load_part(p, cnt);
}

BSK_INLINE void bsk_nn_st(float *p, bsk_v16f v, const int full, int64_t cnt)
{
    if (full)
        bsk_nn_store(p, v);
    else
        bsk_nn_store_part(p, v, cnt);
}

BSK_INLINE void bsk_nn_st_bytes(uint8_t *p, bsk_nn_v16b v, const int full, int64_t cnt)
{
    if (full)
        *(bsk_nn_v16b_u *)p = v;
    else
        memcpy(p, &v, (size_t)cnt);
}

/*
 * Per-token passes over a token range.  Every pass streams whole row
 * segments (feature f, tokens [n0, n0 + T)) and keeps per-token state in
 * small arrays (T floats, L1-resident), so the access pattern does not
 * depend on the row stride: a block of 16 tokens walked down all F rows
 * would touch F cache lines one row stride apart, which for a power-of-two
 * number of tokens all fall into a few cache sets (5-10x slower measured
 * at 1024 tokens).
 */
#define BSK_NN_FOR_TOKENS(T, ...)                                              \
    do {                                                                       \
        int64_t n_ = 0;                                                        \
        for (; n_ + 16 <= (T); n_ += 16) {                                     \
            const int full_ = 1;                                               \
            const int64_t cnt_ = 16;                                           \
            (void)full_;                                                       \
            (void)cnt_;                                                        \
            __VA_ARGS__                                                        \
        }                                                                      \
        if (n_ < (T)) {                                                        \
            const int full_ = 0;                                               \
            const int64_t cnt_ = (T) - n_;                                     \
            (void)full_;                                                       \
            (void)cnt_;                                                        \
            __VA_ARGS__                                                        \
        }                                                                      \
    } while (0)

/* lo[t], hi[t] = min/max(0, Y[f, t] * mul[f]) over the rows, t < T */
BSK_INLINE void bsk_nn_range_rows(const float *Y, int64_t F, int64_t N, int64_t T,
                                  const float *mul, float *lo, float *hi)
{
    for (int64_t n = 0; n < T; n++)
        lo[n] = hi[n] = 0.0f;
    for (int64_t f = 0; f < F; f++) {
        const float *y = Y + f * N;
        const float m = mul ? mul[f] : 1.0f;
        BSK_NN_FOR_TOKENS(T, {
            bsk_v16f v = bsk_nn_ld(y + n_, full_, cnt_);
            if (mul)
                v = v * m;
            bsk_nn_store(lo + n_, bsk_nn_min(bsk_nn_load(lo + n_), v));
            bsk_nn_store(hi + n_, bsk_nn_max(bsk_nn_load(hi + n_), v));
        });
    }
}

/* q_scale, q_zero of T tokens from their ranges; s, z keep them as floats */
BSK_INLINE void bsk_nn_params_rows(int64_t T, const float *lo, const float *hi, float *s,
                                   float *z, float *q_scale, int32_t *q_zero)
{
    BSK_NN_FOR_TOKENS(T, {
        bsk_v16f vs, vz;
        bsk_nn_qparams16(bsk_nn_load(lo + n_), bsk_nn_load(hi + n_), &vs, &vz);
        bsk_nn_store(s + n_, vs);
        bsk_nn_store(z + n_, vz);
        const bsk_v16i zi = __builtin_convertvector(vz, bsk_v16i);
        for (int t = 0; t < cnt_; t++) {
            q_scale[n_ + t] = vs[t];
            q_zero[n_ + t] = zi[t];
        }
    });
}

/* Q[f, t] = codes of Y[f, t] * mul[f] with per-token s, z, t < T */
BSK_INLINE void bsk_nn_codes_rows(const float *Y, int64_t F, int64_t N, int64_t T,
                                  const float *mul, const float *s, const float *z, uint8_t *Q)
{
    for (int64_t f = 0; f < F; f++) {
        const float *y = Y + f * N;
        uint8_t *q = Q + f * N;
        const float m = mul ? mul[f] : 1.0f;
        BSK_NN_FOR_TOKENS(T, {
            bsk_v16f v = bsk_nn_ld(y + n_, full_, cnt_);
            if (mul)
                v = v * m;
            bsk_nn_st_bytes(q + n_, bsk_nn_quant16(v, bsk_nn_load(s + n_), bsk_nn_load(z + n_)),
                            full_, cnt_);
        });
    }
}

/*
 * Per-token quantization of the T tokens at Y (row stride N) into Q,
 * q_scale, q_zero; ws holds 4 * round16(T) floats of scratch (64-byte
 * aligned, so that the per-token arrays take whole vectors).
 */
BSK_INLINE void bsk_nn_quant_rows(const float *Y, int64_t F, int64_t N, int64_t T,
                                  const float *mul, uint8_t *Q, float *q_scale,
                                  int32_t *q_zero, float *ws)
{
    const int64_t Tv = (T + 15) / 16 * 16;
    float *lo = ws, *hi = ws + Tv, *s = ws + 2 * Tv, *z = ws + 3 * Tv;
    bsk_nn_range_rows(Y, F, N, T, mul, lo, hi);
    bsk_nn_params_rows(T, lo, hi, s, z, q_scale, q_zero);
    bsk_nn_codes_rows(Y, F, N, T, mul, s, z, Q);
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
