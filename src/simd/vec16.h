/*
 * 16-lane vectors (GCC/Clang vector extensions) and the arithmetic that the
 * INT8 epilogue, the activation quantization and the encoder kernels share:
 * round to nearest even, the uint8 code of a scaled value, the asymmetric
 * uint8 parameters of a range, erf and GELU.
 *
 * Each is written once, here and in vec_lanes.h (which also makes their
 * 8-lane forms for the AVX2 units).  They use only IEEE + - * /, compares and
 * explicit fused multiply-adds (bsk_fma16), in a fixed order, so where a unit
 * is compiled with -ffp-contract=off (the INT8 and quantization units, the
 * scalar units) every ISA and width gives the same bits.
 */
#ifndef BLOCKSPARSE_VEC16_H
#define BLOCKSPARSE_VEC16_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#include "bsk_internal.h"

typedef float bsk_v16f __attribute__((vector_size(64)));
typedef int32_t bsk_v16i __attribute__((vector_size(64)));
typedef uint32_t bsk_v16u __attribute__((vector_size(64)));
typedef uint8_t bsk_v16b __attribute__((vector_size(16)));
/* unaligned views for loads and stores */
typedef float bsk_v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t bsk_v16i_u __attribute__((vector_size(64), aligned(4)));
typedef uint8_t bsk_v16b_u __attribute__((vector_size(16), aligned(1)));
/* 8-lane vectors: one ymm register (the AVX2 units' encoder kernels) */
typedef float bsk_v8f __attribute__((vector_size(32)));
typedef int32_t bsk_v8i __attribute__((vector_size(32)));
typedef uint32_t bsk_v8u __attribute__((vector_size(32)));
typedef uint8_t bsk_v8b __attribute__((vector_size(8)));
typedef float bsk_v8f_u __attribute__((vector_size(32), aligned(4)));
typedef int32_t bsk_v8i_u __attribute__((vector_size(32), aligned(4)));
typedef uint8_t bsk_v8b_u __attribute__((vector_size(8), aligned(1)));

/* dst[j * ldd + i] = src[i * lds + j] for an 8 x 8 block of floats: three
 * rounds of two-input shuffles (pairs, then pairs of pairs, then halves). */
BSK_INLINE void bsk_transpose8x8(const float *src, int64_t lds, float *dst, int64_t ldd)
{
    typedef float v8f __attribute__((vector_size(32)));
    typedef float v8f_u __attribute__((vector_size(32), aligned(4)));
    v8f r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = *(const v8f_u *)(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++) {
            u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2],
                                                   0, 1, 8, 9, 4, 5, 12, 13);
            u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2],
                                                       2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int j = 0; j < 4; j++) {
        *(v8f_u *)(dst + j * ldd) = __builtin_shufflevector(u[j], u[j + 4],
                                                           0, 1, 2, 3, 8, 9, 10, 11);
        *(v8f_u *)(dst + (j + 4) * ldd) = __builtin_shufflevector(u[j], u[j + 4],
                                                                 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/*
 * a > b ? a : b and a < b ? a : b per lane.  MAXPS / MINPS follow the same
 * rule (the second operand whenever the compare is false: NaN, and zeros of
 * either sign), so they give the compare-and-select's lanes in one instruction
 * instead of three.
 */

BSK_INLINE bsk_v16f bsk_max16f(bsk_v16f a, bsk_v16f b)
{
#if defined(__AVX512F__)
    return (bsk_v16f)_mm512_max_ps((__m512)a, (__m512)b);
#else
    const bsk_v16i m = a > b;
    return (bsk_v16f)(((bsk_v16i)a & m) | ((bsk_v16i)b & ~m));
#endif
}

BSK_INLINE bsk_v16f bsk_min16f(bsk_v16f a, bsk_v16f b)
{
#if defined(__AVX512F__)
    return (bsk_v16f)_mm512_min_ps((__m512)a, (__m512)b);
#else
    const bsk_v16i m = a < b;
    return (bsk_v16f)(((bsk_v16i)a & m) | ((bsk_v16i)b & ~m));
#endif
}

/* ---- partial loads and stores ---------------------------------------------------
 *
 * The last vector of a row of tokens is often short (a sequence of 8-40
 * tokens has a short vector on every feature row), so these are on hot paths:
 * masked moves where the ISA has them (AVX-512: any width; AVX2: 32-bit
 * lanes, the 8-lane forms below), else fixed-size pieces, never a library
 * call.  Masked-off lanes are
 * not read (no fault past the end) and loads zero them; the values moved are
 * the same on every ISA. */

#if defined(__AVX2__) && !defined(__AVX512F__)
/* The lanes below `count` of 8, as an AVX2 mask (all ones = load/store). */
BSK_INLINE __m256i bsk_lanes8(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

#if defined(__AVX512F__)
/* The lanes below `count` (0 .. 16) of 16. */
BSK_INLINE __mmask16 bsk_lanes16(int count)
{
    return (__mmask16)((1u << (count < 0 ? 0 : count)) - 1u);
}
#endif

/* Load `count` (<= 16) 32-bit values, zero-filling the rest. */
BSK_INLINE bsk_v16i bsk_load16i(const int32_t *p, int count)
{
    if (count >= 16)
        return *(const bsk_v16i_u *)p;
#if defined(__AVX512F__)
    return (bsk_v16i)_mm512_maskz_loadu_epi32(bsk_lanes16(count), p);
#else
    bsk_v16i v = (bsk_v16i){0};
    for (int t = 0; t < count; t++)
        v[t] = p[t];
    return v;
#endif
}

BSK_INLINE bsk_v16f bsk_load16f(const float *p, int count)
{
    return (bsk_v16f)bsk_load16i((const int32_t *)p, count);
}

/* Store the first `count` (<= 16) 32-bit lanes of v. */
BSK_INLINE void bsk_store16i(int32_t *p, bsk_v16i v, int count)
{
    if (count >= 16) {
        *(bsk_v16i_u *)p = v;
        return;
    }
#if defined(__AVX512F__)
    _mm512_mask_storeu_epi32(p, bsk_lanes16(count), (__m512i)v);
#else
    for (int t = 0; t < count; t++)
        p[t] = v[t];
#endif
}

BSK_INLINE void bsk_store16f(float *p, bsk_v16f v, int count)
{
    bsk_store16i((int32_t *)p, (bsk_v16i)v, count);
}

/* dst[0 .. count) = src[0 .. count) for count < 16, in fixed-size pieces (no
 * library call): the byte fallback of the partial loads and stores below. */
BSK_INLINE void bsk_copy_small(uint8_t *dst, const uint8_t *src, int count)
{
    int at = 0;
    if (count & 8) {
        memcpy(dst, src, 8);
        at = 8;
    }
    if (count & 4) {
        memcpy(dst + at, src + at, 4);
        at += 4;
    }
    if (count & 2) {
        memcpy(dst + at, src + at, 2);
        at += 2;
    }
    if (count & 1)
        dst[at] = src[at];
}

/* Load `count` (<= 16) bytes, zero-filling the rest. */
BSK_INLINE bsk_v16b bsk_load16b(const uint8_t *p, int count)
{
    if (count >= 16)
        return *(const bsk_v16b_u *)p;
    if (count <= 0)
        return (bsk_v16b){0};
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return (bsk_v16b)_mm_maskz_loadu_epi8(bsk_lanes16(count), p);
#else
    uint8_t w[16] = {0};
    bsk_copy_small(w, p, count);
    bsk_v16b v;
    memcpy(&v, w, 16);
    return v;
#endif
}

/* Store the first `count` (<= 16) bytes of v. */
BSK_INLINE void bsk_store16b(uint8_t *p, bsk_v16b v, int count)
{
    if (count >= 16) {
        *(bsk_v16b_u *)p = v;
        return;
    }
    if (count <= 0)
        return;
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    _mm_mask_storeu_epi8(p, bsk_lanes16(count), (__m128i)v);
#else
    uint8_t w[16];
    memcpy(w, &v, 16);
    bsk_copy_small(p, w, count);
#endif
}

/* dst[0 .. width) = the first `count` bytes of src, zeros after (width a
 * multiple of 16; count may be <= 0 or >= width). */
BSK_INLINE void bsk_copy_part(uint8_t *dst, const uint8_t *src, int64_t count, const int width)
{
    for (int o = 0; o < width; o += 16) {
        const int64_t left = count - o;
        *(bsk_v16b_u *)(dst + o) = bsk_load16b(src + o, left > 16 ? 16 : (int)left);
    }
}

/* ---- rounding, uint8 quantization, erf and GELU ------------------------------------ */

/* 1.5 * 2^23: for |v| < 2^22, (v + M) - M is v rounded to the nearest integer,
 * ties to even (numpy.rint), because the sum has no fraction bits left. */
#define BSK_RINT_MAGIC 12582912.0f

/* a * b + c with one rounding: the FMA instruction in the 512-bit unit, else
 * the C library's fmaf, which is correctly rounded too, so every ISA gives the
 * same bits (the AVX2 units take the 8-lane bsk_fma8). */
BSK_INLINE bsk_v16f bsk_fma16(bsk_v16f a, bsk_v16f b, bsk_v16f c)
{
#if defined(__AVX512F__)
    return (bsk_v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    for (int t = 0; t < 16; t++)
        a[t] = fmaf(a[t], b[t], c[t]);
    return a;
#endif
}

/* The low bytes of 16 int32 lanes. */
BSK_INLINE bsk_v16b bsk_low_bytes16(bsk_v16i v)
{
    return __builtin_convertvector((bsk_v16u)v & 0xff, bsk_v16b);
}

/* bsk_select16, bsk_keep16f, bsk_rint16, bsk_u8_code16, bsk_u8_params16,
 * bsk_bytes16, bsk_erfc_poly16, bsk_abs16, bsk_gelu16 */
#define BSK_VW 16
#define BSK_VW_IOTA {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
#include "simd/vec_lanes.h"
#undef BSK_VW
#undef BSK_VW_IOTA

/* Four vectors of float lanes holding integers in [0, 255] as 64 bytes at p
 * (a's lanes first).  AVX-512BW packs them in registers and stores once: the
 * down-converting store of bsk_bytes16 (VPMOVDB to memory) was the slowest
 * instruction of the quantization passes on Zen 4. */
BSK_INLINE void bsk_store_bytes64(uint8_t *p, bsk_v16f a, bsk_v16f b, bsk_v16f c, bsk_v16f d)
{
#if defined(__AVX512BW__)
    const __m512i ab = _mm512_packus_epi32((__m512i)__builtin_convertvector(a, bsk_v16i),
                                           (__m512i)__builtin_convertvector(b, bsk_v16i));
    const __m512i cd = _mm512_packus_epi32((__m512i)__builtin_convertvector(c, bsk_v16i),
                                           (__m512i)__builtin_convertvector(d, bsk_v16i));
    /* 128-bit lane l now holds 4 bytes each of a, b, c, d (tokens 4l .. 4l + 3) */
    const __m512i abcd = _mm512_packus_epi16(ab, cd);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14,
                                            3, 7, 11, 15);
    _mm512_storeu_si512(p, _mm512_permutexvar_epi32(order, abcd));
#else
    *(bsk_v16b_u *)p = bsk_bytes16(a);
    *(bsk_v16b_u *)(p + 16) = bsk_bytes16(b);
    *(bsk_v16b_u *)(p + 32) = bsk_bytes16(c);
    *(bsk_v16b_u *)(p + 48) = bsk_bytes16(d);
#endif
}

/* ---- 8-lane vectors (units compiled for AVX2 without AVX-512) ------------------------ */

#if defined(__AVX2__) && !defined(__AVX512F__)
BSK_INLINE bsk_v8f bsk_max8f(bsk_v8f a, bsk_v8f b)
{
    return (bsk_v8f)_mm256_max_ps((__m256)a, (__m256)b);
}

BSK_INLINE bsk_v8f bsk_min8f(bsk_v8f a, bsk_v8f b)
{
    return (bsk_v8f)_mm256_min_ps((__m256)a, (__m256)b);
}

BSK_INLINE bsk_v8f bsk_fma8(bsk_v8f a, bsk_v8f b, bsk_v8f c)
{
    return (bsk_v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}

/* Load `count` 32-bit values (all 8 from 8 on), zero-filling the rest. */
BSK_INLINE bsk_v8i bsk_load8i(const int32_t *p, int count)
{
    if (count >= 8)
        return *(const bsk_v8i_u *)p;
    return (bsk_v8i)_mm256_maskload_epi32((const int *)p, bsk_lanes8(count));
}

BSK_INLINE bsk_v8f bsk_load8f(const float *p, int count)
{
    return (bsk_v8f)bsk_load8i((const int32_t *)p, count);
}

/* Store the first `count` lanes of v (all 8 from 8 on). */
BSK_INLINE void bsk_store8i(int32_t *p, bsk_v8i v, int count)
{
    if (count >= 8)
        *(bsk_v8i_u *)p = v;
    else
        _mm256_maskstore_epi32((int *)p, bsk_lanes8(count), (__m256i)v);
}

BSK_INLINE void bsk_store8f(float *p, bsk_v8f v, int count)
{
    bsk_store8i((int32_t *)p, (bsk_v8i)v, count);
}

/* Store the first `count` bytes of v (all 8 from 8 on). */
BSK_INLINE void bsk_store8b(uint8_t *p, bsk_v8b v, int count)
{
    if (count >= 8) {
        *(bsk_v8b_u *)p = v;
        return;
    }
    uint8_t w[8];
    memcpy(w, &v, 8);
    bsk_copy_small(p, w, count);
}

/* The low bytes of 8 int32 lanes: one byte shuffle and the two halves'
 * dwords (GCC 12 converts lane by lane, a vpextrd each). */
BSK_INLINE bsk_v8b bsk_low_bytes8(bsk_v8i v)
{
    const __m256i first = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                           -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                           -1, -1, -1, -1);
    const __m256i b = _mm256_shuffle_epi8((__m256i)v, first);
    const __m128i r = _mm_unpacklo_epi32(_mm256_castsi256_si128(b),
                                         _mm256_extracti128_si256(b, 1));
    return (bsk_v8b)_mm_cvtsi128_si64(r);
}

/* the 8-lane forms of the arithmetic above: bsk_rint8, bsk_gelu8, ... */
#define BSK_VW 8
#define BSK_VW_IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#include "simd/vec_lanes.h"
#undef BSK_VW
#undef BSK_VW_IOTA

/* Four 8-lane vectors of float lanes holding integers in [0, 255] as 32 bytes
 * at p (a's lanes first), packed in registers. */
BSK_INLINE void bsk_store_bytes32(uint8_t *p, bsk_v8f a, bsk_v8f b, bsk_v8f c, bsk_v8f d)
{
    const __m256i ab = _mm256_packus_epi32((__m256i)__builtin_convertvector(a, bsk_v8i),
                                           (__m256i)__builtin_convertvector(b, bsk_v8i));
    const __m256i cd = _mm256_packus_epi32((__m256i)__builtin_convertvector(c, bsk_v8i),
                                           (__m256i)__builtin_convertvector(d, bsk_v8i));
    /* 128-bit half h now holds 4 bytes each of a, b, c, d (tokens 4h .. 4h + 3) */
    const __m256i abcd = _mm256_packus_epi16(ab, cd);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256((__m256i *)p, _mm256_permutevar8x32_epi32(abcd, order));
}
#endif /* __AVX2__ && !__AVX512F__ */

/* ---- the unit's vector ------------------------------------------------------------
 *
 * The per-token kernels (nn/tokens_body.h, nn/attention_body.h, the sweeps of
 * nn/nn_simd.h) and the INT8 epilogue (epilogue.h) take BSK_VL tokens at a
 * time: 16 (one zmm register, or four xmm ones in the portable build), or 8
 * in units compiled for AVX2 without AVX-512, where GCC 12 has no machine
 * mode for a 16-float vector: a loop-carried one lived on the stack and was
 * built there lane by lane (a failed store forwarding per use), which made
 * the float attention 4x and the LayerNorm and quantization passes several
 * times slower than with 8-float vectors, one ymm register each.  Lane for
 * lane the same operations, so the same bits.  bsk_vf (float), bsk_vi
 * (int32), bsk_vb (uint8) and the bsk_vf_* / bsk_vi_* / bsk_vb_* functions
 * name the width's types and functions above.
 */
#if defined(__AVX2__) && !defined(__AVX512F__)
#define BSK_VL 8
#define BSK_VL_IOTA {0, 1, 2, 3, 4, 5, 6, 7}
typedef bsk_v8f bsk_vf;
typedef bsk_v8i bsk_vi;
typedef bsk_v8u bsk_vu;
typedef bsk_v8b bsk_vb;
typedef bsk_v8f_u bsk_vf_u;
typedef bsk_v8i_u bsk_vi_u;
typedef bsk_v8b_u bsk_vb_u;
#define bsk_vf_max bsk_max8f
#define bsk_vf_min bsk_min8f
#define bsk_vf_fma bsk_fma8
#define bsk_vf_keep bsk_keep8f
#define bsk_vf_select bsk_select8
#define bsk_vf_rint bsk_rint8
#define bsk_vf_u8_code bsk_u8_code8
#define bsk_vf_u8_params bsk_u8_params8
#define bsk_vf_bytes bsk_bytes8
#define bsk_vi_low_bytes bsk_low_bytes8
#define bsk_vf_gelu bsk_gelu8
#define bsk_vf_load_part bsk_load8f
#define bsk_vf_store_part bsk_store8f
#define bsk_vi_load_part bsk_load8i
#define bsk_vb_store_part bsk_store8b
#define bsk_vf_store_bytes4 bsk_store_bytes32
#else
#define BSK_VL 16
#define BSK_VL_IOTA {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
typedef bsk_v16f bsk_vf;
typedef bsk_v16i bsk_vi;
typedef bsk_v16u bsk_vu;
typedef bsk_v16b bsk_vb;
typedef bsk_v16f_u bsk_vf_u;
typedef bsk_v16i_u bsk_vi_u;
typedef bsk_v16b_u bsk_vb_u;
#define bsk_vf_max bsk_max16f
#define bsk_vf_min bsk_min16f
#define bsk_vf_fma bsk_fma16
#define bsk_vf_keep bsk_keep16f
#define bsk_vf_select bsk_select16
#define bsk_vf_rint bsk_rint16
#define bsk_vf_u8_code bsk_u8_code16
#define bsk_vf_u8_params bsk_u8_params16
#define bsk_vf_bytes bsk_bytes16
#define bsk_vi_low_bytes bsk_low_bytes16
#define bsk_vf_gelu bsk_gelu16
#define bsk_vf_load_part bsk_load16f
#define bsk_vf_store_part bsk_store16f
#define bsk_vi_load_part bsk_load16i
#define bsk_vb_store_part bsk_store16b
#define bsk_vf_store_bytes4 bsk_store_bytes64
#endif

BSK_INLINE bsk_vf bsk_vf_load(const float *p)
{
    return *(const bsk_vf_u *)p;
}

BSK_INLINE void bsk_vf_store(float *p, bsk_vf v)
{
    *(bsk_vf_u *)p = v;
}

/* v with every lane s (its bits broadcast: s + 0 would turn -0 into +0). */
BSK_INLINE bsk_vf bsk_vf_splat(float s)
{
    int32_t bits;
    memcpy(&bits, &s, 4);
    return (bsk_vf)((bsk_vi){0} + bits);
}

#endif /* BLOCKSPARSE_VEC16_H */
