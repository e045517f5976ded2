# Wrappers for the encoder kernels (include/blocksparse/bsk_nn.h), included
# from _kernels.pyx so that one extension holds all the C glue.  As there,
# Python (blocksparse/nn/_ops.py) validates the arguments; these functions
# check only what memory safety needs (dtypes, shapes, contiguity of every
# buffer handed to C), release the GIL around the call and raise on a bad
# status.

cdef extern from "blocksparse/bsk_nn.h" nogil:
    bsk_status bsk_add_layernorm_f32(bsk_isa isa, const float *X, int64_t ldx,
                                     const float *Res, int64_t ldr, int64_t rows,
                                     int64_t cols, const float *gamma,
                                     const float *beta, float eps, float *Y,
                                     int64_t ldy, uint8_t *Q, int64_t ldq,
                                     float *q_scale, int32_t *q_zero,
                                     const float *q_mul, int num_threads)
    bsk_status bsk_bias_act_f32(bsk_isa isa, float *Y, int64_t rows, int64_t cols,
                                int64_t ldy, const float *bias, int act,
                                int num_threads)
    bsk_status bsk_quantize_rows_u8(bsk_isa isa, const float *X, int64_t rows,
                                    int64_t cols, int64_t ldx, uint8_t *Q,
                                    int64_t ldq, float *q_scale, int32_t *q_zero,
                                    const float *q_mul, int num_threads)
    bsk_status bsk_attention_f32(bsk_isa isa, const float *QKV, int64_t ldqkv,
                                 int64_t batch, int64_t seq, int64_t heads,
                                 int64_t head_dim, const uint8_t *mask, float scale,
                                 float *Y, int64_t ldy, uint8_t *Q, int64_t ldq,
                                 float *q_scale, int32_t *q_zero, int num_threads)


cdef int _check_quant_out(object Q, object q_scale, object q_zero, int64_t rows,
                          int64_t cols) except -1:
    """Q (rows, cols) uint8, q_scale (rows,) float32, q_zero (rows,) int32, all or none."""
    if Q is None:
        if q_scale is not None or q_zero is not None:
            raise ValueError("q_scale and q_zero are only for a quantized output Q")
        return 0
    _check_dense(Q, "Q", np.uint8, rows, cols, True)
    for name, a, dt in (("q_scale", q_scale, np.float32), ("q_zero", q_zero, np.int32)):
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1 or \
                a.shape[0] != rows or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writable contiguous 1-D {np.dtype(dt)} "
                             f"array of length {rows}")
    return 0


cdef inline void *_data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def add_layernorm(int isa, cnp.ndarray X not None, object Res,
                  cnp.ndarray gamma not None, cnp.ndarray beta not None, float eps,
                  cnp.ndarray Y not None, object Q, object q_scale, object q_zero,
                  object q_mul, int num_threads):
    """Y = LayerNorm(X + Res) * gamma + beta (Res may be None); see bsk_nn.h.

    Y may be X or Res itself (in place).  With Q (and q_scale, q_zero) the
    result (times q_mul per column, if given) is also quantized to uint8
    per row.
    """
    cdef int64_t rows = X.shape[0] if X.ndim == 2 else -1
    cdef int64_t cols = X.shape[1] if X.ndim == 2 else -1
    cdef bsk_status st
    _check_dense(X, "x", np.float32, rows, cols, False)
    if Res is not None:
        _check_dense(Res, "residual", np.float32, rows, cols, False)
    _check_dense(Y, "out", np.float32, rows, cols, True)
    _ptr_or_null(gamma, "gamma", np.float32, cols)
    _ptr_or_null(beta, "beta", np.float32, cols)
    _check_quant_out(Q, q_scale, q_zero, rows, cols)
    cdef const float *mp = <const float *>_ptr_or_null(q_mul, "q_mul", np.float32, cols)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef const float *rp = <const float *>_data_or_null(Res)
    cdef const float *gp = <const float *>cnp.PyArray_DATA(gamma)
    cdef const float *bp = <const float *>cnp.PyArray_DATA(beta)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    cdef uint8_t *qp = <uint8_t *>_data_or_null(Q)
    cdef float *sp = <float *>_data_or_null(q_scale)
    cdef int32_t *zp = <int32_t *>_data_or_null(q_zero)
    with nogil:
        st = bsk_add_layernorm_f32(<bsk_isa>isa, xp, cols, rp, cols, rows, cols, gp, bp,
                                   eps, yp, cols, qp, cols, sp, zp, mp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_add_layernorm_f32", isa)
    return Y


def bias_act(int isa, cnp.ndarray Y not None, object bias, object activation,
             int num_threads):
    """Y = act(Y + bias) in place, activation None, "relu" or "gelu"."""
    cdef int64_t rows = Y.shape[0] if Y.ndim == 2 else -1
    cdef int64_t cols = Y.shape[1] if Y.ndim == 2 else -1
    cdef bsk_status st
    _check_dense(Y, "y", np.float32, rows, cols, True)
    cdef const float *bp = <const float *>_ptr_or_null(bias, "bias", np.float32, cols)
    cdef int act = ACTIVATIONS[activation]
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    with nogil:
        st = bsk_bias_act_f32(<bsk_isa>isa, yp, rows, cols, cols, bp, act, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_bias_act_f32", isa)
    return Y


def quantize_rows(int isa, cnp.ndarray X not None, cnp.ndarray Q not None,
                  cnp.ndarray q_scale not None, cnp.ndarray q_zero not None, object q_mul,
                  int num_threads):
    """Dynamic per-row uint8 quantization of float32 X (times q_mul) into Q."""
    cdef int64_t rows = X.shape[0] if X.ndim == 2 else -1
    cdef int64_t cols = X.shape[1] if X.ndim == 2 else -1
    cdef bsk_status st
    _check_dense(X, "x", np.float32, rows, cols, False)
    _check_quant_out(Q, q_scale, q_zero, rows, cols)
    cdef const float *mp = <const float *>_ptr_or_null(q_mul, "q_mul", np.float32, cols)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef uint8_t *qp = <uint8_t *>cnp.PyArray_DATA(Q)
    cdef float *sp = <float *>cnp.PyArray_DATA(q_scale)
    cdef int32_t *zp = <int32_t *>cnp.PyArray_DATA(q_zero)
    with nogil:
        st = bsk_quantize_rows_u8(<bsk_isa>isa, xp, rows, cols, cols, qp, cols, sp, zp, mp,
                                  num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_quantize_rows_u8", isa)
    return Q


def attention(int isa, cnp.ndarray QKV not None, int64_t batch, int64_t seq,
              int64_t heads, object mask, float scale, cnp.ndarray Y not None, object Q,
              object q_scale, object q_zero, int num_threads):
    """Multi-head self-attention from stacked Q/K/V rows; see bsk_attention_f32.

    QKV (batch * seq, 3 * hidden) float32, mask None or (batch, seq) uint8,
    Y (batch * seq, hidden) float32, optional uint8 copy Q of Y.
    """
    cdef int64_t rows = batch * seq
    cdef int64_t hidden = Y.shape[1] if Y.ndim == 2 else -1
    cdef int64_t head_dim
    cdef bsk_status st
    if batch < 0 or seq < 0 or heads <= 0 or hidden < 0 or hidden % heads:
        raise ValueError("heads must be positive and divide the hidden size")
    head_dim = hidden // heads
    _check_dense(QKV, "qkv", np.float32, rows, 3 * hidden, False)
    _check_dense(Y, "out", np.float32, rows, hidden, True)
    if mask is not None:
        _check_dense(mask, "mask", np.uint8, batch, seq, False)
    _check_quant_out(Q, q_scale, q_zero, rows, hidden)
    if np.shares_memory(QKV, Y):
        raise ValueError("out must not overlap qkv")
    cdef const float *xp = <const float *>cnp.PyArray_DATA(QKV)
    cdef const uint8_t *mp = <const uint8_t *>_data_or_null(mask)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    cdef uint8_t *qp = <uint8_t *>_data_or_null(Q)
    cdef float *sp = <float *>_data_or_null(q_scale)
    cdef int32_t *zp = <int32_t *>_data_or_null(q_zero)
    with nogil:
        st = bsk_attention_f32(<bsk_isa>isa, xp, 3 * hidden, batch, seq, heads, head_dim,
                               mp, scale, yp, hidden, qp, hidden, sp, zp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_attention_f32", isa)
    return Y
