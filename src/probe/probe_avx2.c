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

#define BSK_MADD_PROBE(FN, STEP)                                                     \
    int64_t FN(int64_t iters, int32_t seed)                                          \
    {                                                                                \
        const __m256i a = _mm256_set1_epi32(0x01010101 ^ seed);                      \
        const __m256i b = _mm256_set1_epi32(0x01020304 + seed);                      \
        const __m256i c = _mm256_set1_epi16(1); /* vpmaddubsw's pairs summed */      \
        (void)c;                                                                     \
        BSK_C12(BSK_MADD_DECL)                                                       \
        for (int64_t it = 0; it < iters; it++) {                                     \
            BSK_C12(STEP)                                                            \
        }                                                                            \
        __m256i s = _mm256_setzero_si256();                                          \
        BSK_C12(BSK_MADD_SUM)                                                        \
        int32_t lanes[8];                                                            \
        memcpy(lanes, &s, sizeof(lanes));                                            \
        int64_t total = 0;                                                           \
        for (int i = 0; i < 8; i++)                                                  \
            total += lanes[i];                                                       \
        return total;                                                                \
    }
#define BSK_MADD_DECL(i) __m256i c##i = _mm256_set1_epi32(i);
#define BSK_MADD_SUM(i) s = _mm256_add_epi32(s, c##i);
#define BSK_MADDUBS_STEP(i) c##i = bsk_maddubs_step(c##i, a, b, c);
#define BSK_MADDWD_STEP(i) c##i = bsk_maddwd_step(c##i, a, b);
BSK_MADD_PROBE(bsk_probe_maddubs_avx2, BSK_MADDUBS_STEP)
BSK_MADD_PROBE(bsk_probe_maddwd_avx2, BSK_MADDWD_STEP)
