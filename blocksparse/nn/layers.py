"""Encoder layers as plain Python classes over the package's operations.

The public ``__call__`` of each layer validates its input and takes and
returns NumPy-style (batch, seq, hidden) arrays (or (..., features) for
Linear and LayerNorm).  Inside, activations run features x tokens: a
float32 (H, N) array, N = batch * seq, column t = b * seq + s.  That is the
paper's layout and the ``W @ X`` form of the INT8 kernel, whose output is
then written row by row (the (N, M) form scatters it); the per-token work
(LayerNorm statistics, quantization ranges, the softmax over keys) runs
with one token per vector lane, without horizontal reductions.  The model
transposes once on the way in (embeddings) and once on the way out.

``_forward`` is the unchecked inner path the model uses; it also passes
uint8 activations (:class:`~blocksparse.nn.QuantizedActivations`) made by
the previous fused kernel straight to the next INT8 Linear layer.  What a
layer wants as input, float only or also those uint8 codes (with its
per-feature smoothing factors), it publishes as its :class:`InputSpec`; the
layer that produces that input is handed the spec, and never looks at its
consumer.  INT8 products go through ``blocksparse._packed.matmul``, the
package's one product call path.

An INT8 Linear layer may carry a small float32 part beside its INT8 weight
(the input features with outlier activations and the largest weights of each
row, see :meth:`Linear.to_int8`), and may be asked to give some tokens a
second INT8 pass over the rounding residual of their activations (``refine``
columns, see :attr:`blocksparse.nn.BertModel.two_pass_max_tokens`).
"""
import numbers
from typing import NamedTuple

import numpy as np

from .. import BlockSparseMatrix, QuantizedMatrix, linear, prune, quantize
from .._packed import Epilogue, QuantizedActivations, matmul
from . import _ops
from .activations import FFN_ACTIVATIONS, apply_activation, epilogue_activation

__all__ = ["Linear", "LayerNorm", "MultiHeadSelfAttention", "BertLayer", "PreNormBertLayer",
           "BertEncoder", "mean_pooling", "InputSpec"]

_ACTIVATIONS = (None, "relu", "gelu")
_DTYPES = ("float32", "int8")


class InputSpec(NamedTuple):
    """What a layer wants as its input, published by the layer (``input_spec``).

    The layer that makes that input (LayerNorm, attention, the previous
    encoder layer) is handed the spec and produces what it asks for, so no
    layer reads the attributes of the one after it.

    Attributes
    ----------
    quantized : bool
        Also per-token uint8 codes (an INT8 Linear layer).
    scale : ndarray of shape (features,), dtype float32, or None
        Per-feature factors applied before quantizing: SmoothQuant-style
        smoothing, and 0 for the features a float part carries (see
        :meth:`Linear.to_int8`).
    """

    quantized: bool = False
    scale: object = None


FLOAT_INPUT = InputSpec()


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'gelu', got {activation!r}")
    return activation


def _check_dtype_name(dtype):
    name = None if dtype is None else str(np.dtype(dtype)) if not isinstance(dtype, str) \
        else dtype
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'int8', got {dtype!r}")
    return name


def _float_weight(weight, name="weight"):
    w = np.asarray(weight)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} has NaN or Inf values")
    return w


def _sparsify(weight, sparsity, blocksize, balanced):
    """float32 dense weight -> pruned BlockSparseMatrix, or the dense array."""
    if sparsity is None:
        return weight
    return prune(weight, sparsity, blocksize=blocksize, balanced=balanced, dtype=np.float32)


def _stack_rows(weights):
    """Stack weights along the output axis (dense arrays or BlockSparseMatrix)."""
    if all(isinstance(w, np.ndarray) for w in weights):
        return np.concatenate(weights, axis=0)
    blocksize = weights[0].blocksize
    K = weights[0].shape[1]
    if any(not isinstance(w, BlockSparseMatrix) or w.blocksize != blocksize or w.shape[1] != K
           for w in weights):
        raise ValueError("weights to stack must all be BlockSparseMatrix with one blocksize "
                         "and one number of input features")
    indptrs, offset = [np.zeros(1, np.int64)], 0
    for w in weights:
        indptrs.append(w.indptr[1:].astype(np.int64) + offset)
        offset += w.nnzb
    data = np.concatenate([w.data for w in weights])
    indices = np.concatenate([w.indices.astype(np.int64) for w in weights])
    M = sum(w.shape[0] for w in weights)
    return BlockSparseMatrix((data, indices, np.concatenate(indptrs)), shape=(M, K),
                             blocksize=blocksize)


class Linear:
    """A Linear layer ``y = act(x @ W.T + b)`` in one of three forms.

    ``Linear(weight, bias)`` with

    * a float ndarray of shape (out_features, in_features): dense float32,
      computed by BLAS (``kind == "dense"``);
    * a float :class:`~blocksparse.BlockSparseMatrix`: block-sparse
      float32 (``kind == "sparse"``);
    * a :class:`~blocksparse.QuantizedMatrix` (:func:`blocksparse.quantize`):
      block-sparse (or dense) INT8, computed by :func:`blocksparse.linear`
      with dynamic per-token uint8 activations and bias + activation fused
      into the kernel's epilogue (``kind == "int8"``).

    :meth:`from_dense` prunes and quantizes a dense weight in one step.

    Parameters
    ----------
    weight : ndarray, BlockSparseMatrix or QuantizedMatrix
        Shape (out_features, in_features) = (M, K).
    bias : array_like of shape (M,), optional
    input_scale : array_like of shape (K,), optional
        INT8 only: per-feature factors applied to the input before it is
        quantized, the inverse of the factors already multiplied into the
        weight's columns (SmoothQuant-style smoothing, see :meth:`to_int8`),
        so the product is unchanged while activation outliers shrink.
    float_weight : BlockSparseMatrix, array_like or scipy.sparse matrix of shape (M, K), optional
        INT8 only: a float part added in float32, ``y = act(W_q x_q +
        float_weight @ x + b)``: the outlier features' columns and the
        largest weights of each row (see :meth:`to_int8`), which then no
        longer set the INT8 scales.  Stored with blocksize (1, 1); the INT8
        product adds it in its epilogue, a fused multiply-add per stored
        weight (:class:`blocksparse._packed.Epilogue`).
    float_features : array_like of int, optional
        INT8 only: input features that `float_weight` carries alone; their
        quantized activations are 0, so they do not widen the per-token
        scales.  Needs `float_weight`.

    Attributes
    ----------
    weight, bias, input_scale, float_weight, float_features, kind, in_features,
    out_features

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import Linear
    >>> lin = Linear.from_dense(np.eye(4), np.ones(4), sparsity=0.75, blocksize=(1, 1))
    >>> lin.kind, lin(np.array([[1.0, 2.0, 3.0, 4.0]])).tolist()
    ('sparse', [[2.0, 3.0, 4.0, 5.0]])
    """

    def __init__(self, weight, bias=None, input_scale=None, float_weight=None,
                 float_features=None):
        if isinstance(weight, QuantizedMatrix):
            self.kind = "int8"
        elif isinstance(weight, BlockSparseMatrix):
            if weight.dtype.kind != "f":
                raise TypeError("an integer BlockSparseMatrix has no scales: make INT8 "
                                "weights with blocksparse.quantize")
            if weight.dtype != np.float32:
                weight = weight.astype(np.float32)
            self.kind = "sparse"
        else:
            weight = _float_weight(weight)
            self.kind = "dense"
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        if bias is not None:
            bias = _ops._vector(bias, self.out_features, "bias")
            if not np.all(np.isfinite(bias)):
                raise ValueError("bias has NaN or Inf values")
        self.bias = bias
        if input_scale is not None:
            if self.kind != "int8":
                raise ValueError("input_scale is only for INT8 (QuantizedMatrix) weights")
            input_scale = _ops._vector(input_scale, self.in_features, "input_scale")
            if not np.all(np.isfinite(input_scale)) or np.any(input_scale <= 0):
                raise ValueError("input_scale must be finite and positive")
        self.input_scale = input_scale
        self.float_weight, self.float_features = _float_part(self, float_weight, float_features)
        self._q_mul = self._quantization_factors()
        self._float_epilogue = _float_epilogue(self.float_weight, self.float_features)

    @classmethod
    def from_dense(cls, weight, bias=None, *, sparsity=None, blocksize=(4, 1),
                   dtype="float32", balanced=False):
        """Build from a dense float weight, pruning and quantizing it.

        Parameters
        ----------
        weight : array_like of shape (out_features, in_features)
        bias : array_like of shape (out_features,), optional
        sparsity : float in [0, 1], optional
            Fraction of blocks removed by :func:`blocksparse.prune` (by L2
            norm); None keeps the weight dense.
        blocksize : tuple of int, optional
            Block shape (R, C) of the weight (out_features, in_features):
            ``(4, 1)`` (default, the paper's "4x1") is four consecutive
            output rows in one input column; ``(1, 4)`` four consecutive
            weights of one row along the input features.
        dtype : {"float32", "int8"}, optional
            ``"int8"`` quantizes per output row (:func:`blocksparse.quantize`),
            also without pruning (then every block is stored).
        balanced : bool, optional
            Prune every block row to the same number of blocks.

        Returns
        -------
        Linear

        Raises
        ------
        ValueError
            For a bad `sparsity`, a `blocksize` that does not divide the
            shape, an unknown `dtype` or non-finite weights.
        """
        dtype = _check_dtype_name(dtype)
        w = _sparsify(_float_weight(weight), sparsity, blocksize, balanced)
        return cls(_finish(w, dtype, blocksize), bias)

    def __repr__(self):
        return (f"<Linear {self.in_features} -> {self.out_features}, {self.kind}"
                + (f", density {self.weight.density:.1%}" if self.kind != "dense" else "")
                + (", bias" if self.bias is not None else "")
                + (f", float part of {self.float_weight.nnz} weights"
                   if self.float_weight is not None else "") + ">")

    def __call__(self, x, activation=None):
        """``act(x @ W.T + b)`` for x of shape (..., in_features).

        Parameters
        ----------
        x : array_like of shape (..., in_features), float
        activation : {None, "relu", "gelu"}, optional
            GELU is the erf form.

        Returns
        -------
        ndarray of shape (..., out_features), dtype float32
        """
        _check_activation(activation)
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a float array, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {x.shape}")
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features), dtype=np.float32)
        if self.kind == "int8" and self.float_weight is None:
            if self.input_scale is not None:
                x2 = x2 * self.input_scale
            y = linear(x2, self.weight, self.bias, activation)
        else:
            y = self._forward(_ops._features_major(x2), None, activation).T
        return np.ascontiguousarray(y).reshape(lead + (self.out_features,))

    def _forward(self, x, xq, activation=None, refine=None, few_columns=False):
        """Unchecked: y (M, N) from x (K, N) float32 and its uint8 codes xq (or None).

        INT8: `refine`, an int array of token columns or None, gets a second
        pass over the rounding residual of those tokens' activations.
        `few_columns`: a dense weight's small product skips BLAS (a head on
        the [CLS] rows, see :func:`._ops._small_matmul`).
        """
        if self.kind == "int8":
            if xq is None:
                xq = _ops._quantize_tokens(x, self._q_mul)
            N = xq.q.shape[1]
            y = np.empty((self.out_features, N), dtype=np.float32)
            if not N:
                return y
            # the float part joins in the epilogue, before bias and activation;
            # the second pass is added after the product, so with it bias and
            # activation run as a pass of their own
            late = activation is not None and refine is not None
            part = {} if self._float_epilogue is None else dict(self._float_epilogue, float_x=x)
            epilogue = Epilogue(None, None, **part) if late else \
                Epilogue(activation, self.bias, **part)
            matmul(self.weight.packed, xq, y, layout="features", epilogue=epilogue)
            if refine is not None:
                if 4 * len(refine) < N:    # a few tokens: gathered
                    y[:, refine] += self._residual_product(x, xq, refine)
                else:                      # many: all columns, the others' residual zeroed
                    keep = None
                    if len(refine) < N:
                        keep = np.zeros(N, np.float32)
                        keep[refine] = 1.0
                    y += self._residual_product(x, xq, None, keep)
            if late:
                _ops._bias_act(y, self.bias, activation)
            return y
        y = _ops._small_matmul(self.weight, x) if few_columns else self.weight @ x
        if (self.bias is not None or activation is not None) and y.size:
            _ops._bias_act(y, self.bias, activation)
        return y

    def _residual_product(self, x, xq, cols, keep=None):
        """W_q applied to the INT8 rounding residual of the tokens `cols` (M, len(cols)).

        The residual ``x * factors - dequantize(xq)`` of each token lies within
        half a step of its scale; quantized again per token, it adds about
        eight bits to those tokens' activations at the cost of one more
        product over them.  `cols` None means every token; `keep`, 0 or 1 per
        token, then zeroes the residual of the tokens with 0 (an all-zero token
        quantizes to its zero point, so it adds exactly 0).
        """
        if cols is None:
            q, zero, scale = xq.q, xq.zero, xq.scale
            r = x * self._q_mul[:, None] if self._q_mul is not None else x.copy()
        else:
            q, zero, scale = (np.take(a, cols, axis=-1) for a in (xq.q, xq.zero, xq.scale))
            r = np.take(x, cols, axis=1)
            if self._q_mul is not None:
                r *= self._q_mul[:, None]
        codes = np.subtract(q, zero.astype(np.float32), dtype=np.float32)
        codes *= scale
        r -= codes
        if keep is not None:
            r *= keep
        out = np.empty((self.out_features, r.shape[1]), dtype=np.float32)
        matmul(self.weight.packed, _ops._quantize_tokens(r), out, layout="features")
        return out

    def _quantization_factors(self):
        """Per-feature factors before quantizing (input_scale, 0 on float features), or None."""
        if self.float_features is None:
            return self.input_scale
        q = np.ones(self.in_features, np.float32) if self.input_scale is None \
            else self.input_scale.copy()
        q[self.float_features] = 0.0
        return q

    @property
    def uses_int8(self):
        """True if the layer takes uint8 activations (kind "int8")."""
        return self.kind == "int8"

    @property
    def input_spec(self):
        """:class:`InputSpec`: uint8 codes for kind "int8" (times :attr:`input_scale`, 0 on
        :attr:`float_features`)."""
        return InputSpec(True, self._q_mul) if self.kind == "int8" else FLOAT_INPUT

    def to_int8(self, blocksize=(4, 1), input_absmax=None, smoothing=None, *,
                float_features=0, float_weights=0.0):
        """An INT8 copy of this float layer, optionally smoothed, with an optional float part.

        With `smoothing` = alpha and the per-feature maxima of the inputs
        the layer sees, the inputs are divided and the weight columns
        multiplied by ``s[k] = absmax[k]**alpha / max_m |W[m, k]|**(1 -
        alpha)`` (SmoothQuant, Xiao et al. 2023), which moves the outlier
        features of LayerNorm outputs into the per-row weight scales and
        leaves ``x @ W.T`` unchanged before rounding.  The division is
        fused into the quantization of the input (:attr:`input_scale`).

        Outliers that smoothing cannot absorb can stay float32
        (:attr:`float_weight`, added to the INT8 product): the
        `float_features` input features with the largest maxima (in BERT
        models the "massive activations" of ``[CLS]``, ``[SEP]`` and
        punctuation tokens, up to 40 times a token's RMS, which would set
        those tokens' whole per-token scale) with their weight columns,
        and in each row the ``round(float_weights * in_features)``
        largest weights (which would set the row's scale).  Both leave the
        INT8 part; the float features are quantized as 0.

        Parameters
        ----------
        blocksize : tuple of int, optional
            For a dense float weight: the block shape of the INT8 matrix;
            (4, 1) is four consecutive output rows in one input column.  A
            block-sparse weight keeps its own.
        input_absmax : array_like of shape (in_features,), optional
            Calibration maxima of ``|x[:, k]|``.
        smoothing : float in (0, 1], optional
            The migration strength alpha; None (or 0) quantizes as is.
        float_features : int, optional
            How many input features stay float (needs `input_absmax`).
        float_weights : float in [0, 1), optional
            Fraction of each row's (stored) weights that stays float.

        Returns
        -------
        Linear
            kind "int8".

        Raises
        ------
        ValueError
            If the layer is INT8 already, `smoothing` or `float_features`
            come without `input_absmax`, or an argument is out of range.
        """
        if self.kind == "int8":
            raise ValueError("the layer is already INT8")
        K = self.in_features
        n_feat = _count_arg(float_features, K, "float_features")
        frac = float(float_weights)
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"float_weights must lie in [0, 1), got {float_weights!r}")
        amax = None
        if smoothing or n_feat:
            if input_absmax is None:
                raise ValueError(f"{'smoothing' if smoothing else 'float_features'} needs "
                                 f"input_absmax (calibration maxima)")
            amax = np.asarray(input_absmax, np.float64)
            if amax.shape != (K,):
                raise ValueError(f"input_absmax must have shape ({K},), got {amax.shape}")
        feats = np.sort(np.argsort(-amax, kind="stable")[:n_feat]) if n_feat else None
        w, s, input_scale = self.weight, None, None
        if smoothing:
            a = amax.copy()
            if feats is not None:
                a[feats] = 0.0  # the float features do not pull the others' factors
            s = _smoothing_factors(a, _column_absmax(w), float(smoothing))
            if feats is not None:
                s[feats] = 1.0
            w = _scale_columns(w, s)
            input_scale = (1.0 / s).astype(np.float32)
        float_weight = None
        per_row = int(round(frac * K))
        if feats is not None or per_row:
            w, float_weight = _split_float(w, s, feats, per_row)
        return Linear(_finish(w, "int8", blocksize), self.bias, input_scale, float_weight,
                      feats)


def _count_arg(value, limit, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            not 0 <= value <= limit:
        raise ValueError(f"{name} must be an integer in [0, {limit}], got {value!r}")
    return int(value)


def _split_float(w, s, feats, per_row):
    """(INT8 part, float part) of a (smoothed) weight: the columns `feats` and the
    `per_row` largest stored weights of each row move to the float part, unsmoothed."""
    dense = w if isinstance(w, np.ndarray) else w.toarray()
    M, K = dense.shape
    take = np.zeros((M, K), dtype=bool)
    if feats is not None:
        take[:, feats] = True
    if per_row:
        a = np.abs(dense)
        a[take] = 0.0
        top = np.argpartition(-a, per_row - 1, axis=1)[:, :per_row]
        take[np.arange(M)[:, None], top] = True
    take &= dense != 0  # pruned weights stay zero
    values = dense if s is None else dense / s[None, :].astype(np.float32)
    float_weight = BlockSparseMatrix(np.where(take, values, 0).astype(np.float32),
                                     blocksize=(1, 1))
    if isinstance(w, np.ndarray):
        return np.where(take, 0, w).astype(np.float32), float_weight
    # keep the block structure: zero the moved values inside their blocks
    R, C = w.blocksize
    block_rows = np.repeat(np.arange(w.shape[0] // R), np.diff(w.indptr))
    rows = block_rows[:, None, None] * R + np.arange(R)[None, :, None]
    cols = w.indices.astype(np.int64)[:, None, None] * C + np.arange(C)[None, None, :]
    data = np.where(take[rows, cols], 0, w.data).astype(np.float32)
    return BlockSparseMatrix((data, w.indices, w.indptr), shape=w.shape,
                             blocksize=w.blocksize), float_weight


def _float_epilogue(float_weight, float_features):
    """The float part as the INT8 epilogue takes it (Epilogue keywords), or None.

    The float features' columns go dense (their activations are read once
    for several rows), the other weights as (1, 1) entries; packed now, not
    by the first of concurrent calls.
    """
    if float_weight is None:
        return None
    csr = float_weight.tocsr()
    part = {}
    if float_features is not None:
        part["float_columns"] = np.ascontiguousarray(float_features, dtype=np.int32)
        part["float_dense"] = np.ascontiguousarray(csr[:, float_features].toarray(),
                                                   dtype=np.float32)
        rest = csr.tolil()
        rest[:, float_features] = 0
        csr = rest.tocsr()
        csr.eliminate_zeros()
    if csr.nnz:
        part["float_weight"] = BlockSparseMatrix(csr, blocksize=(1, 1))._packed_as(np.float32)
    return part or None


def _float_part(lin, float_weight, float_features):
    """Checked (float_weight as a float32 BlockSparseMatrix, sorted feature indices)."""
    if float_weight is None:
        if float_features is not None:
            raise ValueError("float_features needs float_weight (the part that carries them)")
        return None, None
    if lin.kind != "int8":
        raise ValueError("float_weight is only for INT8 (QuantizedMatrix) weights")
    f = float_weight
    if not isinstance(f, BlockSparseMatrix) and not (hasattr(f, "tocsr") and hasattr(f, "nnz")):
        f = np.asarray(f)  # SciPy sparse and BlockSparseMatrix have dtype and shape already
    if f.dtype.kind != "f":
        raise TypeError(f"float_weight must hold floats, got dtype {f.dtype}")
    if f.shape != lin.weight.shape:
        raise ValueError(f"float_weight must have shape {lin.weight.shape}, got {f.shape}")
    float_weight = f if isinstance(f, BlockSparseMatrix) else BlockSparseMatrix(f, blocksize=(1, 1))
    if float_weight.dtype != np.float32:
        float_weight = float_weight.astype(np.float32)
    if not np.all(np.isfinite(float_weight.data)):
        raise ValueError("float_weight has NaN or Inf values")
    if float_features is None:
        return float_weight, None
    f = np.asarray(float_features)
    if f.dtype.kind not in "iu" or f.ndim != 1:
        raise TypeError(f"float_features must be a 1-D integer array, got {f.dtype} of shape "
                        f"{f.shape}")
    f = np.unique(f.astype(np.int64))
    if f.size and (f[0] < 0 or f[-1] >= lin.in_features):
        raise ValueError(f"float_features must lie in [0, {lin.in_features}), got values in "
                         f"[{f[0]}, {f[-1]}]")
    return float_weight, (f if f.size else None)


def _column_absmax(w):
    """max_m |W[m, k]| of a dense array or BlockSparseMatrix, float64 (K,)."""
    if isinstance(w, np.ndarray):
        return np.abs(w).max(axis=0).astype(np.float64)
    out = np.zeros(w.shape[1], dtype=np.float64)
    if w.nnzb:
        C = w.blocksize[1]
        cols = (w.indices.astype(np.int64)[:, None] * C + np.arange(C)).ravel()
        np.maximum.at(out, cols, np.abs(w.data).max(axis=1).astype(np.float64).ravel())
    return out


def _smoothing_factors(act_absmax, w_absmax, alpha):
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"smoothing must lie in (0, 1], got {alpha}")
    if act_absmax.shape != w_absmax.shape:
        raise ValueError(f"input_absmax must have shape {w_absmax.shape}, got "
                         f"{act_absmax.shape}")
    ok = (act_absmax > 0) & (w_absmax > 0) & np.isfinite(act_absmax)
    s = np.ones_like(w_absmax)
    s[ok] = act_absmax[ok] ** alpha / w_absmax[ok] ** (1.0 - alpha)
    # a bounded range keeps both sides representable; the factors are only a
    # change of basis, so clipping them costs accuracy, never correctness
    s = np.clip(s / np.exp(np.mean(np.log(s))), 1e-3, 1e3)
    return s.astype(np.float32).astype(np.float64)


def _scale_columns(w, s):
    """W[:, k] * s[k] for a dense array or a float BlockSparseMatrix."""
    if isinstance(w, np.ndarray):
        return (w * s[None, :]).astype(np.float32)
    C = w.blocksize[1]
    cols = w.indices.astype(np.int64)[:, None] * C + np.arange(C)
    data = (w.data * s[cols][:, None, :]).astype(np.float32)
    return BlockSparseMatrix((data, w.indices, w.indptr), shape=w.shape, blocksize=w.blocksize)


def _finish(w, dtype, blocksize):
    """Dense array or float BlockSparseMatrix -> Linear weight of `dtype`."""
    if dtype == "int8":
        return quantize(w, blocksize=None if isinstance(w, BlockSparseMatrix) else blocksize)
    return w


class LayerNorm:
    """LayerNorm over the last axis, with an optional fused residual add.

    ``y = (t - mean) / sqrt(var + eps) * weight + bias`` with
    ``t = x + residual``, computed per token by one C kernel.

    Parameters
    ----------
    weight, bias : array_like of shape (H,)
        Scale (gamma) and shift (beta).
    eps : float, optional

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import LayerNorm
    >>> ln = LayerNorm(np.ones(2), np.zeros(2))
    >>> np.round(ln(np.array([[0.0, 1.0]]), residual=np.array([[2.0, 3.0]])), 3).tolist()
    [[-1.0, 1.0]]
    """

    def __init__(self, weight, bias, eps=1e-12):
        weight = np.asarray(weight)
        if weight.ndim != 1 or weight.size == 0:
            raise ValueError(f"weight must be a non-empty 1-D array, got shape {weight.shape}")
        self.weight = _ops._vector(weight, weight.shape[0], "weight")
        self.bias = _ops._vector(bias, weight.shape[0], "bias")
        self.eps = float(eps)
        if not self.eps >= 0.0:
            raise ValueError(f"eps must be non-negative, got {eps}")

    @property
    def normalized_shape(self):
        return self.weight.shape

    def __repr__(self):
        return f"<LayerNorm {self.weight.shape[0]}, eps={self.eps:g}>"

    def __call__(self, x, residual=None):
        """LayerNorm(x + residual) over the last axis of x (..., H).

        Returns
        -------
        ndarray of the shape of `x`, dtype float32
        """
        x = np.asarray(x)
        H = self.weight.shape[0]
        if x.ndim < 1 or x.shape[-1] != H:
            raise ValueError(f"x must have shape (..., {H}), got {x.shape}")
        r = None
        if residual is not None:
            r = np.asarray(residual)
            if r.shape != x.shape:
                raise ValueError(f"residual must have the shape of x {x.shape}, got {r.shape}")
            r = r.reshape(-1, H)
        y = _ops.layer_norm(x.reshape(-1, H), self.weight, self.bias, self.eps, residual=r)
        return y.reshape(x.shape)

    def _forward(self, x, residual, want=FLOAT_INPUT, out=None, x_tokens=False):
        """Unchecked, (features, tokens) arrays (x (tokens, features) if x_tokens).

        Returns (y, the uint8 codes of y if the InputSpec `want` asks for them,
        else None).
        """
        if out is None:
            out = np.empty(x.shape[::-1] if x_tokens else x.shape, dtype=np.float32)
        return _ops._layer_norm(x, residual, self.weight, self.bias, self.eps, out,
                                want.quantized, want.scale, x_tokens)


def _absmax(v, real=None):
    """max |v| per feature of a (features, tokens) array, over the tokens `real` (a
    boolean mask of the columns) only, if given."""
    v = v if real is None else v[:, real]
    return np.abs(v).max(axis=1) if v.shape[1] else np.zeros(v.shape[0], np.float32)


def _hidden_3d(hidden_states, H, name="hidden_states"):
    h = np.asarray(hidden_states)
    if h.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {h.dtype}")
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3 or h.shape[2] != H:
        raise ValueError(f"{name} must have shape (batch, seq, {H}), got {h.shape}")
    return h


def _to_internal(h):
    """(batch, seq, hidden) -> float32 (hidden, batch * seq)."""
    B, S, H = h.shape
    return _ops._features_major(h.reshape(B * S, H))


def _from_internal(x, B, S):
    """float32 (hidden, batch * seq) -> (batch, seq, hidden)."""
    out = np.empty((B * S, x.shape[0]), dtype=np.float32)
    return _ops._transpose(x, out).reshape(B, S, x.shape[0])


class MultiHeadSelfAttention:
    """Multi-head self-attention with Q, K and V as one product.

    ``qkv = x @ [Wq; Wk; Wv].T + [bq; bk; bv]`` (one Linear layer of
    3 * hidden outputs), then per head ``softmax(Q K^T / sqrt(d) + mask) V``
    in one C kernel (:func:`blocksparse.nn.attention`), then the output
    projection.  With INT8 projections the attention kernel also quantizes
    its output per token for the output projection.

    Parameters
    ----------
    qkv : Linear
        in_features = hidden, out_features = 3 * hidden: queries, keys,
        values stacked along the outputs.
    out : Linear
        The output projection, hidden -> hidden.
    num_heads : int
    precision : {"float32", "int8"}, optional
        Of the attention's own products ``Q K^T`` and ``P V`` (see
        :func:`blocksparse.nn.attention`), whatever the kind of the Linear
        layers.  The attribute of that name may be changed later.
    """

    def __init__(self, qkv, out, num_heads, precision="float32"):
        if not isinstance(qkv, Linear) or not isinstance(out, Linear):
            raise TypeError("qkv and out must be Linear layers")
        H = out.in_features
        if out.out_features != H or qkv.in_features != H or qkv.out_features != 3 * H:
            raise ValueError(f"qkv must map {H} -> {3 * H} and out {H} -> {H} features; got "
                             f"qkv {qkv.in_features} -> {qkv.out_features}, out "
                             f"{out.in_features} -> {out.out_features}")
        if not isinstance(num_heads, (int, np.integer)) or num_heads <= 0 or H % num_heads:
            raise ValueError(f"num_heads must be a positive divisor of hidden size {H}, got "
                             f"{num_heads!r}")
        self.qkv, self.out, self.num_heads = qkv, out, int(num_heads)
        self.hidden_size = H
        self.precision = precision

    @property
    def precision(self):
        """"float32" or "int8": the precision of the products ``Q K^T`` and ``P V``."""
        # a layer pickled before the option existed has float32 attention
        return getattr(self, "_precision", "float32")

    @precision.setter
    def precision(self, value):
        self._precision = _ops._check_precision(value)

    @classmethod
    def from_weights(cls, q, k, v, o, num_heads, *, sparsity=None, blocksize=(4, 1),
                     dtype="float32", balanced=False, precision="float32"):
        """Build from separate (weight, bias) pairs of the four projections.

        Each weight (hidden, hidden) is pruned on its own (`sparsity`,
        `blocksize`, `balanced` as in :meth:`Linear.from_dense`; blocksize
        (4, 1) is four consecutive output rows in one input column), then
        Q, K and V are stacked into one Linear layer; `dtype` "int8"
        quantizes per output row, so stacking does not change the scales.
        `precision` is that of the attention's products (see the class).
        """
        dtype = _check_dtype_name(dtype)
        ws = [_sparsify(_float_weight(w, n), sparsity, blocksize, balanced)
              for (w, _), n in zip((q, k, v), ("q weight", "k weight", "v weight"))]
        biases = [b for _, b in (q, k, v)]
        if any(b is None for b in biases) and not all(b is None for b in biases):
            raise ValueError("give biases for all of q, k, v or for none")
        bias = None if biases[0] is None else np.concatenate(
            [np.asarray(b, dtype=np.float32).ravel() for b in biases])
        qkv = Linear(_finish(_stack_rows(ws), dtype, blocksize), bias)
        out = Linear.from_dense(o[0], o[1], sparsity=sparsity, blocksize=blocksize,
                                dtype=dtype, balanced=balanced)
        return cls(qkv, out, num_heads, precision)

    def __repr__(self):
        return f"<MultiHeadSelfAttention {self.hidden_size}, {self.num_heads} heads, " \
               f"{self.qkv.kind}, {self.precision} products>"

    def __call__(self, hidden_states, attention_mask=None):
        """Attention output (before the residual), shape (batch, seq, hidden)."""
        h = _hidden_3d(hidden_states, self.hidden_size)
        B, S, _ = h.shape
        mask = _ops._mask_u8(attention_mask, (B, S))
        return _from_internal(self._forward(_to_internal(h), None, mask, B, S), B, S)

    @property
    def input_spec(self):
        """:class:`InputSpec` of the Q/K/V product, which reads the input."""
        return self.qkv.input_spec

    def _calibrate(self, x, mask, B, S):
        """(output, the context the output projection reads), float path."""
        qkv = self.qkv._forward(x, None)
        ctx = np.empty((self.hidden_size, B * S), dtype=np.float32)
        ctx, _ = _ops._attention(qkv, B, S, self.num_heads, mask, ctx, False)
        return self.out._forward(ctx, None), ctx

    def _forward(self, x, xq, mask, B, S, refine=None):
        qkv = self.qkv._forward(x, xq, refine=refine)
        ctx = np.empty((self.hidden_size, B * S), dtype=np.float32)
        # the kernel's fused quantization has no per-feature factors
        want = self.out.input_spec
        ctx, ctxq = _ops._attention(qkv, B, S, self.num_heads, mask, ctx,
                                    want.quantized and want.scale is None,
                                    self.precision == "int8")
        return self.out._forward(ctx, ctxq, refine=refine)


class BertLayer:
    """One Transformer encoder layer (post-LayerNorm, as BERT).

    ``h1 = LN1(attention(h) + h)``; ``h2 = LN2(ffn2(act(ffn1(h1))) + h1)``,
    with the residual adds fused into the LayerNorm kernel, bias +
    activation fused into the FFN1 product and, on INT8 layers, the
    per-token uint8 quantization of each Linear input fused into the kernel
    that makes it (LayerNorm, attention) or done in one C pass (FFN2).

    Parameters
    ----------
    attention : MultiHeadSelfAttention
    ln1 : LayerNorm
    ffn1, ffn2 : Linear
        hidden -> intermediate and intermediate -> hidden.
    ln2 : LayerNorm
    activation : str, optional
        The FFN activation, a name from
        :data:`blocksparse.nn.activations.FFN_ACTIVATIONS` ("gelu" = erf form,
        "relu", "gelu_new", ...): "gelu" and "relu" are fused into the FFN1
        product's epilogue, the others run as a float pass over its output.
    """

    def __init__(self, attention, ln1, ffn1, ffn2, ln2, activation="gelu"):
        if not isinstance(attention, MultiHeadSelfAttention):
            raise TypeError("attention must be a MultiHeadSelfAttention")
        if not all(isinstance(ln, LayerNorm) for ln in (ln1, ln2)):
            raise TypeError("ln1 and ln2 must be LayerNorm layers")
        if not all(isinstance(f, Linear) for f in (ffn1, ffn2)):
            raise TypeError("ffn1 and ffn2 must be Linear layers")
        H = attention.hidden_size
        if ffn1.in_features != H or ffn2.out_features != H or \
                ffn2.in_features != ffn1.out_features:
            raise ValueError(f"ffn1 must map {H} -> I and ffn2 I -> {H}; got "
                             f"{ffn1.in_features} -> {ffn1.out_features} and "
                             f"{ffn2.in_features} -> {ffn2.out_features}")
        if ln1.weight.shape != (H,) or ln2.weight.shape != (H,):
            raise ValueError(f"ln1 and ln2 must normalize {H} features")
        self.attention, self.ln1, self.ffn1, self.ffn2, self.ln2 = \
            attention, ln1, ffn1, ffn2, ln2
        if activation not in FFN_ACTIVATIONS:
            others = [a for a in FFN_ACTIVATIONS if a not in ("gelu", "relu")]
            raise ValueError(f"activation must be 'gelu' or 'relu', or one of {others}, got "
                             f"{activation!r}")
        self.activation = activation
        self._fused = epilogue_activation(activation)
        self.hidden_size = H

    def __repr__(self):
        return (f"<BertLayer {self.hidden_size} -> {self.ffn1.out_features} -> "
                f"{self.hidden_size}, {self.attention.num_heads} heads, {self.ffn1.kind}>")

    @property
    def linears(self):
        """The four Linear layers: qkv, attention output, ffn1, ffn2."""
        return [self.attention.qkv, self.attention.out, self.ffn1, self.ffn2]

    def __call__(self, hidden_states, attention_mask=None):
        """Layer output, shape (batch, seq, hidden), float32."""
        h = _hidden_3d(hidden_states, self.hidden_size)
        B, S, _ = h.shape
        mask = _ops._mask_u8(attention_mask, (B, S))
        return _from_internal(self._forward(_to_internal(h), None, mask, B, S)[0], B, S)

    @property
    def input_spec(self):
        """:class:`InputSpec` of the layer's first product (Q/K/V)."""
        return self.attention.input_spec

    def _forward(self, x, xq, mask, B, S, want=FLOAT_INPUT, refine=None):
        """(output, its uint8 codes if the InputSpec `want` asks for them, else None)."""
        linears = self._one_call_linears() if refine is None and xq is not None else None
        if linears is not None:
            return self._forward_one_call(linears, x, xq, mask, B, S, want)
        a = self.attention._forward(x, xq, mask, B, S, refine)
        h1, h1q = self.ln1._forward(a, x, self.ffn1.input_spec, out=a)
        inter = self._ffn1(h1, h1q, refine)
        ffn2_in = self.ffn2.input_spec
        interq = _ops._quantize_tokens(inter, ffn2_in.scale) if ffn2_in.quantized else None
        o = self.ffn2._forward(inter, interq, refine=refine)
        return self.ln2._forward(o, h1, want, out=o)

    def _one_call_linears(self):
        """(qkv, out, ffn1, ffn2) if the layer runs as one C call, else None.

        That call (``bsk_encoder_layer_q8_run``) takes INT8 weights without a
        float part, the INT8 attention and a fused FFN activation; it gives
        the bits of the piece-by-piece path below.
        """
        att = self.attention
        linears = (att.qkv, att.out, self.ffn1, self.ffn2)
        if self._fused is None or att.precision != "int8" or any(
                lin.kind != "int8" or lin._float_epilogue is not None for lin in linears):
            return None
        return linears

    def _forward_one_call(self, linears, x, xq, mask, B, S, want):
        """The layer in one C call: one team of threads, each on its share of the tokens."""
        H, N = x.shape
        y = np.empty((H, N), np.float32)
        yq = QuantizedActivations.empty(H, N) if want.quantized else None
        att = self.attention
        _ops._encoder_layer_q8(
            tuple(lin.weight.packed for lin in linears), tuple(lin.bias for lin in linears),
            self._fused, (self.ln1.weight, self.ln1.bias, self.ln1.eps),
            (self.ln2.weight, self.ln2.bias, self.ln2.eps),
            (att.out._q_mul, self.ffn1._q_mul, self.ffn2._q_mul, want.scale),
            x, xq, mask, B, S, att.num_heads, y, yq)
        return y, yq

    def _ffn1(self, h1, h1q, refine=None):
        """act(FFN1(h1)): fused into the product, or a float pass after it."""
        inter = self.ffn1._forward(h1, h1q, self._fused, refine)
        return inter if self._fused else apply_activation(inter, self.activation)

    def _calibrate(self, x, mask, B, S, real=None):
        """(output, max |input| per feature of qkv, out, ffn1, ffn2), float path.

        `real`, a boolean mask of the token columns, leaves padding out of the maxima.
        """
        a, ctx = self.attention._calibrate(x, mask, B, S)
        h1, _ = self.ln1._forward(a, x, out=a)
        inter = self._ffn1(h1, None)
        maxima = tuple(_absmax(v, real) for v in (x, ctx, h1, inter))
        o = self.ffn2._forward(inter, None)
        return (self.ln2._forward(o, h1, out=o)[0],) + maxima

    def to_int8(self, qkv_absmax=None, ffn1_absmax=None, smoothing=None, blocksize=(4, 1), *,
                out_absmax=None, ffn2_absmax=None, float_features=0, float_weights=0.0):
        """An INT8 copy of this float layer (see :meth:`Linear.to_int8`).

        `smoothing` (alpha) applies to the inputs of the Q/K/V and FFN1
        products, the LayerNorm outputs whose outlier features per-token
        quantization handles worst; it needs their calibration maxima
        `qkv_absmax` and `ffn1_absmax`.  `float_features` and
        `float_weights` apply to all four products (the first needs all
        four maxima).  blocksize: as in :meth:`Linear.to_int8` ((4, 1) =
        four consecutive output rows in one input column).
        """
        att = self.attention
        extra = dict(float_features=float_features, float_weights=float_weights)
        qkv = att.qkv.to_int8(blocksize, qkv_absmax, smoothing, **extra)
        out = att.out.to_int8(blocksize, out_absmax, **extra)
        ffn1 = self.ffn1.to_int8(blocksize, ffn1_absmax, smoothing, **extra)
        ffn2 = self.ffn2.to_int8(blocksize, ffn2_absmax, **extra)
        return type(self)(MultiHeadSelfAttention(qkv, out, att.num_heads, att.precision),
                          self.ln1, ffn1, ffn2, self.ln2, self.activation)


class PreNormBertLayer(BertLayer):
    """One pre-LayerNorm encoder layer (RoBERTa-PreLayerNorm, XLM-RoBERTa-XL).

    ``h1 = h + attention(LN1(h))``; ``h2 = h1 + ffn2(act(ffn1(LN2(h1))))``.
    The residual stream between layers stays float32 (no LayerNorm after
    the adds); each LayerNorm reads it and, on INT8 layers, quantizes its
    output for the product after it in the same C call, as in
    :class:`BertLayer`.  The stack's last output goes through one more
    LayerNorm, the encoder's ``final_ln``.

    Parameters
    ----------
    attention, ln1, ffn1, ffn2, ln2, activation
        As in :class:`BertLayer`; `ln1` normalizes the attention's input,
        `ln2` the FFN's.
    """

    def __repr__(self):
        return "<PreNorm" + super().__repr__()[1:]

    def _one_call_linears(self):
        """None: the one C call is of the post-LayerNorm layer only."""
        return None

    @property
    def input_spec(self):
        """Float: the layer reads the residual stream; its LayerNorm makes the codes."""
        return FLOAT_INPUT

    def _forward(self, x, xq, mask, B, S, want=FLOAT_INPUT, refine=None):
        n1, n1q = self.ln1._forward(x, None, self.attention.input_spec)
        h1 = self.attention._forward(n1, n1q, mask, B, S, refine)
        h1 += x
        n2, n2q = self.ln2._forward(h1, None, self.ffn1.input_spec)
        inter = self._ffn1(n2, n2q, refine)
        ffn2_in = self.ffn2.input_spec
        interq = _ops._quantize_tokens(inter, ffn2_in.scale) if ffn2_in.quantized else None
        o = self.ffn2._forward(inter, interq, refine=refine)
        o += h1
        return o, (_ops._quantize_tokens(o, want.scale) if want.quantized else None)

    def _calibrate(self, x, mask, B, S, real=None):
        n1, _ = self.ln1._forward(x, None)
        h1, ctx = self.attention._calibrate(n1, mask, B, S)
        h1 += x
        n2, _ = self.ln2._forward(h1, None)
        inter = self._ffn1(n2, None)
        maxima = tuple(_absmax(v, real) for v in (n1, ctx, n2, inter))
        o = self.ffn2._forward(inter, None)
        o += h1
        return (o,) + maxima


class BertEncoder:
    """A stack of :class:`BertLayer` (or :class:`PreNormBertLayer`).

    Parameters
    ----------
    layers : sequence of BertLayer
    final_ln : LayerNorm, optional
        Applied to the last layer's output: pre-LayerNorm stacks end with
        one (their layers leave the residual stream unnormalized).
    """

    def __init__(self, layers, final_ln=None):
        layers = list(layers)
        if not all(isinstance(layer, BertLayer) for layer in layers):
            raise TypeError("layers must be BertLayer instances")
        if len({layer.hidden_size for layer in layers}) > 1:
            raise ValueError("all layers must have the same hidden size")
        if final_ln is not None:
            if not isinstance(final_ln, LayerNorm):
                raise TypeError("final_ln must be a LayerNorm")
            if layers and final_ln.weight.shape != (layers[0].hidden_size,):
                raise ValueError(f"final_ln must normalize {layers[0].hidden_size} features")
        self.layers = layers
        self.final_ln = final_ln

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        final = ", final LayerNorm" if self.final_ln is not None else ""
        return f"<BertEncoder of {len(self.layers)} layers{final}>"

    @property
    def first_linear(self):
        """The Linear layer that reads the encoder's input (or None)."""
        return self.layers[0].attention.qkv if self.layers else None

    @property
    def input_spec(self):
        """:class:`InputSpec` of the first layer (float input if there is none)."""
        return self.layers[0].input_spec if self.layers else FLOAT_INPUT

    def __call__(self, hidden_states, attention_mask=None):
        """Last hidden state, shape (batch, seq, hidden), float32."""
        if not self.layers and self.final_ln is None:
            return np.array(hidden_states, dtype=np.float32)
        H = self.layers[0].hidden_size if self.layers else self.final_ln.weight.shape[0]
        h = _hidden_3d(hidden_states, H)
        B, S, _ = h.shape
        mask = _ops._mask_u8(attention_mask, (B, S))
        return _from_internal(self._forward(_to_internal(h), None, mask, B, S), B, S)

    def _forward(self, x, xq, mask, B, S, refine=None):
        return self._forward_chunks([(x, xq, mask, B, refine)], S)[0]

    def _forward_chunks(self, chunks, S):
        """Last hidden state (hidden, tokens) of each chunk of whole sequences.

        `chunks`: ``(x, xq, mask, B, refine)`` per chunk.  Layer by layer,
        each over every chunk in turn: a chunk's intermediate activations
        stay in the cores' caches, where those of a whole large batch went
        out to memory and back, and a layer's weights are read once per
        chunk from cache.  Every piece is per token or per sequence, so the
        bits do not depend on the chunking.
        """
        # each layer makes what the next one asks for; the last, float only
        wants = [layer.input_spec for layer in self.layers[1:]] + [FLOAT_INPUT]
        xs = [(x, xq) for x, xq, *_ in chunks]
        for layer, want in zip(self.layers, wants):
            for i, (_, _, mask, B, refine) in enumerate(chunks):
                xs[i] = layer._forward(*xs[i], mask, B, S, want, refine)
        if self.final_ln is not None:
            return [self.final_ln._forward(x, None)[0] for x, _ in xs]
        return [x for x, _ in xs]


def mean_pooling(hidden, attention_mask=None):
    """Sentence embeddings: the mean of the token vectors the mask keeps.

    ``sum_s mask[b, s] * hidden[b, s] / max(sum_s mask[b, s], 1e-9)``, the
    pooling of sentence-transformers models such as all-MiniLM-L6-v2.  A
    sequence without tokens (all padding, or seq = 0) pools to zeros, as
    there.

    Parameters
    ----------
    hidden : array_like of shape (batch, seq, hidden)
        The last hidden state.
    attention_mask : array_like of shape (batch, seq), optional
        1 (or True) for real tokens, 0 for padding; all ones if omitted.

    Returns
    -------
    ndarray of shape (batch, hidden), dtype float32

    Raises
    ------
    ValueError
        If the shapes do not match, or the mask holds values other than 0
        and 1 (NaN, -1, 2).

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse.nn import mean_pooling
    >>> h = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> mean_pooling(h, np.array([[1, 1, 0]])).tolist()
    [[2.0, 3.0]]
    """
    h = np.asarray(hidden)
    if h.dtype.kind != "f":
        raise TypeError(f"hidden must be a float array, got dtype {h.dtype}")
    if h.ndim != 3:
        raise ValueError(f"hidden must have shape (batch, seq, hidden), got {h.shape}")
    if attention_mask is None:
        if h.shape[1] == 0:
            return np.zeros((h.shape[0], h.shape[2]), dtype=np.float32)
        return h.mean(axis=1, dtype=np.float64).astype(np.float32)
    m = _ops._mask_values(attention_mask, h.shape[:2]).astype(np.float64)
    total = np.einsum("bs,bsh->bh", m, h.astype(np.float64))
    return (total / np.maximum(m.sum(axis=1), 1e-9)[:, None]).astype(np.float32)
