"""INT8 quantization: per-row symmetric weights, asymmetric uint8 activations.

Scheme (DESIGN.md, "Quantization"):

* weights, per output row m: ``s_w[m] = max|W[m, :]| / 127`` and
  ``Wq = clip(rint(W / s_w), -127, 127)`` (int8);
* activations: ``xq = clip(rint(x / s_x) + z_x, 0, 255)`` (uint8), with
  ``s_x, z_x`` from the data (dynamic, per token or per tensor) or given
  (static, e.g. from :func:`calibrate`);
* product: ``acc = Wq @ xq`` exactly in int32, then the fused epilogue
  ``y = s_w[m] * s_x * (acc - z_x * rowsum(Wq)[m]) + b[m]``, an optional
  ReLU/GELU, and float32 output or uint8 requantized with a given scale and
  zero point.
"""

import math

import numpy as np

from . import _config, _kernels
from ._matrix import BlockSparseMatrix, _as_operand, _float_result, _product
from ._pack import block_rows
from ._packed import Epilogue, PackedWeight, QuantizedActivations, dense_density, matmul
from ._protocol import NumpyProtocol

__all__ = ["QuantizedMatrix", "QuantizedTranspose", "quantize", "quantize_activations",
           "calibrate", "linear"]

_ACTIVATIONS = (None, "relu", "gelu")
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = np.finfo(np.float32).smallest_subnormal


def _range_params(lo, hi):
    """(scale, zero point) of the range [lo, hi] (lo <= 0 <= hi), as the kernels compute
    them in float32; in float64 where the float32 range ``hi - lo`` overflows (|x| near
    3.4e38), so that finite activations always get a finite scale."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    with np.errstate(over="ignore"):
        s = np.float32((hi32 - lo32) / np.float32(255.0))
    if np.isinf(s):
        s = np.float32((float(hi32) - float(lo32)) / 255.0)
    if not s > 0:
        s = np.float32(1.0)
    return s, int(np.clip(np.rint(-lo32 / s), 0, 255))  # float32, as the kernels


def _check_epilogue(Wq, x_scale, bias, Y):
    """Refuse a float32 product that overflowed (finite input, non-finite output).

    A bound from the scales decides, in O(M + N), whether overflow is possible
    at all; only then is the output scanned.
    """
    M, K = Wq.shape
    if not (Y.size and K and Wq.scale.size and np.size(x_scale)):
        return
    sw, sx, b = _kernels.scale_maxima(Wq.packed, x_scale, bias)
    if sw * sx * (127 * 255 * K) + b < _F32_MAX / 2 or np.all(np.isfinite(Y)):
        return
    raise ValueError(f"the product overflows float32: x (activation scale up to {sx:.3g}) "
                     f"times the weights (scale up to {sw:.3g}) over K = {K}, plus the bias, "
                     f"exceeds {_F32_MAX:.3g}; scale x or the weights down")


def _finite_positive(value, name):
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    # the kernels use float32: a scale that rounds to 0 or inf there is refused too
    with np.errstate(over="ignore", under="ignore"):
        arr32 = arr.astype(np.float32)
    if not np.all(np.isfinite(arr32)) or np.any(arr32 <= 0):
        raise ValueError(f"{name} must be finite and positive in float32, got {value!r}")
    return arr


def _zero_point(value, name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise TypeError(f"{name} must be an integer in [0, 255], got {value!r}")
    if np.any(arr < 0) or np.any(arr > 255):
        raise ValueError(f"{name} must lie in [0, 255], got {value!r}")
    return arr.astype(np.int32)


class QuantizedMatrix(NumpyProtocol):
    """Block-sparse INT8 weights with per-row scales, packed for the kernels.

    Made by :func:`quantize`.  ``Wq.dequantize()`` gives back float32
    (``Wq.toarray()`` as a dense array); ``Wq @ X`` multiplies float
    ``(K,)``, ``(K, N)`` or stacked ``(..., K, N)`` operands with dynamic
    per-tensor activation quantization inside (each matrix of a stack its
    own tensor, as in separate 2-D calls); ``x @ Wq.T`` is the Linear form
    :func:`linear` with per-token quantization, which also takes a bias,
    an activation and output options.

    Parameters
    ----------
    weight : BlockSparseMatrix
        int8 values, shape (M, K).
    scale : array_like of shape (M,)
        Per-row scales, finite and positive.
    dense : bool, optional
        Run the products on the dense INT8 kernel (absent blocks as zeros)
        or on the block-sparse one.  By default the dense kernel when the
        weight's density reaches the measured crossover
        (:func:`blocksparse._packed.dense_density`).  Both give the same
        bits; only the speed differs.

    Attributes
    ----------
    weight : BlockSparseMatrix
        int8 values ``Wq``, shape (M, K), the blocksize of the source: a
        read-only view of the packed weight's arrays (a copy of the
        constructor's `weight`).
    scale : ndarray of shape (M,), dtype float32
        Per-row scales ``s_w`` (read-only).
    packed : blocksparse._packed.PackedWeight
        The kernels' form of the weight: values, int32 indices, the (4, 1)
        group tables or the dense kernel's panel, row sums and scales, made
        once here.
    format : {"dense", "sparse"}
        The kernel the products run.
    shape, blocksize, nnzb, density
        Those of `weight`.
    """

    _dense_hint = "dequantize().toarray()"

    def __init__(self, weight, scale, dense=None):
        if not isinstance(weight, BlockSparseMatrix) or weight.dtype != np.int8:
            raise TypeError("weight must be an int8 BlockSparseMatrix")
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        if scale.shape != (weight.shape[0],):
            raise ValueError(f"scale must have shape ({weight.shape[0]},), got {scale.shape}")
        if scale.size:
            _finite_positive(scale, "scale")
        if weight.shape[1] > _kernels.MAX_K_INT8:
            raise ValueError(f"K = {weight.shape[1]} is too large for exact int32 accumulation "
                             f"(at most {_kernels.MAX_K_INT8})")
        if dense is None:
            dense = weight.density >= dense_density(weight.blocksize)
        elif not isinstance(dense, (bool, np.bool_)):
            raise TypeError(f"dense must be True, False or None, got {dense!r}")
        # pack once, now, not on the first call; `weight` then views the packed arrays
        self.packed = PackedWeight.from_matrix(weight, np.int8, scale=scale, dense=bool(dense))
        self.weight = BlockSparseMatrix._from_packed(self.packed)
        self.scale = self.packed.scale

    shape = property(lambda self: self.weight.shape, doc="(M, K)")
    blocksize = property(lambda self: self.weight.blocksize, doc="(R, C) of the weight")
    nnzb = property(lambda self: self.weight.nnzb, doc="stored blocks")
    density = property(lambda self: self.weight.density, doc="stored blocks / all blocks")
    dtype = property(lambda self: self.weight.dtype, doc="int8")
    format = property(lambda self: self.packed.format,
                      doc='"dense" or "sparse": the kernel the products run')

    def __repr__(self):
        R, C = self.blocksize
        return (f"<QuantizedMatrix of shape {self.shape}, int8, blocksize ({R}, {C}), "
                f"{self.nnzb} stored blocks ({self.density:.1%} dense), {self.format} kernel>")

    def dequantize(self):
        """The float32 weights ``s_w[m] * Wq[m, k]`` as a BlockSparseMatrix."""
        W = self.weight
        R = W.blocksize[0]
        rows = block_rows(W.indptr)
        s = self.scale.reshape(-1, R)[rows][:, :, None].astype(np.float64)
        # exact in float64, then one rounding: the float32 product's bits, except that a
        # value within an ulp of the float32 limit stays finite
        data = np.clip(W.data * s, -_F32_MAX, _F32_MAX).astype(np.float32)
        return BlockSparseMatrix._from_parts(data, W.indices, W.indptr, W.shape, W.blocksize)

    def toarray(self, order=None, out=None):
        """The dequantized weights ``s_w[m] * Wq[m, k]`` as a dense float32 (M, K) array.

        ``Wq.weight.toarray()`` gives the int8 codes instead.  `order` and
        `out` as in :meth:`BlockSparseMatrix.toarray`.
        """
        return self.dequantize().toarray(order=order, out=out)

    todense = toarray

    def transpose(self, axes=None, copy=False):
        """The transpose, of shape (K, M): ``x @ Wq.T`` is ``linear(x, Wq)``.

        The result is a view of this matrix (:class:`QuantizedTranspose`);
        its ``.T`` is this matrix again.
        """
        if axes is not None and tuple(axes) != (1, 0):
            raise ValueError("axes must be None or (1, 0)")
        return QuantizedTranspose(self)

    @property
    def T(self):
        """The transpose, see :meth:`transpose`."""
        return self.transpose()

    def __matmul__(self, X):
        X = _as_operand(X, "X", stacked=True)
        if X.dtype.kind != "f":
            raise TypeError(f"X must be float for a quantized product, got {X.dtype}")
        M, K = self.shape
        if X.ndim == 1:
            return self._matmul(X[:, None], np.empty((M, 1), np.float32))[:, 0]
        if X.shape[-2] != K:
            raise ValueError(f"matmul: X has {X.shape[-2]} rows but the matrix has "
                             f"{K} columns")
        N = X.shape[-1]
        Y = np.empty(X.shape[:-2] + (M, N), dtype=np.float32)
        B = int(np.prod(X.shape[:-2], dtype=np.int64))
        for Xi, Yi in zip(X.reshape((B, K, N)), Y.reshape((B, M, N))):
            self._matmul(Xi, Yi)  # each matrix quantized on its own, as a 2-D call would
        return Y

    def _matmul(self, X, Y):
        """Y (M, N) = self @ X (K, N) with per-tensor dynamic quantization of X."""
        xq, s, z = quantize_activations(X, per_token=False)
        N = X.shape[1]
        x = QuantizedActivations(np.require(xq, requirements="CA"), np.full(N, s, np.float32),
                                 np.full(N, z, np.int32))
        matmul(self.packed, x, Y, layout="features")
        _check_epilogue(self, s, None, Y)
        return Y

    def __reduce__(self):
        return (QuantizedMatrix, (self.weight, np.array(self.scale), self.format == "dense"))


class QuantizedTranspose(NumpyProtocol):
    """The transpose ``Wq.T`` of a :class:`QuantizedMatrix`, shape (K, M).

    It exists for the Linear form: ``x @ Wq.T`` with float x of shape
    ``(..., K)`` is :func:`linear` ``(x, Wq)`` (per-token dynamic
    quantization), as ``x @ W.T`` is for a :class:`BlockSparseMatrix`.
    ``Wq.T @ Y`` is refused: the per-row scales of Wq would lie along the
    reduction axis.

    Attributes
    ----------
    T : QuantizedMatrix
        The matrix this is the transpose of.
    shape : tuple of int
        (K, M).
    """

    _dense_hint = "toarray()"

    def __init__(self, Wq):
        if not isinstance(Wq, QuantizedMatrix):
            raise TypeError(f"Wq must be a QuantizedMatrix, got {type(Wq).__name__}")
        self._Wq = Wq

    T = property(lambda self: self._Wq, doc="The QuantizedMatrix itself")
    shape = property(lambda self: self._Wq.shape[::-1], doc="(K, M)")
    dtype = property(lambda self: self._Wq.dtype, doc="int8")

    def __repr__(self):
        return f"<transpose of {self._Wq!r}>"

    def transpose(self, axes=None, copy=False):
        """The QuantizedMatrix this is the transpose of."""
        if axes is not None and tuple(axes) != (1, 0):
            raise ValueError("axes must be None or (1, 0)")
        return self._Wq

    def dequantize(self):
        """The float32 transpose as a BlockSparseMatrix."""
        return self._Wq.dequantize().T

    def toarray(self, order=None, out=None):
        """The dequantized transpose as a dense float32 (K, M) array."""
        return self.dequantize().toarray(order=order, out=out)

    todense = toarray

    def __rmatmul__(self, x):
        return linear(x, self._Wq)

    def __matmul__(self, other):
        raise TypeError("Wq.T @ Y is not supported: the per-row scales of Wq lie along the "
                        "reduction axis of Wq.T; use x @ Wq.T (the Linear form, x of shape "
                        "(..., K)) or Wq.dequantize().T @ Y")

    def __reduce__(self):
        return (QuantizedTranspose, (self._Wq,))


def quantize(W, blocksize=None, *, dense=None):
    """Quantize float weights to per-row symmetric INT8.

    ``s_w[m] = max|W[m, :]| / 127`` (1.0 for an all-zero row) and
    ``Wq = clip(rint(W / s_w), -127, 127)``; -128 is never produced, so the
    weights are symmetric.  The (4, 1) kernel's grouped layout and the row
    sums for the zero-point term are made once, here.

    Parameters
    ----------
    W : BlockSparseMatrix, scipy.sparse matrix or array_like of shape (M, K)
        Float weights.  Dense and SciPy inputs are converted with
        `blocksize`.
    blocksize : tuple of int, optional
        For non-BlockSparseMatrix input.  ``(4, 1)``: four consecutive
        output rows in one input column; ``(1, 4)``: four consecutive
        weights of one row along K.  These two have VNNI kernels; other
        shapes run on the portable kernel.
    dense : bool, optional
        Pack for the dense INT8 kernel (True) or the block-sparse one
        (False); by default dense when the density reaches the measured
        crossover (:func:`blocksparse._packed.dense_density`).  The results
        are the same bits either way.

    Returns
    -------
    QuantizedMatrix

    Raises
    ------
    ValueError
        If W has NaN or Inf, or K exceeds exact int32 accumulation.
    TypeError
        If W is not float.

    Examples
    --------
    >>> import numpy as np, blocksparse
    >>> W = np.array([[0.5, -1.0, 0, 0], [0, 0, 2.0, 0.25]] * 2, dtype=np.float32)
    >>> Q = blocksparse.quantize(W, blocksize=(1, 2))
    >>> Q.weight.toarray()[0].tolist(), bool(Q.scale[0] == np.float32(1.0 / 127))
    ([64, -127, 0, 0], True)
    """
    if not isinstance(W, BlockSparseMatrix):
        W = BlockSparseMatrix(W, blocksize=blocksize)
    elif blocksize is not None and tuple(blocksize) != W.blocksize:
        W = BlockSparseMatrix(W, blocksize=blocksize)
    if W.dtype.kind != "f":
        raise TypeError(f"quantize needs float weights, got {W.dtype}")
    data = W.data.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError("W has NaN or Inf values, which INT8 cannot represent")
    if data.size and np.max(np.abs(data)) > _F32_MAX:
        raise ValueError(f"W has values beyond the float32 range (|W| up to "
                         f"{np.max(np.abs(data)):.3g}): INT8 weights dequantize to float32")
    M, K = W.shape
    R, C = W.blocksize
    rows = block_rows(W.indptr)
    amax = np.zeros((M // R, R), dtype=np.float64)
    if W.nnzb:
        np.maximum.at(amax, rows, np.abs(data).max(axis=2))
    amax = amax.reshape(M)
    with np.errstate(under="ignore"):
        scale = (amax / 127.0).astype(np.float32)
    # rows whose scale underflows float32 (|W| below about 2e-43) get the smallest
    # positive scale, so that they still quantize (to small integers) instead of failing
    scale = np.where(amax > 0, np.maximum(scale, _F32_TINY), np.float32(1.0)).astype(np.float32)
    s = scale.astype(np.float64).reshape(-1, R)[rows][:, :, None]
    q = np.clip(np.rint(data / s), -127, 127).astype(np.int8)
    Wq = BlockSparseMatrix._from_parts(q, W.indices, W.indptr, W.shape, W.blocksize)
    return QuantizedMatrix(Wq, scale, dense)


def quantize_activations(x, scale=None, zero_point=None, per_token=True):
    """Quantize float activations to asymmetric uint8.

    ``xq = clip(rint(x / scale) + zero_point, 0, 255)`` in float32
    arithmetic.  Dynamic (no `scale` given): the range is
    ``[min(x, 0), max(x, 0)]``, ``scale = range / 255`` and
    ``zero_point = clip(rint(-min / scale), 0, 255)``, per row of `x`
    (per token in the Linear form) or over the whole tensor.

    Parameters
    ----------
    x : array_like of shape (N, K)
        float32 or float64 (converted to float32); NaN/Inf refused.
    scale, zero_point : float and int, optional
        Static quantization parameters; give both or neither.
    per_token : bool, optional
        Dynamic parameters per row (default) or per tensor.

    Returns
    -------
    xq : ndarray of shape (N, K), dtype uint8
    scale : ndarray of shape (N,) or (), dtype float32
    zero_point : ndarray of shape (N,) or (), dtype int32
    """
    x = _as_operand(x, "x")
    if x.dtype.kind != "f":
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, K), got shape {x.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: the kernel refuses them
        xc = np.require(x, dtype=np.float32, requirements="CA")
    if (scale is None) != (zero_point is None):
        raise ValueError("give both scale and zero_point (static) or neither (dynamic)")
    q = np.empty(xc.shape, dtype=np.uint8)
    if scale is not None:
        s = np.array(_finite_positive(scale, "scale"), dtype=np.float32).reshape(-1)
        if s.size != 1:
            raise ValueError(f"a static scale must be a scalar, got shape {np.shape(scale)}")
        z = _zero_point(zero_point, "zero_point").reshape(-1)
        if z.size != 1:
            raise ValueError(f"a static zero_point must be a scalar, got shape "
                             f"{np.shape(zero_point)}")
        mode = "static"
    else:
        n = xc.shape[0] if per_token else 1
        s = np.empty(max(n, 1), dtype=np.float32)
        z = np.empty(max(n, 1), dtype=np.int32)
        mode = "token" if per_token else "tensor"
    # the kernel checks for NaN/Inf in its range pass (ValueError) and takes the
    # scale of a range too wide for float32 (|x| near 3.4e38) from double precision
    if xc.shape[0] or mode != "token":  # K = 0 rows still get scale 1, zero point 0
        _kernels.quantize_u8(_config._active_isa(), xc, mode, s, z, q,
                             _config.get_num_threads())
    if mode == "token":
        return q, s[:xc.shape[0]], z[:xc.shape[0]]
    return q, s[:1].reshape(()), z[:1].reshape(())


def calibrate(samples, per_tensor=True):
    """Static activation parameters from sample activations (min/max).

    Parameters
    ----------
    samples : array_like or iterable of array_like
        Activations the layer will see; all finite.

    Returns
    -------
    scale : float
    zero_point : int
        For :func:`quantize_activations` and :func:`linear`.
    """
    if not per_tensor:
        raise NotImplementedError("only per-tensor static calibration is supported")
    if isinstance(samples, np.ndarray) or np.isscalar(samples):
        samples = [samples]
    lo, hi, seen = 0.0, 0.0, False
    for a in samples:
        a = np.asarray(a, dtype=np.float64)
        if a.size == 0:
            continue
        if not np.all(np.isfinite(a)):
            raise ValueError("samples have NaN or Inf values")
        lo, hi, seen = min(lo, a.min()), max(hi, a.max()), True
    if not seen:
        raise ValueError("samples hold no values to calibrate from")
    if max(-lo, hi) > _F32_MAX:
        raise ValueError(f"samples have values beyond the float32 range (up to "
                         f"{max(-lo, hi):.3g}), which float32 activations cannot hold")
    s, z = _range_params(lo, hi)
    return float(s), z


def linear(x, Wq, bias=None, activation=None, out=None, *, x_scale=None, x_zero_point=None,
           per_token=True, out_dtype=None, out_scale=None, out_zero_point=None):
    """Linear layer ``y = act(x @ W.T + bias)``: INT8 with a fused epilogue, or float.

    Parameters
    ----------
    x : ndarray of shape (..., K)
        float32/float64 activations (for INT8 weights quantized to uint8
        here, dynamically unless `x_scale` and `x_zero_point` are given), or
        uint8 activations already quantized with `x_scale` and
        `x_zero_point` (INT8 weights only).  Leading dimensions are kept:
        ``(N, K)`` gives ``(N, M)``, ``(B, S, K)`` gives ``(B, S, M)``, ``(K,)``
        gives ``(M,)``; every row of x is one token, and the result is the
        2-D call on ``x.reshape(-1, K)``, bit for bit.
    Wq : QuantizedMatrix or BlockSparseMatrix
        Weights of shape (M, K) = (out_features, in_features).  A
        :class:`QuantizedMatrix` runs the INT8 kernel; a float
        :class:`BlockSparseMatrix` runs the float kernel (``x @ W.T`` in
        the product's dtype, float32 for float32 operands), then the bias
        and the activation, without quantizing anything (quantize once
        with :func:`quantize` for INT8).  An int8 BlockSparseMatrix has no
        scales and is refused.
    bias : array_like of shape (M,), optional
    activation : {None, "relu", "gelu"}, optional
        GELU is the erf form; the INT8 epilogue takes erf from Abramowitz &
        Stegun 7.1.28 (absolute error below 3e-7), the float path from
        :func:`scipy.special.erf`.
    out : ndarray of shape (..., M), optional
        C-contiguous output of the output dtype; fully overwritten.
    x_scale, x_zero_point : float and int, optional
        INT8 only.  Static activation parameters (scalars); for uint8 `x`
        they may also be arrays of shape ``x.shape[:-1]``, one pair per
        token (e.g. from ``quantize_activations(..., per_token=True)``).
    per_token : bool, optional
        INT8 only: dynamic quantization per token (default) or per tensor
        (then over all of x, leading dimensions included).
    out_dtype : {None, "float32", "uint8"}, optional
        INT8 only: float32 by default; uint8 requantizes with `out_scale` and
        `out_zero_point` (``clip(rint(y / out_scale) + out_zero_point, 0, 255)``).

    Returns
    -------
    ndarray of shape (..., M)
        float32 or uint8 for INT8 weights; the product's float dtype for a
        float weight.

    Notes
    -----
    The integer core is exact; the float epilogue gives the same bits on
    every ISA variant.  Against a float64 product of the *dequantized*
    operands the error is a few float32 ulps (int32 to float rounding and
    two products).  Against the unquantized float product, element (n, m)
    is within ``sum_k |x[n,k]| s_w[m]/2 + |W[m,k]| s_x[n]/2 + s_w[m] s_x[n]/4``.
    Float x quantized per token (the default) goes to the kernel as it is,
    in one call: the (4, 1) kernels quantize each tile of tokens as they pack
    it, the others quantize first; either way the bits of
    :func:`quantize_activations` followed by the product.  The GIL is
    released; threads split the output rows.

    Examples
    --------
    >>> import numpy as np, blocksparse
    >>> W = blocksparse.BlockSparseMatrix(np.eye(4, dtype=np.float32), blocksize=(4, 1))
    >>> x = np.ones((2, 3, 4), dtype=np.float32)
    >>> blocksparse.linear(x, W, bias=np.ones(4), activation="relu").shape
    (2, 3, 4)
    >>> blocksparse.linear(x, blocksparse.quantize(W))[1, 2].tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    float_weight = isinstance(Wq, BlockSparseMatrix) and Wq.dtype.kind == "f"
    if not (isinstance(Wq, QuantizedMatrix) or float_weight):
        what = (f"an {Wq.dtype} BlockSparseMatrix (values without scales)"
                if isinstance(Wq, BlockSparseMatrix) else type(Wq).__name__)
        raise TypeError(f"Wq must be a QuantizedMatrix (see blocksparse.quantize) or a float "
                        f"BlockSparseMatrix, got {what}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'gelu', got {activation!r}")
    x = _as_operand(x, "x", stacked=True)
    M, K = Wq.shape
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the weights have K = {K}")
    lead = x.shape[:-1]
    N = math.prod(lead)
    x2 = x.reshape(N, K)  # a view unless x's layout needs a copy
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (M,):
            raise ValueError(f"bias must have shape ({M},), got {bias.shape}")
        if bias.dtype.kind not in "iuf":
            raise TypeError(f"bias must be numeric, got {bias.dtype}")
    if float_weight:
        given = [name for name, v in (("x_scale", x_scale), ("x_zero_point", x_zero_point),
                                      ("out_dtype", out_dtype), ("out_scale", out_scale),
                                      ("out_zero_point", out_zero_point)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for INT8 weights (a QuantizedMatrix); a "
                             f"float BlockSparseMatrix computes in float")
        if x.dtype.kind != "f":
            raise TypeError(f"x must be float for a float weight, got {x.dtype}")
        y = _check_out(out, lead, M, _float_result(Wq.dtype, x.dtype), x, bias)
        return _float_linear(x2, Wq, bias, activation, y.reshape(N, M)).reshape(lead + (M,))
    try:
        kind = "float32" if out_dtype is None else np.dtype(out_dtype).name
    except TypeError:
        kind = None
    if kind not in ("float32", "uint8"):
        raise ValueError(f"out_dtype must be float32 or uint8, got {out_dtype!r}")
    if kind == "uint8":
        if out_scale is None or out_zero_point is None:
            raise ValueError("uint8 output needs out_scale and out_zero_point")
        out_s = float(_finite_positive(out_scale, "out_scale"))
        out_z = int(_zero_point(out_zero_point, "out_zero_point"))
    else:
        if out_scale is not None or out_zero_point is not None:
            raise ValueError("out_scale and out_zero_point are for out_dtype='uint8'")
        out_s, out_z = 1.0, 0
    if x.dtype == np.uint8:
        if x_scale is None or x_zero_point is None:
            raise ValueError("uint8 x needs x_scale and x_zero_point")
        xq = x2
        s, z = _finite_positive(x_scale, "x_scale"), _zero_point(x_zero_point, "x_zero_point")
        for name, a in (("x_scale", s), ("x_zero_point", z)):
            if a.ndim and a.shape != lead:
                raise ValueError(f"{name} must be a scalar or have shape {lead} (one per "
                                 f"token), got shape {a.shape}")
        s = np.ascontiguousarray(np.broadcast_to(s, lead).reshape(N), dtype=np.float32)
        z = np.ascontiguousarray(np.broadcast_to(z, lead).reshape(N), dtype=np.int32)
    elif x.dtype.kind == "f" and x_scale is None and x_zero_point is None and per_token:
        # quantized per token inside the kernel call (bsk_qlinear_f32), below
        xq = x2
        if xq.dtype != np.float32 or not (xq.flags.c_contiguous and xq.flags.aligned):
            with np.errstate(over="ignore"):  # beyond float32 becomes inf: the kernel refuses it
                xq = np.require(x2, dtype=np.float32, requirements="CA")
        s, z = np.empty(N, np.float32), np.empty(N, np.int32)
    elif x.dtype.kind == "f":
        if x_scale is not None:  # validated here so that errors name x_scale
            _finite_positive(x_scale, "x_scale")
        if x_zero_point is not None:
            _zero_point(x_zero_point, "x_zero_point")
        xq, s, z = quantize_activations(x2, x_scale, x_zero_point, per_token=per_token)
        s = np.broadcast_to(s, (N,)).astype(np.float32)
        z = np.broadcast_to(z, (N,)).astype(np.int32)
    else:
        raise TypeError(f"x must be float or uint8, got {x.dtype}")
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
    out = _check_out(out, lead, M, np.dtype(kind), x, bias)
    if out.size == 0:
        return out
    y = out.reshape(N, M)  # a view: out is C-contiguous
    epilogue = Epilogue(activation, bias, out_s, out_z)
    if xq.dtype == np.uint8:
        matmul(Wq.packed, QuantizedActivations(np.require(xq, requirements="CA"), s, z), y,
               layout="tokens", epilogue=epilogue)
    else:  # float x: the kernel quantizes it and fills s, z
        isa = _config._active_isa()
        if _config._State.verbose:
            _config._log_kernel(Wq.packed.kernel_name(isa), isa,
                                f"M={M} K={K} N={N} {out.dtype} act={activation} "
                                f"(float x, quantized per token)")
        _kernels.linear_f32(isa, Wq.packed, xq, s, z, y, epilogue, _config.get_num_threads())
    if kind == "float32":
        _check_epilogue(Wq, s, bias, y)
    return out


def _check_out(out, lead, M, dtype, x, bias):
    """`out` checked (or a new array) of shape lead + (M,) and `dtype`."""
    shape = lead + (M,)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape or \
            not out.flags.c_contiguous or not out.flags.writeable:
        shown = shape if len(shape) != 2 else (shape[0], shape[1])
        raise ValueError(f"out must be a writable C-contiguous {dtype} array of shape {shown}")
    if np.shares_memory(out, x) or (bias is not None and np.shares_memory(out, bias)):
        raise ValueError("out must not overlap x or bias")
    return out


def _float_linear(x2, W, bias, activation, y):
    """y (N, M) = act(x2 (N, K) @ W.T + bias) with the float kernel, in y's dtype."""
    _product(W, x2, True, out=y)
    if bias is not None:
        y += bias.astype(y.dtype)
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "gelu":
        from scipy.special import erf
        y *= (1 + erf(y / np.sqrt(2).astype(y.dtype))) / 2
    return y
