/* INT8 attention with AVX2 and no VNNI: the exact two-vpmaddwd dot of
 * dot4_avx2.h on both 256-bit halves of each 16-lane vector; the codes'
 * even/odd words are made once per vector for all keys (features), the
 * broadcast group's once per key for all vectors. */
#include "avx2/dot4_avx2.h"
#include "nn/nn_simd.h"

typedef struct {
    bsk_qg_pair lo, hi;
} aq_x_avx2;

static inline aq_x_avx2 aq_load_avx2(const uint8_t *p)
{
    aq_x_avx2 x;
    x.lo = qg_x_avx2(_mm256_loadu_si256((const __m256i *)p));
    x.hi = qg_x_avx2(_mm256_loadu_si256((const __m256i *)(p + 32)));
    return x;
}

typedef struct {
    __m256i lo, hi; /* lanes 0-7, 8-15 */
} aq_acc_avx2;

static inline aq_acc_avx2 aq_dot_avx2(aq_acc_avx2 acc, aq_x_avx2 x, bsk_qg_pair w)
{
    acc.lo = qg_dot_avx2(acc.lo, x.lo, w);
    acc.hi = qg_dot_avx2(acc.hi, x.hi, w);
    return acc;
}

#define AQ_X aq_x_avx2
#define AQ_XLOAD(p) aq_load_avx2(p)
#define AQ_W bsk_qg_pair
#define AQ_WPREP(w) qg_w_avx2(w)
#define AQ_ACC aq_acc_avx2
#define AQ_ACC_ZERO() ((aq_acc_avx2){_mm256_setzero_si256(), _mm256_setzero_si256()})
#define AQ_ACC_PART(acc, k) ((k) ? (bsk_vi)(acc).hi : (bsk_vi)(acc).lo)
#define AQ_DOT(acc, x, w) aq_dot_avx2((acc), (x), (w))

/* 16 ymm registers: scores 4 x 1 accumulators (8), the vector's halves (4), the
 * group's (2); P V 2 x 1 x 1 (4), two planes' halves (8), the group's (2) */
#define BSK_AQ_SFX avx2
#define BSK_AQ_IV 1
#define BSK_AQ_JB 4
#define BSK_AQ_CB 1
#include "nn/attention_q8_body.h"
