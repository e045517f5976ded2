"""Functional encoder operations over the C kernels of ``bsk_nn.h``.

The kernels take activations features x tokens: a float32 (features, N)
array, N = batch * seq, column t = b * seq + s, the layout the encoder keeps
(see :mod:`blocksparse.nn.layers`).  The public functions here take the
NumPy-style (tokens, features) form, validate their arguments and transpose
on the way in and out; the underscore helpers are the unchecked inner-loop
paths that the layers call with (features, tokens) arrays they made
themselves.
"""
import math

import numpy as np

from .. import _config, _kernels
from .._packed import QuantizedActivations

__all__ = ["gelu", "layer_norm", "attention", "quantize_rows"]

PRECISIONS = ("float32", "int8")  # of attention's products


def _float32_2d(x, name):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (tokens, features), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _vector(v, n, name):
    v = np.asarray(v)
    if v.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be numeric, got dtype {v.dtype}")
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _features_major(x):
    """(tokens, features) -> contiguous float32 (features, tokens)."""
    return np.ascontiguousarray(x.T, dtype=np.float32)


# ---- unchecked paths: (features, tokens) float32 arrays the layers made ----------

def _layer_norm(x, residual, gamma, beta, eps, out, quantize, q_mul=None, x_tokens=False):
    """out (F, N) = LayerNorm(x + residual); x is (N, F) if x_tokens."""
    qa = QuantizedActivations.empty(*out.shape) if quantize else None
    _kernels.add_layernorm(_config._active_isa(), x, x_tokens, residual, gamma, beta, eps, out,
                           qa.q if qa else None, qa.scale if qa else None,
                           qa.zero if qa else None, q_mul if qa else None,
                           _config.get_num_threads())
    return out, qa


def _transpose(x, out):
    """out (cols, rows) = x (rows, cols) transposed: float32, C-contiguous, by 8 x 8 blocks
    of vector shuffles (NumPy's strided copy took 20 us for 256 x 128, a sixtieth of
    BERT-Mini's call)."""
    _kernels.transpose(_config._active_isa(), x, out, _config.get_num_threads())
    return out


def _bias_act(y, bias, activation):
    """y (M, N) = act(y + bias[:, None]) in place."""
    _kernels.bias_act(_config._active_isa(), y, bias, activation, _config.get_num_threads())
    return y


#: Products up to this many multiply-adds skip BLAS (see :func:`_small_matmul`).
_SMALL_PRODUCT = 1 << 21


def _small_matmul(a, b):
    """``a @ b`` (2-D); small products of two ndarrays without BLAS.

    NumPy's BLAS (OpenBLAS) runs even a 768 x 768 matrix-vector product on
    its own threads, which then spin beside the package's OpenMP threads:
    on 2 cores one pooler call made the next encoder call 2.3x slower.
    NumPy's einsum loop costs ~0.1 ms for such a product and starts no
    thread.
    """
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.shape[0] * a.shape[1] * b.shape[1] <= _SMALL_PRODUCT:
        return np.einsum("ik,kj->ij", a, b, order="C", optimize=False)
    return a @ b


def _quantize_tokens(x, q_mul=None):
    qa = QuantizedActivations.empty(*x.shape)
    _kernels.quantize_tokens(_config._active_isa(), x, q_mul, qa.q, qa.scale, qa.zero,
                             _config.get_num_threads())
    return qa


def _attention(qkv, batch, seq, heads, mask, out, quantize, int8=False):
    """out (H, N) from qkv (3H, N); int8: the INT8 kernel (bsk_attention_q8)."""
    qa = QuantizedActivations.empty(*out.shape) if quantize else None
    _kernels.attention(_config._active_isa(), qkv, batch, seq, heads, mask,
                       1.0 / math.sqrt(out.shape[0] // heads), out, qa.q if qa else None,
                       qa.scale if qa else None, qa.zero if qa else None,
                       _config.get_num_threads(), int8)
    return out, qa


def _encoder_layer_q8(weights, biases, activation, ln1, ln2, muls, x, xq, mask, batch,
                      seq, heads, out, outq):
    """out (H, N) (and its codes outq) of one post-LayerNorm INT8 encoder layer in one C
    call (bsk_encoder_layer_q8_run); see BertLayer._forward_one_call."""
    _kernels.encoder_layer_q8(_config._active_isa(), weights, biases, activation, ln1, ln2,
                              muls, x, xq, mask, batch, seq, heads,
                              1.0 / math.sqrt(x.shape[0] // heads), out, outq,
                              _config.get_num_threads())
    return out, outq


def _attention_traced(qkv, batch, seq, heads, mask):
    """The INT8 attention of (3H, N) qkv and its intermediate results (tests).

    Returns (out (H, N), {name: array}) with the arrays of
    ``bsk_attn_q8_trace`` (bsk_nn.h), ``scores`` and ``p`` zero where the
    kernel writes nothing.
    """
    H = qkv.shape[0] // 3
    trace = {name: np.zeros(n, dtype) for name, (dtype, n) in
             _kernels.attention_trace_sizes(batch, seq, heads, H // heads).items()}
    out = np.empty((H, batch * seq), np.float32)
    _kernels.attention(_config._active_isa(), qkv, batch, seq, heads, mask,
                       1.0 / math.sqrt(H // heads), out, None, None, None,
                       _config.get_num_threads(), True, trace)
    return out, trace


def _check_precision(precision, name="precision"):
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be 'float32' or 'int8', got {precision!r}")
    return precision


# ---- public, validated ------------------------------------------------------

def gelu(x):
    """GELU, erf form: ``0.5 * x * (1 + erf(x / sqrt(2)))``, elementwise.

    Parameters
    ----------
    x : array_like of float
        Any shape.  float32 input runs the C kernel (erf by Abramowitz &
        Stegun 7.1.28, absolute error below 3e-7, the same GELU as the INT8
        epilogue of :func:`blocksparse.linear`); float64 is computed in
        float64 with :func:`scipy.special.erf`.

    Returns
    -------
    ndarray
        New array, the dtype of `x` (float32 or float64).

    Raises
    ------
    TypeError
        If `x` is not a float array.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import gelu
    >>> y = gelu(np.array([-1.0, 0.0, 1.0], dtype=np.float32))
    >>> y.dtype.name, np.round(y.astype(np.float64), 4).tolist()
    ('float32', [-0.1587, 0.0, 0.8413])
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    if x.dtype != np.float32:
        from scipy.special import erf
        x64 = x.astype(np.float64)
        return 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))
    y = np.array(x, dtype=np.float32, order="C", copy=True)
    if y.size:
        _bias_act(y.reshape(1, -1), None, "gelu")
    return y


def layer_norm(x, gamma, beta, eps=1e-12, residual=None, out=None):
    """LayerNorm over the features of each token, with a fused residual add.

    ``t = x + residual``; ``y = (t - mean(t)) / sqrt(var(t) + eps) * gamma
    + beta`` per token (row of `x`), in one C kernel call (float32; mean
    and variance by Welford's update about the token's first feature).

    Parameters
    ----------
    x : array_like of shape (N, H)
        float activations (converted to float32).
    gamma, beta : array_like of shape (H,)
    eps : float, optional
    residual : array_like of shape (N, H), optional
        Added to `x` before normalizing (the Transformer's skip connection).
    out : ndarray of shape (N, H), dtype float32, optional
        C-contiguous; may be `x` or `residual` itself.

    Notes
    -----
    The kernel works on (features, tokens) arrays, the layout the encoder
    keeps its activations in; this (tokens, features) convenience form
    transposes on the way in and out.

    Returns
    -------
    ndarray of shape (N, H), dtype float32

    Raises
    ------
    ValueError
        On a shape mismatch or a negative `eps`.
    TypeError
        If an input is not numeric float data.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import layer_norm
    >>> y = layer_norm(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2))
    >>> np.round(y, 4).tolist()
    [[-1.0, 1.0]]
    """
    x = _float32_2d(x, "x")
    N, H = x.shape
    if H == 0:
        raise ValueError("x must have at least one feature")
    gamma = _vector(gamma, H, "gamma")
    beta = _vector(beta, H, "beta")
    eps = float(eps)
    if not eps >= 0.0 or not math.isfinite(eps):
        raise ValueError(f"eps must be finite and non-negative, got {eps}")
    if residual is not None:
        residual = _float32_2d(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have shape {x.shape}, got {residual.shape}")
    if out is None:
        out = np.empty_like(x)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != x.shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape "
                         f"{x.shape}")
    y = np.empty((H, N), dtype=np.float32)
    _layer_norm(x, None if residual is None else _features_major(residual), gamma, beta, eps,
                y, False, x_tokens=True)
    out[...] = y.T
    return out


def attention(qkv, num_heads, attention_mask=None, batch_size=1, precision="float32"):
    """Multi-head scaled dot-product self-attention in one C call.

    Per sequence and head: ``softmax(Q K^T / sqrt(d) + mask) V`` with the
    masked keys removed (weight exactly 0).  A sequence whose keys are all
    masked attends uniformly, as a float32 additive mask of
    ``finfo(float32).min`` gives.  No (seq x seq) array is made: each
    block of queries keeps its scores in a small scratch row.  Threads split
    the (sequence, head) pairs.

    With ``precision="int8"`` both products run on INT8 codes (``vpdpbusd``
    on VNNI CPUs): queries uint8 per token and head, keys int8 per token
    and head, scores exact in int32 then scaled, softmax in float32, the
    probabilities as 16-bit codes ``rint(65535 * p / max p)`` (two uint8
    planes) and the values int8 per feature and sequence; the result has
    the same bits on every ISA and thread count (``docs/kernels.rst``).

    Parameters
    ----------
    qkv : array_like of shape (batch_size * seq, 3 * hidden)
        Queries, keys and values side by side (the output of one Linear
        layer with the three weights stacked); within each, head h owns
        features ``[h * d, (h + 1) * d)`` with ``d = hidden / num_heads``.
    num_heads : int
    attention_mask : array_like of shape (batch_size, seq), optional
        1 (or True) = attend to this token, 0 = padding; other values
        (NaN, -1, 2) raise ValueError.
    batch_size : int, optional
        Sequences in `qkv`, which holds them one after the other.
    precision : {"float32", "int8"}, optional
        Of the two products (``Q K^T`` and ``P V``).

    Returns
    -------
    ndarray of shape (batch_size * seq, hidden), dtype float32
        The heads' outputs side by side, as the output projection expects.

    Notes
    -----
    The kernel works on (features, tokens) arrays, the layout the encoder
    keeps its activations in (queries along the vector lanes); this
    (tokens, features) convenience form transposes on the way in and out.

    Raises
    ------
    ValueError
        If `num_heads` does not divide the hidden size, `batch_size` does
        not divide the rows, the mask has the wrong shape or values other
        than 0 and 1, or `precision` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import attention
    >>> qkv = np.zeros((3, 6), dtype=np.float32)
    >>> qkv[:, 4:] = [[1, 2], [3, 4], [5, 6]]     # values, one head of size 2
    >>> attention(qkv, num_heads=1).tolist()      # equal scores: the mean value
    [[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]]
    """
    _check_precision(precision)
    qkv = _float32_2d(qkv, "qkv")
    rows, width = qkv.shape
    if width % 3:
        raise ValueError(f"qkv must have 3 * hidden columns, got {width}")
    hidden = width // 3
    if not isinstance(num_heads, (int, np.integer)) or num_heads <= 0 or hidden % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of the hidden size {hidden}, "
                         f"got {num_heads!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0 or rows % batch_size:
        raise ValueError(f"batch_size must be a positive divisor of the {rows} rows of qkv, "
                         f"got {batch_size!r}")
    seq = rows // batch_size
    mask = _mask_u8(attention_mask, (batch_size, seq))
    out = np.empty((hidden, rows), dtype=np.float32)
    _attention(_features_major(qkv), int(batch_size), seq, int(num_heads), mask, out, False,
               precision == "int8")
    return np.ascontiguousarray(out.T)


def _mask_values(attention_mask, shape):
    """The mask as an array of shape `shape`, checked to hold only 0 and 1.

    Attention and pooling agree only on a 0/1 mask (attention reads "not 0",
    pooling weighs by the value), so NaN, -1 or 2 are refused rather than
    given a meaning.
    """
    m = np.asarray(attention_mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"attention_mask must be numeric or boolean, got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"attention_mask must have shape {shape}, got {m.shape}")
    if m.dtype != bool and m.size:
        bad = (m != 0) & (m != 1)
        if np.any(bad):
            raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (token), or "
                             f"booleans; got {m[bad].reshape(-1)[0].item()!r}")
    return m


def _mask_u8(attention_mask, shape):
    """None, or a contiguous uint8 (batch, seq) array of 0/1."""
    if attention_mask is None:
        return None
    m = _mask_values(attention_mask, shape)
    if m.dtype == np.uint8 and m.flags.c_contiguous:
        return m
    return np.ascontiguousarray(m, dtype=np.uint8)


def quantize_rows(x):
    """Dynamic per-token (per-row) uint8 quantization in one C kernel call.

    The same numbers as ``blocksparse.quantize_activations(x,
    per_token=True)``, bit for bit, without its NaN check.

    Parameters
    ----------
    x : array_like of shape (N, K), float

    Returns
    -------
    q : ndarray of shape (N, K), dtype uint8
    scale : ndarray of shape (N,), dtype float32
    zero_point : ndarray of shape (N,), dtype int32

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import quantize_rows
    >>> q, scale, zero = quantize_rows(np.array([[-1.0, 0.0, 1.0]]))
    >>> q.tolist(), zero.tolist()
    ([[0, 127, 254]], [127])
    """
    qa = _quantize_tokens(_features_major(_float32_2d(x, "x")))
    return np.ascontiguousarray(qa.q.T), qa.scale, qa.zero
