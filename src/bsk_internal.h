/*
 * Private declarations shared by the kernel sources (not installed, not part
 * of the C API in include/blocksparse/).
 *
 * Every kernel family is built the same way: a body written once in a header
 * (in src/simd/ and src/nn/) is compiled into one translation unit per ISA
 * variant (src/ref/, src/avx2/, src/avxvnni/, src/avx512vnni/), each with only
 * that variant's compiler flags (setup.py).  src/dispatch.c holds one table
 * of function pointers per variant (bsk_kernels), checks the CPU once, and is
 * the only file that knows every variant; the drivers look up
 * bsk_kernels_for(isa)->fn.
 *
 * Everything defined here is static inline, so each translation unit gets its
 * own copy compiled with its own flags and no wide instruction can leak into
 * code that runs before the CPU check.
 */
#ifndef BLOCKSPARSE_BSK_INTERNAL_H
#define BLOCKSPARSE_BSK_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blocksparse/bsk.h"
#include "blocksparse/bsk_nn.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define BSK_INLINE static inline __attribute__((always_inline))

BSK_INLINE void *bsk_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

/* Per-thread scratch buffers kept between calls (src/scratch.c): kernels run
 * thousands of times a second from the same threads, and a malloc/free per
 * call and thread costs page faults (glibc hands large blocks back to the OS)
 * and, in a threaded process, TLB shoot-downs.  A buffer of `slot` of at
 * least `bytes` bytes, 64-byte aligned, owned by the calling thread until its
 * next call with the same slot; freed when the thread exits; NULL if out of
 * memory.  The contents are undefined. */
enum {
    BSK_SCRATCH_PANEL = 0,
    BSK_SCRATCH_ACC = 1,
    BSK_SCRATCH_STAGE = 2,
    BSK_SCRATCH_ATTN_SHARED = 3, /* INT8 attention: the quantized Q, K, V (calling thread) */
    BSK_SCRATCH_ATTN_TASK = 4,   /* INT8 attention: a thread's task scratch */
    BSK_SCRATCH_LAYER = 5,       /* INT8 encoder layer: a thread's own activations */
    BSK_SCRATCH_XQUANT = 6,      /* INT8 product on float tokens: a thread's codes, parameters */
    BSK_SCRATCH_SLOTS = 7
};
void *bsk_scratch(int slot, size_t bytes);

/* ---- team sizes on a busy machine (team.c) ---------------------------------- */

/* Every parallel region: `nt = bsk_team_begin(&clock, nt)` before it (1
 * while a recent region was held up by the scheduler), BSK_TEAM_ENTER and
 * BSK_TEAM_LEAVE around each thread's part, bsk_team_end(&clock) after it.
 * Results never depend on the team size, only the time does. */
#define BSK_TEAM_MAX 64
#define BSK_TEAM_BARRIERS 4
typedef struct {
    int team;
    int barriers;   /* timed barriers passed (bsk_team_barrier) */
    int64_t start;
    int64_t enter[BSK_TEAM_MAX], leave[BSK_TEAM_MAX];
    int64_t arrive[BSK_TEAM_BARRIERS][BSK_TEAM_MAX];
} bsk_team_clock;
int64_t bsk_now_ns(void);
int bsk_team_begin(bsk_team_clock *c, int nt);
void bsk_team_end(bsk_team_clock *c);
#define BSK_TEAM_ENTER(c, t) \
    do { if ((t) < (c)->team) (c)->enter[(t)] = bsk_now_ns(); } while (0)
#define BSK_TEAM_LEAVE(c, t) \
    do { if ((t) < (c)->team) (c)->leave[(t)] = bsk_now_ns(); } while (0)

/* A barrier of a region with several phases (the i-th, i < BSK_TEAM_BARRIERS,
 * counted from 0 by the caller): each thread's arrival is kept, and
 * bsk_team_end judges every phase as it judges a whole region, so a thread
 * held up in the middle is seen although the team leaves together. */
BSK_INLINE void bsk_team_barrier(bsk_team_clock *c, int t, int i)
{
    if (t < c->team && i < BSK_TEAM_BARRIERS)
        c->arrive[i][t] = bsk_now_ns();
#ifdef _OPENMP
#pragma omp barrier
#endif
    if (t == 0 && i < BSK_TEAM_BARRIERS && i + 1 > c->barriers)
        c->barriers = i + 1;
}

/* Deterministic static split of [0, n) into `parts` contiguous ranges. */
BSK_INLINE void bsk_split(int64_t n, int parts, int part, int64_t *lo, int64_t *hi)
{
    int64_t q = n / parts, r = n % parts;
    *lo = part * q + (part < r ? part : r);
    *hi = *lo + q + (part < r ? 1 : 0);
}

/* ---- arguments of the encoder kernels (src/nn) ------------------------------ */

/* The per-token passes (tokens_body.h); unused fields are NULL. */
typedef struct {
    const float *X;       /* (features, tokens) */
    const float *Xt;      /* (tokens, features), transposed into Y first */
    const float *Res;     /* (features, tokens) */
    float *Y;             /* (features, tokens) */
    int64_t features, tokens;
    int64_t ld_res, ld_y; /* layernorm: row strides of Res and of Y and Q, 0 = tokens */
    const float *gamma, *beta, *bias;
    float eps;
    int act;
    uint8_t *Q;           /* (features, tokens) */
    float *q_scale;       /* (tokens) */
    int32_t *q_zero;      /* (tokens) */
    const float *q_mul;   /* (features) */
} bsk_nn_tok_args;

/* Multi-head self-attention (attention_body.h). */
typedef struct {
    const float *QKV;
    int64_t batch, seq, heads, head_dim;
    const uint8_t *mask;
    float scale;
    float *Y;
} bsk_nn_attn_args;

/* What both attention drivers (attention.c, attention_q8.c) check and do: the
 * arguments of bsk_nn.h's attention functions; and, inside their OpenMP team
 * after a barrier, thread t of T's share (whole 16-token blocks) of the
 * per-token quantization of the output Y (F, N).  The latter returns 0, or 1
 * when out of memory. */
bsk_status bsk_nn_attn_check(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                             float scale, const float *QKV, const float *Y, const uint8_t *Q,
                             const float *q_scale, const int32_t *q_zero);
struct bsk_kernels;
int bsk_nn_attn_quantize_part(const struct bsk_kernels *k, float *Y, int64_t F, int64_t N,
                              uint8_t *Q, float *q_scale, int32_t *q_zero, int T, int t);

/* Widest query block of any variant's attention task (scratch sizing). */
#define BSK_NN_MAX_QW 64

/* Per-thread attention scratch; kp and vp hold the gathered keys and values
 * of (b, h). */
typedef struct {
    float *kp, *vp, *qp, *st;
    int64_t *keys;
    int64_t b, h, nk;
    int uniform, direct;
} bsk_nn_attn_ws;

/*
 * INT8 multi-head self-attention (attention_q8_body.h, driver attention_q8.c).
 * The drivers quantize Q, K and V once into these shared arrays (phase A),
 * then run the (sequence, head, query block) tasks on them (phase B):
 *   qv, kv   heads x G x Np x 4 bytes (G = ceil(D / 4), Np = N rounded up to
 *            16): the VNNI layout, for each group of four features and each
 *            token its four codes adjacent; features past D are zeros.  Q is
 *            uint8 per (token, head) asymmetric, K int8 per (token, head)
 *            symmetric in [-127, 127];
 *   q_scale, q_zero, k_scale, k_sum   heads x Np: the per-(token, head)
 *            parameters and the sums of the key codes;
 *   vc       hidden x Np int8 (+ 4 bytes of tail), V per (feature, sequence)
 *            symmetric over the sequence's attended keys, scale v_scale
 *            (batch x hidden);
 *   any      batch flags: the sequence attends to some key (else uniformly).
 */
typedef struct {
    const float *QKV;   /* token n of row r at QKV[r * ldx + n - x0] */
    int64_t ldx, x0;
    int64_t batch, seq, heads, head_dim, groups, ld; /* ld = Np */
    const uint8_t *mask;
    float scale_log2e;  /* the softmax scale times log2(e): scores in base 2 */
    float *Y;           /* token n of row r at Y[r * ldy + n - y0] */
    int64_t ldy, y0;
    uint8_t *qv;
    int8_t *kv, *vc;
    float *q_scale, *k_scale, *v_scale;
    int32_t *q_zero, *k_sum;
    const uint8_t *any;
    int keys_only;      /* quant_tokens makes the K codes only */
    const bsk_attn_q8_trace *trace; /* tests: intermediate results, or NULL */
} bsk_nn_aq_args;

/* Tokens per chunk of phase A (its per-token state, 5 arrays, stays in L1). */
#define BSK_AQ_CHUNK 256

/* The INT8 attention's shared arrays (in the calling thread's scratch) and
 * arguments a, for a driver that runs phases A and B in its own team
 * (attention_q8.c); *task_bytes: each thread's scratch for phase A and its
 * tasks (bsk_nn_aq_task_ws).  BSK_EOVERFLOW past the kernel's limits. */
bsk_status bsk_nn_aq_prepare(const float *QKV, int64_t batch, int64_t seq, int64_t heads,
                             int64_t head_dim, const uint8_t *mask, float scale, float *Y,
                             const bsk_attn_q8_trace *trace, bsk_nn_aq_args *a,
                             size_t *task_bytes);

/* A thread's INT8 attention scratch; the key lists are those of sequence b. */
typedef struct {
    float *st;       /* seq x QW scores, then nothing */
    uint8_t *pp;     /* (ceil(seq / 4) + 1) x 2 x QW x 4: per four keys the high then the
                      * low bytes of the probability codes, VNNI layout */
    float *yt;       /* head_dim x QW output tile */
    int32_t *keys;   /* the attended keys of b, ascending */
    int32_t *row;    /* position p in [lo, hi) -> its row of st, or -1 (masked) */
    int64_t b, nk, lo, hi;
    int uniform;
} bsk_nn_aq_ws;

/* Carve a thread's scratch `mine` (task_bytes of bsk_nn_aq_prepare) into ws. */
void bsk_nn_aq_task_ws(const bsk_nn_aq_args *a, uint8_t *mine, bsk_nn_aq_ws *ws);

/* ---- the kernel table: one per ISA variant ----------------------------------- */

typedef bsk_status (*bsk_spmm_f32_fn)(const bsk_bcsr *W, const float *X, int64_t ldx,
                                      int64_t N, float *Y, int64_t ldy, int transposed,
                                      int nt);
typedef bsk_status (*bsk_spmm_f64_fn)(const bsk_bcsr *W, const double *X, int64_t ldx,
                                      int64_t N, double *Y, int64_t ldy, int transposed,
                                      int nt);
typedef bsk_status (*bsk_qspmm_fn)(const bsk_qbcsr *W, const uint8_t *X, int64_t ldx,
                                   int64_t N, int xt, void *Y, int64_t ldy, int yt,
                                   const bsk_epilogue *epi, int nt);
typedef bsk_status (*bsk_qlinear_f32_fn)(const bsk_qbcsr *W, const float *X, int64_t ldx,
                                         int64_t N, float *x_scale, int32_t *x_zero, void *Y,
                                         int64_t ldy, const bsk_epilogue *epi, int nt);
typedef bsk_status (*bsk_qgemm_fn)(const bsk_qdense *W, const uint8_t *X, int64_t ldx,
                                   int64_t N, int xt, void *Y, int64_t ldy, int yt,
                                   const bsk_epilogue *epi, int nt);
typedef bsk_status (*bsk_quantize_u8_fn)(const float *X, int64_t rows, int64_t cols,
                                         int64_t ldx, int mode, float *scale,
                                         int32_t *zero, uint8_t *Q, int64_t ldq,
                                         int num_threads);
/* A per-token pass over tokens (or feature rows) [n0, n1) with scratch ws. */
typedef void (*bsk_nn_range_fn)(const bsk_nn_tok_args *a, int64_t n0, int64_t n1, float *ws);
/* The per-token passes of one variant (tokens_body.h). */
typedef struct {
    bsk_nn_range_fn transpose;       /* tokens-major input into (features, tokens) */
    bsk_nn_range_fn layernorm;       /* residual add + LayerNorm (+ uint8 codes) */
    bsk_nn_range_fn quantize;        /* per-token uint8 quantization */
    bsk_nn_range_fn bias_act;        /* bias + activation over feature rows */
    /* per-token quantization split by feature rows [n0, n1), in two phases:
     * range_rows: ws = (lo, hi) of the rows' values per token;
     * codes_rows: ws = (lo, hi) of all rows, then scratch for s, z: the
     * parameters (written to q_scale, q_zero by the call with n0 == 0) and
     * the codes of the rows */
    bsk_nn_range_fn range_rows;
    bsk_nn_range_fn codes_rows;
} bsk_nn_token_kernels;
/* Attention: one task is sequence b, head h, the `queries` queries from i0. */
typedef struct {
    void (*task)(const bsk_nn_attn_args *a, int64_t b, int64_t h, int64_t i0,
                 bsk_nn_attn_ws *ws);
    int queries;                     /* <= BSK_NN_MAX_QW */
} bsk_nn_attention_kernel;

/* INT8 attention of one variant: phase A over tokens [n0, n1) (whole 16-token
 * blocks) and over (sequence, V row) items [r0, r1); phase B one task. */
typedef struct {
    void (*quant_tokens)(const bsk_nn_aq_args *a, int64_t n0, int64_t n1, float *ws);
    void (*quant_values)(const bsk_nn_aq_args *a, int64_t r0, int64_t r1);
    /* quant_values of V row f of sequence b in two steps over a part [p0, p1) of
     * its positions: the part's max |v| over attended keys, then, given the
     * maximum over all parts, the part's codes (and v_scale, from the part at 0) */
    float (*values_amax)(const bsk_nn_aq_args *a, int64_t b, int64_t f, int64_t p0, int64_t p1);
    void (*values_codes)(const bsk_nn_aq_args *a, int64_t b, int64_t f, int64_t p0, int64_t p1,
                         float amax);
    void (*task)(const bsk_nn_aq_args *a, int64_t b, int64_t h, int64_t i0, bsk_nn_aq_ws *ws);
    int queries;                     /* <= BSK_NN_MAX_QW */
} bsk_nn_attention_q8_kernel;

typedef struct bsk_kernels {
    /* float block-CSR x dense, any block shape */
    bsk_spmm_f32_fn spmm_f32;
    bsk_spmm_f64_fn spmm_f64;
    /* INT8 kernels for blocksize (1, 4) ("row") and grouped (4, 1) ("strip");
     * NULL: every shape runs the scalar kernel.  The names are for logs. */
    bsk_qspmm_fn qspmm;
    const char *qspmm_row_name, *qspmm_strip_name;
    /* the grouped (4, 1) kernel on float32 tokens, quantized per token as it
     * packs them (NULL: quantize, then qspmm) */
    bsk_qlinear_f32_fn qlinear_f32;
    /* dense INT8 product (bsk_qgemm) and its name */
    bsk_qgemm_fn qgemm;
    const char *qgemm_name;
    /* activation quantization */
    bsk_quantize_u8_fn quantize_u8;
    /* encoder kernels, called by the drivers in src/nn/tokens.c, attention.c */
    const bsk_nn_token_kernels *nn_tokens;
    const bsk_nn_attention_kernel *nn_attention;
    const bsk_nn_attention_q8_kernel *nn_attention_q8;  /* exact: same bits on every variant */
} bsk_kernels;

/* The table of `isa` if it is built and usable on this CPU, else NULL. */
const bsk_kernels *bsk_kernels_for(bsk_isa isa);

/* The INT8 sparse kernel bsk_qspmm runs for W with table k (dispatch.c). */
bsk_qspmm_fn bsk_qspmm_pick(const bsk_kernels *k, const bsk_qbcsr *W);

/* ---- per-variant entry points (defined in src/<isa>/, listed in dispatch.c) ---- */

#define BSK_DECLARE_SPMM(sfx)                                                  \
    bsk_status bsk_spmm_f32_##sfx(const bsk_bcsr *W, const float *X,          \
                                  int64_t ldx, int64_t N, float *Y,           \
                                  int64_t ldy, int transposed, int nt);       \
    bsk_status bsk_spmm_f64_##sfx(const bsk_bcsr *W, const double *X,         \
                                  int64_t ldx, int64_t N, double *Y,          \
                                  int64_t ldy, int transposed, int nt);
#define BSK_DECLARE_QSPMM(sfx)                                                 \
    bsk_status bsk_qspmm_u8s8s32_##sfx(const bsk_qbcsr *W, const uint8_t *X,  \
                                       int64_t ldx, int64_t N, int xt,        \
                                       void *Y, int64_t ldy, int yt,          \
                                       const bsk_epilogue *epi, int nt);       \
    bsk_status bsk_qlinear_f32_##sfx(const bsk_qbcsr *W, const float *X,      \
                                     int64_t ldx, int64_t N, float *x_scale,  \
                                     int32_t *x_zero, void *Y, int64_t ldy,   \
                                     const bsk_epilogue *epi, int nt);
#define BSK_DECLARE_QGEMM(sfx)                                                 \
    bsk_status bsk_qgemm_u8s8s32_##sfx(const bsk_qdense *W, const uint8_t *X,  \
                                       int64_t ldx, int64_t N, int xt,        \
                                       void *Y, int64_t ldy, int yt,          \
                                       const bsk_epilogue *epi, int nt);
#define BSK_DECLARE_QUANTIZE(sfx)                                              \
    bsk_status bsk_quantize_u8_##sfx(const float *X, int64_t rows,             \
                                     int64_t cols, int64_t ldx, int mode,     \
                                     float *scale, int32_t *zero, uint8_t *Q, \
                                     int64_t ldq, int num_threads);
#define BSK_DECLARE_NN(sfx)                                                    \
    extern const bsk_nn_token_kernels bsk_nn_tokens_##sfx;                    \
    extern const bsk_nn_attention_kernel bsk_nn_attention_##sfx;
#define BSK_DECLARE_NN_Q8(sfx)                                                 \
    extern const bsk_nn_attention_q8_kernel bsk_nn_attention_q8_##sfx;

BSK_DECLARE_SPMM(scalar)
BSK_DECLARE_QSPMM(scalar)
BSK_DECLARE_QGEMM(scalar)
BSK_DECLARE_QUANTIZE(scalar)
BSK_DECLARE_NN(scalar)
BSK_DECLARE_NN_Q8(scalar)

BSK_DECLARE_SPMM(avx2)
BSK_DECLARE_QSPMM(avx2)
BSK_DECLARE_QGEMM(avx2)
BSK_DECLARE_QUANTIZE(avx2)
BSK_DECLARE_NN(avx2)
BSK_DECLARE_NN_Q8(avx2)

BSK_DECLARE_QSPMM(avx_vnni)      /* float and encoder kernels: the AVX2 ones */
BSK_DECLARE_QGEMM(avx_vnni)
BSK_DECLARE_QUANTIZE(avx_vnni)
BSK_DECLARE_NN_Q8(avx_vnni)

BSK_DECLARE_SPMM(avx512_vnni)
BSK_DECLARE_QSPMM(avx512_vnni)
BSK_DECLARE_QGEMM(avx512_vnni)
BSK_DECLARE_QUANTIZE(avx512_vnni)
BSK_DECLARE_NN(avx512_vnni)
BSK_DECLARE_NN_Q8(avx512_vnni)

#endif /* BLOCKSPARSE_BSK_INTERNAL_H */
