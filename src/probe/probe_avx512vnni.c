/* Ceiling probes for avx512_vnni: 512-bit and 256-bit EVEX vpdpbusd, 512-bit FMA. */
#include <immintrin.h>

#include "blocksparse/bsk_probe.h"

static inline __attribute__((always_inline)) __m512i bsk_dot_zmm(__m512i acc, __m512i a, __m512i b)
{
    __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

static inline __attribute__((always_inline)) __m256i bsk_dot_ymm(__m256i acc, __m256i a, __m256i b)
{
    __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

#define BSK_PROBE_CHAINS BSK_C24
#define BSK_PROBE_VEC __m512i
#define BSK_PROBE_SET1(x) _mm512_set1_epi32(x)
#define BSK_PROBE_ADD(a, b) _mm512_add_epi32(a, b)
/* Inline asm, not the intrinsic: GCC 12 copies and spills the accumulators of
 * _mm512_dpbusd_epi32 chains, which made the loop store-bound (an under-report). */
#define BSK_PROBE_DOT(acc, a, b) bsk_dot_zmm(acc, a, b)
#define BSK_PROBE_BYTES 64
#define BSK_PROBE_DPBUSD_FN bsk_probe_dpbusd_zmm_avx512_vnni
#define BSK_PROBE_FVEC __m512
#define BSK_PROBE_FSET1(x) _mm512_set1_ps(x)
#define BSK_PROBE_FADD(a, b) _mm512_add_ps(a, b)
#define BSK_PROBE_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define BSK_PROBE_FLOAD(p) _mm512_load_ps(p)
#define BSK_PROBE_FLANES 16
#define BSK_PROBE_FCHAINS BSK_C16
#define BSK_PROBE_FCHAINS_N BSK_PROBE_FMA_CHAINS_ZMM
#define BSK_PROBE_FMA_FN bsk_probe_fma_avx512_vnni
#define BSK_PROBE_FMA_LOAD_FN bsk_probe_fma_load_avx512_vnni
#include "probe_body.h"

/* The 256-bit EVEX form ({evex}: the assembler would pick it anyway, as this
 * file is built without -mavxvnni; 24 chains also need ymm16-ymm31). */
#undef BSK_PROBE_VEC
#undef BSK_PROBE_SET1
#undef BSK_PROBE_ADD
#undef BSK_PROBE_DOT
#undef BSK_PROBE_BYTES
#undef BSK_PROBE_DPBUSD_FN
#undef BSK_PROBE_FMA_FN
#define BSK_PROBE_VEC __m256i
#define BSK_PROBE_SET1(x) _mm256_set1_epi32(x)
#define BSK_PROBE_ADD(a, b) _mm256_add_epi32(a, b)
#define BSK_PROBE_DOT(acc, a, b) bsk_dot_ymm(acc, a, b)
#define BSK_PROBE_BYTES 32
#define BSK_PROBE_DPBUSD_FN bsk_probe_dpbusd_ymm_avx512_vnni
#include "probe_body.h"
