/*
 * Helpers of the encoder kernel bodies (tokens_body.h, attention_body.h).
 *
 * The bodies are compiled once per ISA variant (src/ref/nn_scalar.c,
 * src/avx2/nn_avx2.c, src/avx512vnni/nn_avx512vnni.c), each unit with only
 * its variant's flags, like every other kernel family.  The drivers in
 * tokens.c and attention.c (baseline flags) hold the OpenMP regions: they
 * split the work into contiguous, deterministic ranges (so results do not
 * depend on the thread count) and call the variant's functions from its
 * bsk_kernels table.  Everything here is static inline and always_inline, so
 * each unit gets its own copy.
 *
 * Layout (bsk_nn.h): activations are features x tokens, row-major, so one
 * vector (the unit's, BSK_VL lanes of vec16.h) holds one feature of
 * consecutive tokens.  Per-token
 * reductions (LayerNorm statistics, quantization ranges, softmax over keys)
 * are then lane-wise: no horizontal operations, and the order of every sum
 * is fixed by the feature loop alone.
 */
#ifndef BLOCKSPARSE_NN_SIMD_H
#define BLOCKSPARSE_NN_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd/vec16.h"

#define BSK_NN_CAT2(a, b) a##_##b
#define BSK_NN_CAT(a, b) BSK_NN_CAT2(a, b)

/*
 * exp(x) for x <= 0 (softmax arguments), Cephes-style: x = n ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for exp(r) (about 1 ulp), and 2^n put
 * into the exponent bits.  x below -87 gives about 1.6e-38, never 0.
 * Defined for a float vector type VF (int VI of as many lanes) and its
 * MAXPS / MINPS-like max and min (x > c ? x : c), so that units with other
 * vector widths (BSK_VL 8 in the AVX2 units) compute the same lanes.
 */
#define BSK_NN_EXP_DEFINE(name, VF, VI, MAXF, MINF)                            \
    BSK_INLINE VF name(VF x)                                                   \
    {                                                                          \
        x = MAXF(x, (VF){0} - 87.0f);                                          \
        x = MINF(x, (VF){0} + 88.0f);                                          \
        VF n = x * 1.44269504088896341f;                                       \
        n = (n + BSK_RINT_MAGIC) - BSK_RINT_MAGIC; /* to the nearest integer */ \
        VF r = x - n * 0.693359375f;                                           \
        r = r - n * -2.12194440e-4f;                                           \
        VF p = (VF){0} + 1.9875691500e-4f;                                     \
        p = p * r + 1.3981999507e-3f;                                          \
        p = p * r + 8.3334519073e-3f;                                          \
        p = p * r + 4.1665795894e-2f;                                          \
        p = p * r + 1.6666665459e-1f;                                          \
        p = p * r + 5.0000001201e-1f;                                          \
        VF y = p * (r * r) + r + 1.0f;                                         \
        VI e = (__builtin_convertvector(n, VI) + 127) << 23;                   \
        return y * (VF)e;                                                      \
    }

/* exp of the unit's vector (vec16.h's BSK_VL) */
#if BSK_VL == 8
BSK_NN_EXP_DEFINE(bsk_vf_exp, bsk_v8f, bsk_v8i, bsk_max8f, bsk_min8f)
#else
BSK_NN_EXP_DEFINE(bsk_vf_exp, bsk_v16f, bsk_v16i, bsk_max16f, bsk_min16f)
#endif

/*
 * Sweeps: a pass keeps the per-token state of up to BSK_NN_SWEEP vectors of
 * tokens in registers while it walks down the rows (AVX-512 has 32 vector
 * registers, room for five states of four vectors; AVX2's 16 ymm hold four
 * states of four 8-lane vectors, a 16-lane vector of the portable build takes
 * four xmm).  Vector v of a sweep of nv is full unless it is the last and
 * `tail` < BSK_VL; nv and tail are constants in the full sweeps.
 */
#if BSK_VL == 8 || defined(__AVX512F__)
#define BSK_NN_SWEEP 4
#else
#define BSK_NN_SWEEP 2
#endif

BSK_INLINE bsk_vf bsk_nn_sweep_ld(const float *p, int v, int nv, int64_t tail)
{
    return v < nv - 1 || tail >= BSK_VL ? bsk_vf_load(p + BSK_VL * v)
                                        : bsk_vf_load_part(p + BSK_VL * v, (int)tail);
}

BSK_INLINE void bsk_nn_sweep_st(float *p, bsk_vf x, int v, int nv, int64_t tail)
{
    if (v < nv - 1 || tail >= BSK_VL)
        bsk_vf_store(p + BSK_VL * v, x);
    else
        bsk_vf_store_part(p + BSK_VL * v, x, (int)tail);
}

BSK_INLINE void bsk_nn_sweep_st_bytes(uint8_t *p, bsk_vb x, int v, int nv, int64_t tail)
{
    if (v < nv - 1 || tail >= BSK_VL)
        *(bsk_vb_u *)p = x;
    else
        bsk_vb_store_part(p, x, (int)tail);
}

/* 1 / sqrt(m2 * inv_f + eps) per lane (LayerNorm's reciprocal deviation) */
BSK_INLINE bsk_vf bsk_nn_rstd(bsk_vf m2, float inv_f, float eps)
{
    bsk_vf r;
    for (int i = 0; i < BSK_VL; i++)
        r[i] = 1.0f / sqrtf(m2[i] * inv_f + eps);
    return r;
}

/* Sweep bodies: X(v) once per vector of the sweep (named variables, see
 * BSK_EPI_EACH in simd/epilogue.h); the vectors past nv are dead code in the
 * full sweeps. */
#define BSK_NN_EACH_V(X) X(0) X(1) X(2) X(3)

#define BSK_NN_RANGE_STATE(v) bsk_vf lo##v = {0}, hi##v = {0};
#define BSK_NN_RANGE_ROW(v)                                                    \
    if (v < nv) {                                                              \
        bsk_vf t = bsk_nn_sweep_ld(y, v, nv, tail);                            \
        if (mul)                                                               \
            t = t * m;                                                         \
        lo##v = bsk_vf_min(lo##v, t);                                          \
        hi##v = bsk_vf_max(hi##v, t);                                          \
    }
#define BSK_NN_RANGE_OUT(v)                                                    \
    if (v < nv) {                                                              \
        bsk_vf_store(lo + BSK_VL * v, lo##v);                                  \
        bsk_vf_store(hi + BSK_VL * v, hi##v);                                  \
    }

/* the range sweep of the nv vectors at Y (lo, hi: their BSK_VL * nv floats) */
BSK_INLINE void bsk_nn_range_sweep(const float *Y, int64_t F, int64_t N, const float *mul,
                                   float *lo, float *hi, int nv, int64_t tail)
{
    BSK_NN_EACH_V(BSK_NN_RANGE_STATE)
    for (int64_t f = 0; f < F; f++) {
        const float *y = Y + f * N;
        const float m = mul ? mul[f] : 1.0f;
        BSK_NN_EACH_V(BSK_NN_RANGE_ROW)
    }
    BSK_NN_EACH_V(BSK_NN_RANGE_OUT)
}

/* Run sweep(first token, nv, tail, ...) over T tokens: full sweeps of
 * BSK_NN_SWEEP vectors, then one of the rest. */
#define BSK_NN_SWEEPS(T, sweep, ...)                                           \
    do {                                                                       \
        const int64_t w_ = BSK_VL * BSK_NN_SWEEP;                              \
        int64_t n_ = 0;                                                        \
        for (; n_ + w_ <= (T); n_ += w_)                                       \
            sweep(n_, BSK_NN_SWEEP, BSK_VL, __VA_ARGS__);                      \
        if (n_ < (T)) {                                                        \
            const int64_t r_ = (T) - n_;                                       \
            sweep(n_, (int)((r_ + BSK_VL - 1) / BSK_VL),                       \
                  r_ - (r_ - 1) / BSK_VL * BSK_VL, __VA_ARGS__);               \
        }                                                                      \
    } while (0)

#define BSK_NN_RANGE_AT(n, nv, tail, Y, F, N, mul, lo, hi) \
    bsk_nn_range_sweep((Y) + (n), F, N, mul, (lo) + (n), (hi) + (n), nv, tail)

/* lo[t], hi[t] = min/max(0, Y[f, t] * mul[f]) over the rows, t < T; the
 * lanes of lo and hi past T up to a whole vector hold zeros (ranges of zero
 * lanes) */
BSK_INLINE void bsk_nn_range_rows(const float *Y, int64_t F, int64_t N, int64_t T,
                                  const float *mul, float *lo, float *hi)
{
    BSK_NN_SWEEPS(T, BSK_NN_RANGE_AT, Y, F, N, mul, lo, hi);
}

/* s, z (floats) of the ranges lo, hi of the tokens [0, Tv) (bsk_vf_u8_params;
 * Tv a multiple of BSK_VL), and q_scale, q_zero of the first T of them
 * (unless NULL) */
BSK_INLINE void bsk_nn_params_rows(int64_t T, int64_t Tv, const float *lo, const float *hi,
                                   float *s, float *z, float *q_scale, int32_t *q_zero)
{
    for (int64_t n = 0; n < Tv; n += BSK_VL) {
        bsk_vf vs, vz;
        bsk_vf_u8_params(bsk_vf_load(lo + n), bsk_vf_load(hi + n), &vs, &vz);
        bsk_vf_store(s + n, vs);
        bsk_vf_store(z + n, vz);
        const bsk_vi zi = __builtin_convertvector(vz, bsk_vi);
        for (int t = 0; q_scale && t < BSK_VL && n + t < T; t++) {
            q_scale[n + t] = vs[t];
            q_zero[n + t] = zi[t];
        }
    }
}

#define BSK_NN_CODES_STATE(v)                                                  \
    const bsk_vf s##v = v < nv ? bsk_vf_load(s + BSK_VL * v) : (bsk_vf){0} + 1.0f; \
    const bsk_vf z##v = v < nv ? bsk_vf_load(z + BSK_VL * v) : (bsk_vf){0};
#define BSK_NN_CODES_ROW(v)                                                    \
    bsk_vf c##v = {0};                                                         \
    if (v < nv) {                                                              \
        bsk_vf t = bsk_nn_sweep_ld(y, v, nv, tail);                            \
        if (mul)                                                               \
            t = t * m;                                                         \
        c##v = bsk_vf_u8_code(t / s##v, z##v);                                 \
    }
#define BSK_NN_CODES_OUT(v)                                                    \
    if (v < nv)                                                                \
        bsk_nn_sweep_st_bytes(q + BSK_VL * v, bsk_vf_bytes(c##v), v, nv, tail);

/* the codes of the nv vectors at Y into Q, with their scales s and zero
 * points z (BSK_VL * nv floats each) */
BSK_INLINE void bsk_nn_codes_sweep(const float *Y, int64_t F, int64_t N, const float *mul,
                                   const float *s, const float *z, uint8_t *Q, int nv,
                                   int64_t tail)
{
    BSK_NN_EACH_V(BSK_NN_CODES_STATE)
    for (int64_t f = 0; f < F; f++) {
        const float *y = Y + f * N;
        uint8_t *q = Q + f * N;
        const float m = mul ? mul[f] : 1.0f;
        BSK_NN_EACH_V(BSK_NN_CODES_ROW)
        if (nv == 4 && tail >= BSK_VL)
            bsk_vf_store_bytes4(q, c0, c1, c2, c3);
        else {
            BSK_NN_EACH_V(BSK_NN_CODES_OUT)
        }
    }
}

#define BSK_NN_CODES_AT(n, nv, tail, Y, F, N, mul, s, z, Q) \
    bsk_nn_codes_sweep((Y) + (n), F, N, mul, (s) + (n), (z) + (n), (Q) + (n), nv, tail)

/* Q[f, t] = codes of Y[f, t] * mul[f] with per-token s, z, t < T */
BSK_INLINE void bsk_nn_codes_rows(const float *Y, int64_t F, int64_t N, int64_t T,
                                  const float *mul, const float *s, const float *z, uint8_t *Q)
{
    BSK_NN_SWEEPS(T, BSK_NN_CODES_AT, Y, F, N, mul, s, z, Q);
}

/* The whole vectors that hold T tokens, in tokens. */
#define BSK_NN_WHOLE(T) (((T) + BSK_VL - 1) / BSK_VL * BSK_VL)

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
    bsk_nn_params_rows(T, BSK_NN_WHOLE(T), lo, hi, s, z, q_scale, q_zero);
    bsk_nn_codes_rows(Y, F, N, T, mul, s, z, Q);
}

#endif /* BLOCKSPARSE_NN_SIMD_H */
