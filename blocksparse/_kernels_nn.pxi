# Wrappers for the encoder kernels (include/blocksparse/bsk_nn.h), included
# from _kernels.pyx so that one extension holds all the C glue.  As there,
# Python (blocksparse/nn/_ops.py) validates the arguments; these functions
# check only what memory safety needs (dtypes, shapes, contiguity of every
# buffer handed to C), release the GIL around the call and raise on a bad
# status.  Activations are (features, tokens) arrays (see bsk_nn.h).

def nn_set_min_work_per_thread(int64_t work):
    """Elements per thread below which the per-token kernels use fewer threads.

    0 always uses the requested count (tests).  Returns the previous value.
    """
    return bsk_nn_set_min_work_per_thread(work)


cdef int _check_quant_out(object Q, object q_scale, object q_zero, int64_t F,
                          int64_t N) except -1:
    """Q (F, N) uint8, q_scale (N,) float32, q_zero (N,) int32: all or none."""
    if Q is None:
        if q_scale is not None or q_zero is not None:
            raise ValueError("q_scale and q_zero are only for a quantized output Q")
        return 0
    _check_dense(Q, "Q", cnp.NPY_UINT8, F, N, True)
    for name, a, dt in (("q_scale", q_scale, np.float32), ("q_zero", q_zero, np.int32)):
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1 or \
                a.shape[0] != N or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writable contiguous 1-D {np.dtype(dt)} "
                             f"array of length {N}")
    return 0


cdef inline void *_data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int64_t _dim(cnp.ndarray a, int axis):
    return a.shape[axis] if a.ndim == 2 else -1


def add_layernorm(int isa, cnp.ndarray X not None, bint x_tokens, object Res,
                  cnp.ndarray gamma not None, cnp.ndarray beta not None, float eps,
                  cnp.ndarray Y not None, object Q, object q_scale, object q_zero,
                  object q_mul, int num_threads):
    """Y (F, N) = LayerNorm(X + Res) * gamma + beta per token; see bsk_nn.h.

    X is (F, N), or (N, F) with x_tokens; Res (F, N) or None.  Y may be X
    (not with x_tokens) or Res itself.  With Q (and q_scale, q_zero) the
    result (times q_mul per feature, if given) is also quantized per token.
    """
    cdef int64_t F = _dim(Y, 0), N = _dim(Y, 1)
    cdef bsk_status st
    _check_dense(Y, "out", cnp.NPY_FLOAT32, F, N, True)
    if F < 1:
        raise ValueError("out must have at least one feature row")
    if x_tokens:
        _check_dense(X, "x", cnp.NPY_FLOAT32, N, F, False)
        if np.shares_memory(X, Y):
            raise ValueError("out must not overlap a tokens-major x")
    else:
        _check_dense(X, "x", cnp.NPY_FLOAT32, F, N, False)
    if Res is not None:
        _check_dense(Res, "residual", cnp.NPY_FLOAT32, F, N, False)
    _ptr_or_null(gamma, "gamma", cnp.NPY_FLOAT32, F)
    _ptr_or_null(beta, "beta", cnp.NPY_FLOAT32, F)
    _check_quant_out(Q, q_scale, q_zero, F, N)
    cdef const float *mp = <const float *>_ptr_or_null(q_mul, "q_mul", cnp.NPY_FLOAT32, F)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef const float *rp = <const float *>_data_or_null(Res)
    cdef const float *gp = <const float *>cnp.PyArray_DATA(gamma)
    cdef const float *bp = <const float *>cnp.PyArray_DATA(beta)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    cdef uint8_t *qp = <uint8_t *>_data_or_null(Q)
    cdef float *sp = <float *>_data_or_null(q_scale)
    cdef int32_t *zp = <int32_t *>_data_or_null(q_zero)
    with nogil:
        st = bsk_add_layernorm_f32(<bsk_isa>isa, xp, x_tokens, rp, F, N, gp, bp, eps, yp, qp,
                                   sp, zp, mp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_add_layernorm_f32", isa)
    return Y


def transpose(int isa, cnp.ndarray X not None, cnp.ndarray Y not None, int num_threads):
    """Y (cols, rows) = X.T for float32 X (rows, cols); see bsk_nn.h."""
    cdef int64_t R = _dim(X, 0), C = _dim(X, 1)
    cdef bsk_status st
    _check_dense(X, "x", cnp.NPY_FLOAT32, R, C, False)
    _check_dense(Y, "out", cnp.NPY_FLOAT32, C, R, True)
    if np.shares_memory(X, Y):
        raise ValueError("out must not overlap x")
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    with nogil:
        st = bsk_transpose_f32(<bsk_isa>isa, xp, R, C, yp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_transpose_f32", isa)
    return Y


def bias_act(int isa, cnp.ndarray Y not None, object bias, object activation,
             int num_threads):
    """Y (M, N) = act(Y + bias[:, None]) in place, activation None, "relu" or "gelu"."""
    cdef int64_t M = _dim(Y, 0), N = _dim(Y, 1)
    cdef bsk_status st
    _check_dense(Y, "y", cnp.NPY_FLOAT32, M, N, True)
    cdef const float *bp = <const float *>_ptr_or_null(bias, "bias", cnp.NPY_FLOAT32, M)
    cdef int act = ACTIVATIONS[activation]
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    with nogil:
        st = bsk_bias_act_f32(<bsk_isa>isa, yp, M, N, bp, act, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_bias_act_f32", isa)
    return Y


def quantize_tokens(int isa, cnp.ndarray X not None, object q_mul, cnp.ndarray Q not None,
                    cnp.ndarray q_scale not None, cnp.ndarray q_zero not None,
                    int num_threads):
    """Per-token (column) dynamic uint8 quantization of float32 X (F, N) into Q."""
    cdef int64_t F = _dim(X, 0), N = _dim(X, 1)
    cdef bsk_status st
    _check_dense(X, "x", cnp.NPY_FLOAT32, F, N, False)
    _check_quant_out(Q, q_scale, q_zero, F, N)
    cdef const float *mp = <const float *>_ptr_or_null(q_mul, "q_mul", cnp.NPY_FLOAT32, F)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(X)
    cdef uint8_t *qp = <uint8_t *>cnp.PyArray_DATA(Q)
    cdef float *sp = <float *>cnp.PyArray_DATA(q_scale)
    cdef int32_t *zp = <int32_t *>cnp.PyArray_DATA(q_zero)
    with nogil:
        st = bsk_quantize_tokens_u8(<bsk_isa>isa, xp, F, N, mp, qp, sp, zp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_quantize_tokens_u8", isa)
    return Q


# The arrays of an INT8 attention trace (bsk_attn_q8_trace): name, dtype, and the
# number of elements from (batch, seq, heads, head_dim).
def attention_trace_sizes(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim):
    """{name: (dtype, elements)} of the arrays bsk_attention_q8 can trace (bsk_nn.h)."""
    cdef int64_t N = batch * seq, Np = (N + 15) // 16 * 16, G = (head_dim + 3) // 4
    cdef int64_t H = heads * head_dim
    return {"q": (np.uint8, heads * G * Np * 4), "k": (np.int8, heads * G * Np * 4),
            "v": (np.int8, H * Np), "q_scale": (np.float32, heads * Np),
            "q_zero": (np.int32, heads * Np), "k_scale": (np.float32, heads * Np),
            "k_sum": (np.int32, heads * Np), "v_scale": (np.float32, batch * H),
            "scores": (np.int32, batch * heads * seq * seq),
            "p": (np.uint16, batch * heads * seq * seq), "pv_hi": (np.int32, H * N),
            "pv_lo": (np.int32, H * N), "p_sum": (np.int32, heads * N)}


MAX_ATTENTION_SEQ = BSK_AQ_MAX_SEQ  # the longest sequence of the INT8 attention


cdef void *_trace_array(dict trace, str name, tuple spec) except? NULL:
    """The data of trace[name] (a writable contiguous array of spec's dtype and size), or
    NULL if absent."""
    a = trace.get(name)
    if a is None:
        return NULL
    dtype, n = spec
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.size != n or \
            not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"trace[{name!r}] must be a writable contiguous {np.dtype(dtype)} "
                         f"array of {n} elements")
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def attention(int isa, cnp.ndarray QKV not None, int64_t batch, int64_t seq,
              int64_t heads, object mask, float scale, cnp.ndarray Y not None, object Q,
              object q_scale, object q_zero, int num_threads, bint int8=False,
              object trace=None):
    """Multi-head self-attention; see bsk_attention_f32 and (int8) bsk_attention_q8.

    QKV (3 * hidden, batch * seq) float32, mask None or (batch, seq) uint8,
    Y (hidden, batch * seq) float32, optional uint8 copy Q of Y.  trace (int8
    only): a dict of arrays named as in attention_trace_sizes, filled with the
    intermediate results.
    """
    cdef int64_t N = batch * seq
    cdef int64_t hidden = _dim(Y, 0)
    cdef bsk_status st
    cdef bsk_attn_q8_trace tr
    cdef bsk_attn_q8_trace *trp = NULL
    if batch < 0 or seq < 0 or heads <= 0 or hidden <= 0 or hidden % heads:
        raise ValueError("heads must be positive and divide the hidden size")
    _check_dense(QKV, "qkv", cnp.NPY_FLOAT32, 3 * hidden, N, False)
    _check_dense(Y, "out", cnp.NPY_FLOAT32, hidden, N, True)
    if mask is not None:
        _check_dense(mask, "mask", cnp.NPY_UINT8, batch, seq, False)
    _check_quant_out(Q, q_scale, q_zero, hidden, N)
    if np.shares_memory(QKV, Y):
        raise ValueError("out must not overlap qkv")
    if trace is not None:
        if not int8 or not isinstance(trace, dict):
            raise ValueError("trace must be a dict, for the int8 attention only")
        sizes = attention_trace_sizes(batch, seq, heads, hidden // heads)
        unknown = set(trace) - set(sizes)
        if unknown:
            raise ValueError(f"unknown trace arrays {sorted(unknown)}")
        tr.q = <uint8_t *>_trace_array(trace, "q", sizes["q"])
        tr.k = <int8_t *>_trace_array(trace, "k", sizes["k"])
        tr.v = <int8_t *>_trace_array(trace, "v", sizes["v"])
        tr.q_scale = <float *>_trace_array(trace, "q_scale", sizes["q_scale"])
        tr.q_zero = <int32_t *>_trace_array(trace, "q_zero", sizes["q_zero"])
        tr.k_scale = <float *>_trace_array(trace, "k_scale", sizes["k_scale"])
        tr.k_sum = <int32_t *>_trace_array(trace, "k_sum", sizes["k_sum"])
        tr.v_scale = <float *>_trace_array(trace, "v_scale", sizes["v_scale"])
        tr.scores = <int32_t *>_trace_array(trace, "scores", sizes["scores"])
        tr.p = <uint16_t *>_trace_array(trace, "p", sizes["p"])
        tr.pv_hi = <int32_t *>_trace_array(trace, "pv_hi", sizes["pv_hi"])
        tr.pv_lo = <int32_t *>_trace_array(trace, "pv_lo", sizes["pv_lo"])
        tr.p_sum = <int32_t *>_trace_array(trace, "p_sum", sizes["p_sum"])
        trp = &tr
    cdef const float *xp = <const float *>cnp.PyArray_DATA(QKV)
    cdef const uint8_t *mp = <const uint8_t *>_data_or_null(mask)
    cdef float *yp = <float *>cnp.PyArray_DATA(Y)
    cdef uint8_t *qp = <uint8_t *>_data_or_null(Q)
    cdef float *sp = <float *>_data_or_null(q_scale)
    cdef int32_t *zp = <int32_t *>_data_or_null(q_zero)
    with nogil:
        if int8:
            st = bsk_attention_q8(<bsk_isa>isa, xp, batch, seq, heads, hidden // heads, mp,
                                  scale, yp, qp, sp, zp, trp, num_threads)
        else:
            st = bsk_attention_f32(<bsk_isa>isa, xp, batch, seq, heads, hidden // heads, mp,
                                   scale, yp, qp, sp, zp, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_attention_q8" if int8 else "bsk_attention_f32", isa)
    return Y


cdef int _layer_weight(bsk_layer_weight *lw, object w, object bias, str name, int64_t M,
                       int64_t K) except -1:
    """lw from an int8 KernelWeight of shape (M, K) with scales, and its bias."""
    if not isinstance(w, KernelWeight):
        raise TypeError(f"{name} must be a packed weight, got {type(w).__name__}")
    cdef KernelWeight kw = w
    if kw.kind != _I8 or kw.scale is None:
        raise ValueError(f"{name} must be an int8 weight with scales")
    if kw.shape != (M, K):
        raise ValueError(f"{name} must have shape {(M, K)}, got {kw.shape}")
    lw.sparse = NULL
    lw.dense = NULL
    if kw.panel is not None:
        lw.dense = &kw.d
    else:
        lw.sparse = &kw.q
    lw.rowsum = <const int32_t *>cnp.PyArray_DATA(kw.rowsum)
    lw.w_scale = <const float *>cnp.PyArray_DATA(kw.scale)
    lw.bias = <const float *>_ptr_or_null(bias, f"{name} bias", cnp.NPY_FLOAT32, M)
    return 0


def encoder_layer_q8(int isa, tuple weights, tuple biases, object activation, tuple ln1,
                     tuple ln2, tuple muls, cnp.ndarray X not None, object xq,
                     object mask, int64_t batch, int64_t seq, int64_t heads, float scale,
                     cnp.ndarray Y not None, object yq, int num_threads):
    """One post-LayerNorm INT8 encoder layer in one C call (bsk_encoder_layer_q8_run).

    weights, biases: (qkv, out, ffn1, ffn2) int8 KernelWeights and float32
    biases (or None); ln1, ln2: (gamma, beta, eps); muls: the per-feature
    factors before quantizing the inputs of out, ffn1, ffn2 and of the next
    layer (each float32 or None); X (H, N) float32 and xq its codes
    (QuantizedActivations); Y (H, N) float32 and yq its codes or None.
    """
    cdef bsk_encoder_layer_q8 L
    cdef int64_t H = _dim(X, 0), N = batch * seq, I
    cdef bsk_status st
    if len(weights) != 4 or len(biases) != 4 or len(muls) != 4:
        raise ValueError("weights, biases and muls hold the four products' entries")
    if batch < 0 or seq < 0 or heads <= 0 or H <= 0 or H % heads:
        raise ValueError("heads must be positive and divide the hidden size")
    I = weights[2].shape[0]
    _check_dense(X, "x", cnp.NPY_FLOAT32, H, N, False)
    _check_dense(Y, "out", cnp.NPY_FLOAT32, H, N, True)
    if np.shares_memory(X, Y):
        raise ValueError("out must not overlap x")
    _check_dense(xq.q, "xq.q", cnp.NPY_UINT8, H, N, False)
    L.x_scale = <const float *>_ptr_or_null(xq.scale, "xq.scale", cnp.NPY_FLOAT32, N)
    L.x_zero = <const int32_t *>_ptr_or_null(xq.zero, "xq.zero", cnp.NPY_INT32, N)
    if L.x_scale == NULL or L.x_zero == NULL:
        raise ValueError("xq needs its scales and zero points")
    L.YQ = NULL
    L.y_scale = NULL
    L.y_zero = NULL
    if yq is not None:
        _check_quant_out(yq.q, yq.scale, yq.zero, H, N)
        L.YQ = <uint8_t *>cnp.PyArray_DATA(yq.q)
        L.y_scale = <float *>cnp.PyArray_DATA(yq.scale)
        L.y_zero = <int32_t *>cnp.PyArray_DATA(yq.zero)
    L.mask = NULL
    if mask is not None:
        _check_dense(mask, "mask", cnp.NPY_UINT8, batch, seq, False)
        L.mask = <const uint8_t *>cnp.PyArray_DATA(mask)
    _layer_weight(&L.qkv, weights[0], biases[0], "qkv", 3 * H, H)
    _layer_weight(&L.out, weights[1], biases[1], "out", H, H)
    _layer_weight(&L.ffn1, weights[2], biases[2], "ffn1", I, H)
    _layer_weight(&L.ffn2, weights[3], biases[3], "ffn2", H, I)
    L.ln1_gamma = <const float *>_ptr_or_null(ln1[0], "ln1 gamma", cnp.NPY_FLOAT32, H)
    L.ln1_beta = <const float *>_ptr_or_null(ln1[1], "ln1 beta", cnp.NPY_FLOAT32, H)
    L.ln2_gamma = <const float *>_ptr_or_null(ln2[0], "ln2 gamma", cnp.NPY_FLOAT32, H)
    L.ln2_beta = <const float *>_ptr_or_null(ln2[1], "ln2 beta", cnp.NPY_FLOAT32, H)
    L.ln1_eps = ln1[2]
    L.ln2_eps = ln2[2]
    L.out_mul = <const float *>_ptr_or_null(muls[0], "out factors", cnp.NPY_FLOAT32, H)
    L.ffn1_mul = <const float *>_ptr_or_null(muls[1], "ffn1 factors", cnp.NPY_FLOAT32, H)
    L.ffn2_mul = <const float *>_ptr_or_null(muls[2], "ffn2 factors", cnp.NPY_FLOAT32, I)
    L.next_mul = <const float *>_ptr_or_null(muls[3], "next factors", cnp.NPY_FLOAT32, H)
    L.batch, L.seq, L.heads, L.hidden, L.inter = batch, seq, heads, H, I
    L.scale = scale
    L.act = ACTIVATIONS[activation]
    L.X = <const float *>cnp.PyArray_DATA(X)
    L.XQ = <const uint8_t *>cnp.PyArray_DATA(xq.q)
    L.Y = <float *>cnp.PyArray_DATA(Y)
    with nogil:
        st = bsk_encoder_layer_q8_run(<bsk_isa>isa, &L, num_threads)
    if st != BSK_OK:
        _raise(st, "bsk_encoder_layer_q8_run", isa)
    return Y
