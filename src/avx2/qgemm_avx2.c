/* Dense INT8 product with AVX2 and no VNNI, exact: the dot of dot4_avx2.h. */
#include "avx2/dot4_avx2.h"

#define QG_V __m256i
#define QG_BYTES 32
#define QG_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define QG_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define QG_ZERO() _mm256_setzero_si256()
#define QG_X bsk_qg_pair
#define QG_XPREP(v) qg_x_avx2(v)
#define QG_W bsk_qg_pair
/* the weights sign-extended once per row chunk: the even and odd int16 pairs
 * of a K-group's MR rows, MR words apart */
#define QG_WWIDE(dst, src) qg_w_widen_avx2((dst), (src))
#define QG_WPREP(p) qg_w_wide_avx2(p, BSK_QGEMM_MR)
#define QG_DOT(acc, x, w) qg_dot_avx2((acc), (x), (w))
#define QG_MRS 4
#define QG_NV 2

#define BSK_QGEMM_FN bsk_qgemm_u8s8s32_avx2
#include "simd/qgemm_simd.h"
_Static_assert(BSK_QGEMM_MR == 8, "qg_w_widen_avx2 widens the 8 rows of a weight block");
