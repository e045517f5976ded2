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
