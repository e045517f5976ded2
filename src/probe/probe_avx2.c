/* Ceiling probes for avx2: 256-bit float FMA from registers and with L1 loads. */
#include <immintrin.h>

#include "blocksparse/bsk_probe.h"

#define BSK_PROBE_FVEC __m256
#define BSK_PROBE_FSET1(x) _mm256_set1_ps(x)
#define BSK_PROBE_FADD(a, b) _mm256_add_ps(a, b)
#define BSK_PROBE_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define BSK_PROBE_FLOAD(p) _mm256_load_ps(p)
/* VEX encodes ymm0-ymm15 only: 12 chains and the two operands stay in registers. */
#define BSK_PROBE_FLANES 8
#define BSK_PROBE_FCHAINS BSK_C12
#define BSK_PROBE_FCHAINS_N BSK_PROBE_FMA_CHAINS_YMM
#define BSK_PROBE_FMA_FN bsk_probe_fma_avx2
#define BSK_PROBE_FMA_LOAD_FN bsk_probe_fma_load_avx2
#include "probe_body.h"

/*
 * INT8 without VNNI: 32 u8 x s8 multiply-adds per 256-bit step, either as
 * vpmaddubsw (int16 pair sums, saturating: what INT8 libraries use on AVX2)
 * + vpmaddwd by ones + vpaddd, or as the exact form of the AVX2 kernels
 * (src/avx2/dot4_avx2.h): two vpmaddwd of int16-widened bytes + two vpaddd.
 * Both issue two multiplies per 32 MACs.  Inline asm, each step reading its
 * chain, so the compiler can neither hoist the products of the loop's
 * constant operands nor merge the chains' identical steps.
 */
static inline __attribute__((always_inline)) __m256i bsk_maddubs_step(__m256i acc, __m256i a,
                                                                     __m256i b, __m256i ones)
{
    __m256i t;
    __asm__("vpmaddubsw %3, %2, %1\n\t"
            "vpmaddwd %4, %1, %1\n\t"
            "vpaddd %1, %0, %0"
            : "+x"(acc), "=&x"(t) : "x"(a), "x"(b), "x"(ones));
    return acc;
}

static inline __attribute__((always_inline)) __m256i bsk_maddwd_step(__m256i acc, __m256i a,
                                                                    __m256i b)
{
    __m256i t;
    __asm__("vpmaddwd %3, %2, %1\n\t"
            "vpaddd %1, %0, %0\n\t"
            "vpmaddwd %2, %3, %1\n\t"
            "vpaddd %1, %0, %0"
            : "+x"(acc), "=&x"(t) : "x"(a), "x"(b));
    return acc;
}

/* The same loop as the vpdpbusd probes (probe_body.h), with these steps. */
#define BSK_PROBE_CHAINS BSK_C12
#define BSK_PROBE_VEC __m256i
#define BSK_PROBE_SET1(x) _mm256_set1_epi32(x)
#define BSK_PROBE_ADD(a, b) _mm256_add_epi32(a, b)
#define BSK_PROBE_BYTES 32
#undef BSK_PROBE_FMA_FN
#define BSK_PROBE_DOT(acc, a, b) bsk_maddubs_step(acc, a, b, _mm256_set1_epi16(1))
#define BSK_PROBE_DPBUSD_FN bsk_probe_maddubs_avx2
#include "probe_body.h"
#undef BSK_PROBE_DOT
#undef BSK_PROBE_DPBUSD_FN
#define BSK_PROBE_DOT(acc, a, b) bsk_maddwd_step(acc, a, b)
#define BSK_PROBE_DPBUSD_FN bsk_probe_maddwd_avx2
#include "probe_body.h"
