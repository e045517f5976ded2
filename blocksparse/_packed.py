"""Packed weights and the one call path of the block-sparse products.

Internal but stable: :class:`~blocksparse.BlockSparseMatrix` products,
:class:`~blocksparse.QuantizedMatrix`, :func:`~blocksparse.linear` and
:mod:`blocksparse.nn` all multiply through :func:`matmul`, and new kernels
(and callers) should too.  Names here keep their meaning between releases;
everything else with a leading underscore may change.

:class:`PackedWeight`
    An immutable, kernel-ready copy of a block-CSR weight: int32 block
    indices, the values, and for INT8 the (4, 1) group tables, the row sums
    and the per-row scales.  Its arrays are its own and read-only, and they
    are checked once, when it is made (the whole index structure, O(nnzb)),
    so a product checks only its operands.
:class:`Epilogue`
    What an INT8 product does with its int32 accumulators besides the
    zero-point correction and the scales: bias, activation, uint8
    requantization.
:class:`QuantizedActivations`
    uint8 activations with one scale and zero point per token.
:func:`matmul`
    ``matmul(packed, x, out, *, layout, epilogue=None)``.

Two layouts: ``"features"`` is the ``W @ X`` form, ``x`` of shape (K, N)
and ``out`` (M, N) (the encoder's features x tokens activations);
``"tokens"`` is the Linear form ``x @ W.T``, ``x`` (N, K) and ``out``
(N, M).  Blocksize (4, 1) is four consecutive output rows in one input
column, (1, 4) four consecutive weights of one row along K.
"""
import os
import warnings

import numpy as np

from . import _config, _kernels, _pack

__all__ = ["PackedWeight", "Epilogue", "QuantizedActivations", "matmul", "LAYOUTS",
           "DENSE_DENSITY", "dense_density"]

#: The density (stored blocks / all blocks) from which an INT8 weight is packed for
#: the dense kernel, by blocksize (None: every other blocksize, whose block-sparse
#: product runs the portable loop): the measured crossover of the dense and the
#: block-sparse kernels (``benchmarks/dense_crossover.py``, ``docs/design.rst``).
DENSE_DENSITY = {(4, 1): 0.7, (1, 4): 0.45, None: 0.03}

LAYOUTS = {"features": False, "tokens": True}  # layout -> x given as (N, K)
_INT32_MAX = np.iinfo(np.int32).max


class PackedWeight(_kernels.KernelWeight):
    """A block-CSR weight in the form the C kernels read, immutable and checked once.

    Make one with :meth:`from_matrix`.  The attributes are read-only, and so
    are the arrays: they are copies this object owns (float values may be
    shared with the read-only values of the matrix they came from; a value
    cannot send a kernel out of bounds).  Re-enabling the ``writeable``
    flag of one of them and writing into it is outside the contract.

    Attributes
    ----------
    shape : tuple of int
        (M, K).
    blocksize : tuple of int
        (R, C): (4, 1) is four consecutive output rows in one input column,
        (1, 4) four consecutive weights of one row along K.
    dtype : numpy.dtype
        float32, float64 or int8.
    nnzb : int
    indptr, indices : ndarray of int32
        Block-CSR structure.
    data : ndarray of shape (nnzb, R, C)
    groups : tuple of 3 ndarrays or None
        int8 with blocksize (4, 1): ``(gptr, gcols, gw)`` of
        :func:`blocksparse._pack.group_strips`, the strip kernel's layout.
    rowsum : ndarray of shape (M,), dtype int32, or None
        int8: the row sums, for the activations' zero points.
    scale : ndarray of shape (M,), dtype float32, or None
        int8: the per-row weight scales, needed for float32 and uint8 outputs.
    panel : ndarray of int32 or None
        int8 packed dense (``format == "dense"``): the whole weight, absent
        blocks as zeros, in the dense kernel's layout
        (:func:`blocksparse._pack.dense_panel`); products run the dense
        kernel ``bsk_qgemm`` and give the same bits as the block-sparse one.
    """

    __slots__ = ()

    @property
    def format(self):
        """``"dense"`` (products run the dense INT8 kernel) or ``"sparse"``."""
        return "sparse" if self.panel is None else "dense"

    def __repr__(self):
        R, C = self.blocksize
        extra = "".join([", (4, 1) groups" if self.groups is not None else "",
                         ", dense panel" if self.panel is not None else "",
                         ", scales" if self.scale is not None else ""])
        return (f"<PackedWeight of shape {self.shape}, {self.dtype}, blocksize ({R}, {C}), "
                f"{self.nnzb} stored blocks{extra}>")

    @classmethod
    def from_matrix(cls, W, dtype=None, scale=None, like=None, dense=False):
        """Pack a :class:`~blocksparse.BlockSparseMatrix`.

        Parameters
        ----------
        W : BlockSparseMatrix
        dtype : dtype, optional
            Of the packed values (float32, float64 or int8); W's by default.
        scale : array_like of shape (M,), optional
            int8 only: per-row scales (validated by the caller).
        like : PackedWeight, optional
            A packed form of the same matrix whose (read-only) index arrays
            are shared instead of copied again.
        dense : bool, optional
            int8 only: pack for the dense kernel (format ``"dense"``), the
            absent blocks as zeros, instead of the block-sparse one.

        Returns
        -------
        PackedWeight

        Raises
        ------
        NotImplementedError
            If the matrix has 2**31 blocks or block columns or more (the
            kernels use int32 indices).
        """
        dtype = W.dtype if dtype is None else np.dtype(dtype)
        if like is not None:
            indptr, indices = like.indptr, like.indices
        else:
            if W.nnzb > _INT32_MAX or W.shape[1] // W.blocksize[1] > _INT32_MAX:
                raise NotImplementedError("the kernels need fewer than 2**31 blocks")
            indptr = np.array(W.indptr, dtype=np.int32)
            indices = np.array(W.indices, dtype=np.int32)
        groups = rowsum = panel = None
        if dense and dtype != np.int8:
            raise ValueError("dense packing is for int8 weights")
        if dtype == np.int8:
            if W.dtype != np.int8:
                raise TypeError(f"int8 packing needs int8 values, got {W.dtype}")
            data = np.array(W.data, order="C")
            if dense:
                panel = _pack.dense_panel(W.toarray(), _kernels.QGEMM_MR)
            elif W.blocksize == (4, 1):
                groups = _pack.group_strips(indptr, indices, data)
            rowsum = _pack.row_sums(W.shape, W.blocksize, indptr, data).astype(np.int32)
            if scale is not None:
                scale = np.array(scale, dtype=np.float32)
        else:
            # float values: the matrix's own read-only array when the dtype matches
            data = W.data if W.data.dtype == dtype else W.data.astype(dtype)
        return cls(W.shape, W.blocksize, indptr, indices, np.ascontiguousarray(data), groups,
                   rowsum, scale, panel)


class Epilogue(_kernels.Epilogue):
    """The fused epilogue of an INT8 product, after the integer core.

    For accumulator ``acc[m, n]`` the product computes
    ``t = acc - x_zero[n] * rowsum[m]`` (exact), and for a float32 or uint8
    output ``y = t * scale[m] * x_scale[n] + bias[m]``, the activation, and
    for uint8 ``clip(rint(y / out_scale) + out_zero, 0, 255)``.  The output
    kind follows the dtype of ``out`` (int32, float32 or uint8); an int32
    output takes neither activation nor bias.

    Parameters
    ----------
    activation : {None, "relu", "gelu"}, optional
        GELU is the erf form (Abramowitz & Stegun 7.1.28 erf).
    bias : ndarray of shape (M,), dtype float32, optional
        C-contiguous.
    out_scale : float, optional
        uint8 output: the requantization scale, finite and positive.
    out_zero : int, optional
        uint8 output: the zero point, in [0, 255].
    float_x : ndarray of shape (K, N), dtype float32, optional
        A float part added before the bias, ``t * scale[m] * x_scale[n] +
        (F @ float_x)[m, n] + bias[m]``: `float_x` (C-contiguous, not
        overlapping ``out``) holds the float activations (the INT8
        product's x before quantization), F the float weights, given as
        dense columns and sparse entries (one of them or both).  Each term
        is one fused multiply-add, the dense columns first in their order,
        then the sparse entries in the order F stores the row, so the bits
        are the same on every ISA.  float32 and uint8 outputs in the
        ``"features"`` layout only.  ``blocksparse.nn`` keeps the outliers
        of an INT8 weight there.
    float_columns : ndarray of shape (nc,), dtype int32, optional
        The dense columns' indices in [0, K); with `float_dense`.
    float_dense : ndarray of shape (M, nc), dtype float32, optional
        C-contiguous: their values, column c of F at ``float_columns[c]``.
    float_weight : PackedWeight, optional
        The sparse entries: float32 of shape (M, K) in (1, 1) blocks.
    """

    __slots__ = ()


class QuantizedActivations:
    """uint8 activations with one scale and zero point per token.

    ``x ~ (q - zero) * scale`` per token.  In the ``"features"`` layout
    (the encoder's), ``q`` is (features, tokens) and token t is column t;
    in the ``"tokens"`` layout ``q`` is (tokens, features).  The encoder's
    fused kernels (LayerNorm, attention) make them so that an INT8 Linear
    layer needs no separate quantization pass.

    Parameters
    ----------
    q : ndarray of uint8
    scale : ndarray of shape (tokens,), dtype float32, or None
        None only for an int32 product.
    zero : ndarray of shape (tokens,), dtype int32, or None
        None means zero points of 0 (no correction term).
    """

    __slots__ = ("q", "scale", "zero")

    def __init__(self, q, scale, zero):
        self.q, self.scale, self.zero = q, scale, zero

    @classmethod
    def empty(cls, features, tokens):
        """Uninitialized (features, tokens) codes with per-token parameters."""
        return cls(np.empty((features, tokens), np.uint8), np.empty(tokens, np.float32),
                   np.empty(tokens, np.int32))

    def dequantize(self):
        """float32 (features, tokens) values the uint8 codes stand for."""
        return ((self.q.astype(np.float32) - self.zero[None, :].astype(np.float32))
                * self.scale[None, :])


def dense_density(blocksize):
    """The density from which :class:`~blocksparse.QuantizedMatrix` packs dense.

    Parameters
    ----------
    blocksize : tuple of int
        The weight's (R, C).

    Returns
    -------
    float
        ``BLOCKSPARSE_DENSE_DENSITY`` if it is set to a number (``0`` packs
        every INT8 weight dense, anything above 1 none), else the measured
        :data:`DENSE_DENSITY` of the blocksize.  A value that is not a
        number is ignored with a :class:`RuntimeWarning`.
    """
    measured = DENSE_DENSITY.get(tuple(blocksize), DENSE_DENSITY[None])
    value = os.environ.get("BLOCKSPARSE_DENSE_DENSITY", "").strip()
    if not value:
        return measured
    try:
        density = float(value)
    except ValueError:
        density = float("nan")
    if not density >= 0:
        warnings.warn(f"BLOCKSPARSE_DENSE_DENSITY={value!r} must be a density from 0 up; "
                      f"ignored (the measured {measured} is used)", RuntimeWarning,
                      stacklevel=2)
        return measured
    return density


def matmul(packed, x, out, *, layout, epilogue=None):
    """``out = W @ x`` with a packed weight, on the ISA variant and threads in use.

    Parameters
    ----------
    packed : PackedWeight
        Weight W of shape (M, K).
    x : ndarray or QuantizedActivations
        For a float weight, a C-contiguous aligned array of the weight's
        dtype; for an int8 weight, :class:`QuantizedActivations` with
        C-contiguous uint8 codes.  (K, N) or (N, K) by `layout`.
    out : ndarray
        C-contiguous, writable, (M, N) or (N, M) by `layout`, not
        overlapping `x`; fully overwritten.  Float weights: the weight's
        dtype.  int8 weights: int32 (exact), float32 or uint8.
    layout : {"features", "tokens"}
        ``"features"``: ``x`` (K, N), ``out`` (M, N), the ``W @ X`` form;
        ``"tokens"``: ``x`` (N, K), ``out`` (N, M), the Linear form
        ``x @ W.T``.
    epilogue : Epilogue, optional
        int8 weights only; none means no bias or activation.

    Returns
    -------
    ndarray
        `out`.

    Raises
    ------
    ValueError, TypeError
        For operands of the wrong shape, dtype or memory layout.
    RuntimeError
        If the forced ISA variant is not available.
    """
    try:
        tokens = LAYOUTS[layout]
    except (KeyError, TypeError):
        raise ValueError(f"layout must be 'features' or 'tokens', got {layout!r}") from None
    isa = _config._active_isa()
    if _config._State.verbose and packed.dtype == np.int8:
        M, K = packed.shape
        N = out.shape[0] if tokens else out.shape[1]
        act = None if epilogue is None else epilogue.activation
        _config._log_kernel(packed.kernel_name(isa), isa,
                            f"M={M} K={K} N={N} {out.dtype} act={act}")
    return _kernels.matmul(isa, packed, x, out, tokens, epilogue, _config.get_num_threads())
