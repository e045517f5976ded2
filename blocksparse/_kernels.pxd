# Declarations of the C kernel API (include/blocksparse/bsk.h, bsk_nn.h), nothing else.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "blocksparse/bsk.h" nogil:
    ctypedef enum bsk_status:
        BSK_OK
        BSK_EINVAL
        BSK_ENOMEM
        BSK_EUNSUPPORTED
        BSK_EOVERFLOW
        BSK_ENONFINITE

    ctypedef enum bsk_isa:
        BSK_ISA_SCALAR
        BSK_ISA_AVX2
        BSK_ISA_AVX_VNNI
        BSK_ISA_AVX512_VNNI
        BSK_ISA_COUNT

    ctypedef struct bsk_bcsr:
        int64_t M, K, R, C, nnzb
        const int32_t *indptr
        const int32_t *indices
        const void *data

    ctypedef struct bsk_qbcsr:
        bsk_bcsr w
        const int32_t *gptr
        const int32_t *gcols
        const int32_t *gw

    ctypedef struct bsk_qdense:
        int64_t M, K
        const int32_t *panel

    int BSK_QGEMM_MR

    ctypedef struct bsk_epilogue:
        int kind
        int act
        const int32_t *rowsum
        const float *w_scale
        const float *x_scale
        const int32_t *x_zero
        const float *bias
        float out_scale
        int32_t out_zero
        const float *f_x
        int64_t ld_fx
        int64_t f_ncols
        const int32_t *f_cols
        const float *f_dense
        const int32_t *f_indptr
        const int32_t *f_indices
        const float *f_data

    int BSK_OUT_I32, BSK_OUT_F32, BSK_OUT_U8
    int BSK_ACT_NONE, BSK_ACT_RELU, BSK_ACT_GELU
    int64_t BSK_MAX_K_INT8

    bsk_isa bsk_isa_best()
    int bsk_isa_built(bsk_isa isa)
    int bsk_isa_detected(bsk_isa isa)
    const char *bsk_isa_name(bsk_isa isa)
    uint64_t bsk_isa_features(bsk_isa isa)
    const char *bsk_feature_name(int bit)
    uint64_t bsk_cpu_features(uint64_t *xcr0)
    uint32_t bsk_isa_mask_for(uint64_t features, uint64_t xcr0)
    const char *bsk_isa_flags(bsk_isa isa)
    int bsk_default_threads()
    int bsk_have_openmp()
    int64_t bsk_set_min_work_per_thread(int64_t work)
    void bsk_team_set_adaptive(int on)
    int bsk_team_adaptive()
    void bsk_team_state(int *on, int64_t *single_for_ns, int64_t *count, int64_t *team_for_ns,
                        int64_t *shared_ends)

    bsk_status bsk_spmm_f32(bsk_isa isa, const bsk_bcsr *W, const float *X,
                            int64_t ldx, int64_t N, float *Y, int64_t ldy,
                            int transposed, int num_threads)
    bsk_status bsk_spmm_f64(bsk_isa isa, const bsk_bcsr *W, const double *X,
                            int64_t ldx, int64_t N, double *Y, int64_t ldy,
                            int transposed, int num_threads)
    bsk_status bsk_qspmm(bsk_isa isa, const bsk_qbcsr *W, const uint8_t *X,
                         int64_t ldx, int64_t N, int x_transposed, void *Y,
                         int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                         int num_threads)
    bsk_status bsk_qgemm(bsk_isa isa, const bsk_qdense *W, const uint8_t *X,
                         int64_t ldx, int64_t N, int x_transposed, void *Y,
                         int64_t ldy, int y_transposed, const bsk_epilogue *epi,
                         int num_threads)
    int BSK_QUANT_STATIC, BSK_QUANT_PER_TENSOR, BSK_QUANT_PER_ROW
    bsk_status bsk_quantize_u8(bsk_isa isa, const float *X, int64_t rows, int64_t cols,
                               int64_t ldx, int mode, float *scale, int32_t *zero,
                               uint8_t *Q, int64_t ldq, int num_threads)
    bsk_status bsk_qlinear_f32(bsk_isa isa, const bsk_qbcsr *W, const bsk_qdense *D,
                               const float *X, int64_t ldx, int64_t N, float *x_scale,
                               int32_t *x_zero, void *Y, int64_t ldy, const bsk_epilogue *epi,
                               int num_threads)
    const char *bsk_qspmm_kernel_name(bsk_isa isa, const bsk_qbcsr *W)
    const char *bsk_qgemm_kernel_name(bsk_isa isa)

cdef extern from "blocksparse/bsk_nn.h" nogil:
    bsk_status bsk_transpose_f32(bsk_isa isa, const float *X, int64_t rows, int64_t cols,
                                 float *Y, int num_threads)
    bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int x_tokens,
                                     const float *Res, int64_t F, int64_t N,
                                     const float *gamma, const float *beta,
                                     float eps, float *Y, uint8_t *Q,
                                     float *q_scale, int32_t *q_zero,
                                     const float *q_mul, int num_threads)
    bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t M, int64_t N,
                                const float *bias, int act, int num_threads)
    bsk_status bsk_quantize_tokens_u8(bsk_isa isa, const float *X, int64_t F,
                                      int64_t N, const float *q_mul, uint8_t *Q,
                                      float *q_scale, int32_t *q_zero,
                                      int num_threads)
    int64_t bsk_nn_set_min_work_per_thread(int64_t work)
    bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t batch,
                                 int64_t seq, int64_t heads, int64_t head_dim,
                                 const uint8_t *mask, float scale, float *Y,
                                 uint8_t *Q, float *q_scale, int32_t *q_zero,
                                 int num_threads)
    ctypedef struct bsk_attn_q8_trace:
        uint8_t *q
        int8_t *k
        int8_t *v
        float *q_scale
        float *k_scale
        float *v_scale
        int32_t *q_zero
        int32_t *k_sum
        int32_t *scores
        uint16_t *p
        int32_t *pv_hi
        int32_t *pv_lo
        int32_t *p_sum
    int64_t BSK_AQ_MAX_SEQ
    bsk_status bsk_attention_q8(bsk_isa isa, const float *QKV, int64_t batch,
                                int64_t seq, int64_t heads, int64_t head_dim,
                                const uint8_t *mask, float scale, float *Y,
                                uint8_t *Q, float *q_scale, int32_t *q_zero,
                                const bsk_attn_q8_trace *trace, int num_threads)

    ctypedef struct bsk_layer_weight:
        const bsk_qbcsr *sparse
        const bsk_qdense *dense
        const int32_t *rowsum
        const float *w_scale
        const float *bias
    ctypedef struct bsk_encoder_layer_q8:
        int64_t batch, seq, heads, hidden, inter
        const uint8_t *mask
        float scale
        bsk_layer_weight qkv, out, ffn1, ffn2
        int act
        const float *ln1_gamma
        const float *ln1_beta
        const float *ln2_gamma
        const float *ln2_beta
        float ln1_eps, ln2_eps
        const float *out_mul
        const float *ffn1_mul
        const float *ffn2_mul
        const float *next_mul
        const float *X
        const uint8_t *XQ
        const float *x_scale
        const int32_t *x_zero
        float *Y
        uint8_t *YQ
        float *y_scale
        int32_t *y_zero
    bsk_status bsk_encoder_layer_q8_run(bsk_isa isa, const bsk_encoder_layer_q8 *L,
                                        int num_threads)
