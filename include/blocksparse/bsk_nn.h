/*
 * Kernels for the BERT encoder (blocksparse.nn): fused residual + LayerNorm
 * (+ quantization of the result), bias + activation, per-token uint8
 * quantization and multi-head self-attention.  C11, no Python headers; same
 * status conventions as bsk.h.
 *
 * Layout: activations are features x tokens, row-major, the paper's layout
 * and the W @ X form of bsk_qspmm: element (f, t) of an activation array
 * with F features and N tokens is at [f * N + t], and token t = b * seq + s
 * is position s of sequence b.  Every per-token computation runs across 16
 * tokens at a time in vector lanes, each token in one lane, so results do
 * not depend on the thread count.  The per-token uint8 quantization is
 * bit-identical to bsk_quantize_u8 in BSK_QUANT_PER_ROW mode applied to the
 * transposed (tokens, features) array.
 *
 * The `isa` argument selects the code path as in bsk.h (an unusable ISA
 * gives BSK_EUNSUPPORTED): scalar runs the portable build, avx2 and
 * avx_vnni an AVX2+FMA build, avx512_vnni an AVX-512 build.  Float results
 * may differ in the last bits between ISAs (FMA contraction); the uint8
 * outputs of one float input are the same on all of them.
 */
#ifndef BLOCKSPARSE_BSK_NN_H
#define BLOCKSPARSE_BSK_NN_H

#include "blocksparse/bsk.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Y = LayerNorm(X + Res) * gamma + beta over the F features of each of the
 * N tokens:  t = x + res, mean = sum(t) / F, var = sum((t - mean)^2) / F,
 * y = (t - mean) / sqrt(var + eps) * gamma + beta.
 * X is (F, N), or (N, F) (tokens-major, e.g. gathered embeddings) if
 * x_tokens is 1; Res (F, N) or NULL; Y (F, N), which may be X (when X is
 * (F, N)) or Res (in place) but must not overlap them otherwise.  If Q is
 * not NULL, y is also quantized per token into Q (F, N) uint8, q_scale (N)
 * and q_zero (N); with q_mul (F floats, may be NULL) the quantized values are
 * those of y * q_mul (per-feature smoothing of the next layer's input, whose
 * weight columns hold 1 / q_mul).
 */
bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int x_tokens,
                                 const float *Res, int64_t F, int64_t N,
                                 const float *gamma, const float *beta,
                                 float eps, float *Y, uint8_t *Q,
                                 float *q_scale, int32_t *q_zero,
                                 const float *q_mul, int num_threads);

/*
 * Y (cols, rows) = the transpose of X (rows, cols), both C-contiguous and
 * not overlapping (a model's features-major output to tokens-major).
 */
bsk_status bsk_transpose_f32(bsk_isa isa, const float *X, int64_t rows, int64_t cols,
                             float *Y, int num_threads);

/*
 * Y = act(Y + bias) in place, Y (M, N), bias of length M (one per feature
 * row, may be NULL), act one of BSK_ACT_NONE, BSK_ACT_RELU, BSK_ACT_GELU
 * (erf form, the same GELU as the INT8 epilogue).
 */
bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t M, int64_t N,
                            const float *bias, int act, int num_threads);

/*
 * Dynamic per-token uint8 quantization of X (F, N) (times q_mul[f] per
 * feature if q_mul is not NULL) into Q (F, N), q_scale (N), q_zero (N).
 */
bsk_status bsk_quantize_tokens_u8(bsk_isa isa, const float *X, int64_t F,
                                  int64_t N, const float *q_mul, uint8_t *Q,
                                  float *q_scale, int32_t *q_zero,
                                  int num_threads);

/*
 * The per-token kernels above use one thread per `work` elements (features
 * x tokens) at most, 256 K by default; 0 always uses the requested count
 * (for tests).  Results do not depend on it.  Returns the previous value.
 */
int64_t bsk_nn_set_min_work_per_thread(int64_t work);

/*
 * Multi-head self-attention, float32.  Per sequence b and head h:
 *   scores = (Q_h^T K_h) * scale over the attended keys only,
 *   P = softmax(scores) over the keys, Y_h = V_h P^T.
 * QKV is (3 * hidden, batch * seq) with hidden = heads * head_dim: rows
 * [h*d, (h+1)*d) are the queries of head h, rows hidden + h*d ... the keys,
 * rows 2*hidden + h*d ... the values (the output of one Linear layer with
 * the three weights stacked).  Y is (hidden, batch * seq), the heads'
 * outputs stacked as the output projection expects.  mask is NULL (attend
 * everywhere) or batch * seq bytes, non-zero = attend to this key.  Masked
 * keys are skipped, so their weight is exactly 0; a sequence whose keys are
 * all masked attends uniformly to all its keys, as a float32 additive mask
 * of finfo.min does.  If Q is not NULL, Y is also quantized per token into
 * Q, q_scale, q_zero, ready for the output projection.  Threads split the
 * (sequence, head, block of 16-64 queries) triples, then the tokens for Q.
 */
bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t batch,
                             int64_t seq, int64_t heads, int64_t head_dim,
                             const uint8_t *mask, float scale, float *Y,
                             uint8_t *Q, float *q_scale, int32_t *q_zero,
                             int num_threads);

/*
 * Intermediate results of bsk_attention_q8, for tests: each pointer may be
 * NULL.  With N = batch * seq, G = ceil(head_dim / 4), Np = N rounded up to
 * a multiple of 16:
 *   q       heads x G x Np x 4  query codes (uint8), VNNI layout: element
 *           [h][g][n][i] is feature 4g + i of head h, token n (0 past head_dim)
 *   k       heads x G x Np x 4  key codes (int8), same layout
 *   q_scale, q_zero, k_scale, k_sum   heads x Np (k_sum: sum of the key codes)
 *   v       hidden x Np         value codes (int8)
 *   v_scale batch x hidden
 *   scores  batch x heads x seq (queries) x seq (keys): the exact int32
 *           sum_c (q - q_zero) k, written for the attended keys only
 *   p       same shape: the 16-bit probability codes, written for the keys
 *           from the first to the last attended one (0 for masked keys there)
 *   pv_hi, pv_lo  hidden x N: the exact int32 sum_j v[j] (p[j] >> 8) and
 *           sum_j v[j] (p[j] & 255)
 *   p_sum   heads x N: sum_j p[j]
 * Lanes past N of the Np-long rows are left undefined.
 */
typedef struct {
    uint8_t *q;
    int8_t *k, *v;
    float *q_scale, *k_scale, *v_scale;
    int32_t *q_zero, *k_sum;
    int32_t *scores;
    uint16_t *p;
    int32_t *pv_hi, *pv_lo, *p_sum;
} bsk_attn_q8_trace;

/* The longest sequence of bsk_attention_q8 (the probability codes' sums
 * stay in int32). */
#define BSK_AQ_MAX_SEQ ((int64_t)32768)

/*
 * Multi-head self-attention with INT8 products, the arguments and result of
 * bsk_attention_f32 (mask, uniform attention of a fully masked sequence,
 * optional per-token quantization of Y), computed as:
 *   Q uint8 per (token, head), asymmetric (the per-token quantization of
 *     the activations); K int8 per (token, head), symmetric, [-127, 127];
 *   scores = (float)(sum_c (q - q_zero) k) * (q_scale * (k_scale * scale)),
 *     the integer part exact in int32 (the zero point removed with the sums
 *     of the key codes), over the attended keys;
 *   P 16-bit codes rint(65535 * exp(scores - max)) per query (65535 at its
 *     maximum), computed as 2^x with a polynomial good to 0.012 of a code;
 *   V int8 per (feature, sequence), symmetric over the attended keys;
 *   P V as two exact int32 products with the high and the low bytes of P;
 *   Y = (256 hi + lo) * (v_scale * (1 / sum_j p)): the integer weights
 *     normalized by their own sum.
 * 8-bit probability codes were tried and dropped: relative to the maximum
 * (often an attention sink) the many small weights of long sequences kept
 * too few levels (all-MiniLM-L6-v2 at 512 tokens: cosine 0.9977 to float32,
 * 0.99997 with 16 bits).
 * Every step uses only integer arithmetic and IEEE float + - * / in a fixed
 * order, so Y (and Q) have the same bits on every ISA and thread count.
 * head_dim must not exceed BSK_MAX_K_INT8, seq BSK_AQ_MAX_SEQ (else
 * BSK_EOVERFLOW).  trace (tests) may be NULL.
 */
bsk_status bsk_attention_q8(bsk_isa isa, const float *QKV, int64_t batch,
                            int64_t seq, int64_t heads, int64_t head_dim,
                            const uint8_t *mask, float scale, float *Y,
                            uint8_t *Q, float *q_scale, int32_t *q_zero,
                            const bsk_attn_q8_trace *trace, int num_threads);

/* One INT8 Linear weight of an encoder layer: sparse (block-CSR, blocksize
 * (4, 1) grouped or any other) or dense (bsk_qgemm's panel), exactly one of
 * the two; with the per-row arrays of its epilogue (bsk_epilogue). */
typedef struct {
    const bsk_qbcsr *sparse;
    const bsk_qdense *dense;
    const int32_t *rowsum;      /* M: the row sums of the int8 weights */
    const float *w_scale;       /* M */
    const float *bias;          /* M, or NULL */
} bsk_layer_weight;

/*
 * One post-LayerNorm (BERT) encoder layer with INT8 weights and INT8
 * attention, on N = batch * seq tokens, activations (features, tokens):
 *   qkv   = W_qkv @ X + b                                  (3H, N)
 *   ctx   = bsk_attention_q8(qkv, mask, scale)             (H, N), per-token codes
 *   h1    = LayerNorm1(W_out @ ctx + b + X)                (H, N), per-token codes
 *   inter = act(W_ffn1 @ h1 + b)                           (I, N), per-token codes
 *   Y     = LayerNorm2(W_ffn2 @ inter + b + h1)            (H, N), codes if YQ
 * Each product reads the uint8 codes of its input (XQ, x_scale, x_zero for
 * the first, given), quantized per token after multiplying by the
 * per-feature factors out_mul, ffn1_mul, ffn2_mul, next_mul (NULL: none);
 * LayerNorm as bsk_add_layernorm_f32.  The result has the bits of the
 * separate calls (bsk_qspmm / bsk_qgemm, bsk_attention_q8,
 * bsk_quantize_tokens_u8, bsk_add_layernorm_f32) on any ISA and thread count.
 */
typedef struct {
    int64_t batch, seq, heads, hidden, inter;
    const uint8_t *mask;        /* (batch, seq) bytes, non-zero = attend; or NULL */
    float scale;                /* of the attention scores, 1 / sqrt(head_dim) */
    bsk_layer_weight qkv, out, ffn1, ffn2;
    int act;                    /* FFN1's: BSK_ACT_NONE, BSK_ACT_RELU or BSK_ACT_GELU */
    const float *ln1_gamma, *ln1_beta, *ln2_gamma, *ln2_beta;
    float ln1_eps, ln2_eps;
    const float *out_mul, *ffn1_mul, *ffn2_mul, *next_mul;
    const float *X;             /* (H, N) float32 input, the first residual */
    const uint8_t *XQ;          /* (H, N) its codes */
    const float *x_scale;       /* N */
    const int32_t *x_zero;      /* N */
    float *Y;                   /* (H, N) output, not overlapping X */
    uint8_t *YQ;                /* (H, N) its codes, or NULL (then y_* too) */
    float *y_scale;
    int32_t *y_zero;
} bsk_encoder_layer_q8;

/*
 * Run the layer in one team of threads: each thread takes an equal share of
 * the tokens (whole 16-token blocks) for everything that works per token
 * (the four products, the quantizations, both LayerNorms), so a token's
 * activations stay in the cache of the core that made them; the attention
 * meets the other threads' keys and values after two barriers, and its
 * (sequence, query block, head) tasks are split evenly, then a third
 * barrier.  The intermediate activations live in the calling thread's
 * scratch.  BSK_EINVAL for inconsistent shapes or pointers, BSK_EOVERFLOW
 * past the INT8 kernels' limits.
 */
bsk_status bsk_encoder_layer_q8_run(bsk_isa isa, const bsk_encoder_layer_q8 *L,
                                    int num_threads);

#ifdef __cplusplus
}
#endif
#endif /* BLOCKSPARSE_BSK_NN_H */
