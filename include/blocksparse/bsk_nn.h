/*
 * Kernels for the BERT encoder (blocksparse.nn): fused residual + LayerNorm,
 * bias + activation, per-token uint8 quantization and multi-head
 * self-attention.  C11, no Python headers; same status conventions as bsk.h.
 *
 * Layout: activations are tokens x features, row-major: row t = b * seq + s
 * holds the features of token s of sequence b (the NumPy (batch, seq,
 * hidden) array flattened to (batch * seq, hidden)).  Every row is
 * processed by one thread with the same code, so results do not depend on
 * the thread count.  The per-row uint8 quantization is bit-identical to
 * bsk_quantize_u8 in BSK_QUANT_PER_ROW mode.
 *
 * The `isa` argument selects the code path as in bsk.h (an unusable ISA
 * gives BSK_EUNSUPPORTED): scalar runs the portable build, avx2 and
 * avx_vnni an AVX2+FMA build, avx512_vnni an AVX-512 build.  Float results
 * may differ in the last bits between ISAs (FMA contraction, vector width);
 * the uint8 outputs of one float input are the same on all of them.
 */
#ifndef BLOCKSPARSE_BSK_NN_H
#define BLOCKSPARSE_BSK_NN_H

#include "blocksparse/bsk.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Y = LayerNorm(X + Res) * gamma + beta over each row of `cols` features:
 *   t = x + res, mean = sum(t) / cols, var = sum((t - mean)^2) / cols,
 *   y = (t - mean) / sqrt(var + eps) * gamma + beta.
 * Res may be NULL (plain LayerNorm).  Y may be the same pointer as X or Res
 * (in place) but must not overlap them otherwise.  If Q is not NULL, the
 * result is also quantized per row into Q (uint8), q_scale and q_zero
 * (one per row), as bsk_quantize_u8 would; with q_mul (cols floats, may be
 * NULL) the quantized values are those of y * q_mul (per-feature smoothing
 * of the next layer's input, whose weight columns hold 1 / q_mul).
 */
bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int64_t ldx,
                                 const float *Res, int64_t ldr, int64_t rows,
                                 int64_t cols, const float *gamma,
                                 const float *beta, float eps, float *Y,
                                 int64_t ldy, uint8_t *Q, int64_t ldq,
                                 float *q_scale, int32_t *q_zero,
                                 const float *q_mul, int num_threads);

/*
 * Y = act(Y + bias) in place, bias of length cols (may be NULL), act one of
 * BSK_ACT_NONE, BSK_ACT_RELU, BSK_ACT_GELU (erf form, the same GELU as the
 * INT8 epilogue).
 */
bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t rows, int64_t cols,
                            int64_t ldy, const float *bias, int act,
                            int num_threads);

/*
 * Dynamic per-row uint8 quantization (bsk_quantize_u8, BSK_QUANT_PER_ROW) of
 * X, or of X * q_mul (per column) if q_mul is not NULL.
 */
bsk_status bsk_quantize_rows_u8(bsk_isa isa, const float *X, int64_t rows,
                                int64_t cols, int64_t ldx, uint8_t *Q,
                                int64_t ldq, float *q_scale, int32_t *q_zero,
                                const float *q_mul, int num_threads);

/*
 * Multi-head self-attention, float32, one fused pass per (sequence, head):
 *   scores = (Q_h K_h^T) * scale, masked keys removed,
 *   P = softmax(scores) over the keys, Y_h = P V_h.
 * QKV has batch * seq rows of at least 3 * heads * head_dim floats: the
 * queries of head h at columns [h*d, (h+1)*d), the keys at hidden + h*d,
 * the values at 2*hidden + h*d (hidden = heads * head_dim), which is the
 * output of one Linear layer with the three weights stacked.  Y has
 * batch * seq rows of hidden floats (heads side by side, as the output
 * projection expects).  mask is NULL (attend everywhere) or batch * seq
 * bytes, non-zero = attend to this key.  A sequence whose keys are all
 * masked attends uniformly to all its keys, as a float32 additive mask of
 * finfo.min does.  If Q is not NULL, Y is also quantized per row into Q,
 * q_scale, q_zero, ready for the output projection.
 * Threads split the batch * heads pairs (then the rows for Q).
 */
bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t ldqkv,
                             int64_t batch, int64_t seq, int64_t heads,
                             int64_t head_dim, const uint8_t *mask, float scale,
                             float *Y, int64_t ldy, uint8_t *Q, int64_t ldq,
                             float *q_scale, int32_t *q_zero, int num_threads);

#ifdef __cplusplus
}
#endif
#endif /* BLOCKSPARSE_BSK_NN_H */
