/* Ceiling probe for avx_vnni: 256-bit VEX vpdpbusd.  VEX encodes only
 * ymm0-ymm15, so 14 chains plus the two operands fill the register file. */
#include <immintrin.h>

#include "blocksparse/bsk_probe.h"

/* Inline asm ("x": ymm0-ymm15) for the reason given in probe_avx512vnni.c. */
static inline __attribute__((always_inline)) __m256i bsk_dot_vex(__m256i acc, __m256i a, __m256i b)
{
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b));
    return acc;
}

#define BSK_PROBE_CHAINS BSK_C14
#define BSK_PROBE_VEC __m256i
#define BSK_PROBE_SET1(x) _mm256_set1_epi32(x)
#define BSK_PROBE_ADD(a, b) _mm256_add_epi32(a, b)
#define BSK_PROBE_DOT(acc, a, b) bsk_dot_vex(acc, a, b)
#define BSK_PROBE_BYTES 32
#define BSK_PROBE_DPBUSD_FN bsk_probe_dpbusd_ymm_avx_vnni
#include "probe_body.h"
