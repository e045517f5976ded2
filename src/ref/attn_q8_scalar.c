/* INT8 attention, portable build: the dot as plain loops over the 16 lanes
 * and their four byte products (the reference every variant must match bit
 * for bit). */
#include "nn/nn_simd.h"

typedef struct {
    uint8_t b[64];
} aq_x_scalar;

static inline aq_x_scalar aq_load_scalar(const uint8_t *p)
{
    aq_x_scalar x;
    memcpy(x.b, p, sizeof(x.b));
    return x;
}

static inline bsk_v16i aq_dot_scalar(bsk_v16i acc, aq_x_scalar x, int32_t w)
{
    int8_t wb[4];
    memcpy(wb, &w, 4); /* the group's bytes in memory order */
    for (int l = 0; l < 16; l++)
        for (int i = 0; i < 4; i++)
            acc[l] += (int32_t)x.b[4 * l + i] * wb[i];
    return acc;
}

#define AQ_X aq_x_scalar
#define AQ_XLOAD(p) aq_load_scalar(p)
#define AQ_W int32_t
#define AQ_WPREP(w) (w)
#define AQ_ACC bsk_v16i
#define AQ_ACC_ZERO() ((bsk_v16i){0})
#define AQ_ACC_PART(acc, k) (acc)
#define AQ_DOT(acc, x, w) aq_dot_scalar((acc), (x), (w))

#define BSK_AQ_SFX scalar
#define BSK_AQ_IV 1
#define BSK_AQ_JB 2
#define BSK_AQ_CB 2
#include "nn/attention_q8_body.h"
