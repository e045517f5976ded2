"""BlockSparseMatrix: block-CSR storage with SciPy interop and fast products."""
import numbers
import operator

import numpy as np
import scipy.sparse as sp

from . import _kernels, _pack, _packed
from ._memory import ensure_available
from ._protocol import NumpyProtocol
from ._scipy_api import ScipyMethods

__all__ = ["BlockSparseMatrix", "issparse_block"]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int8))
_INT32_MAX = np.iinfo(np.int32).max  # tests lower this to force int64 indices


def _check_blocksize(blocksize, shape=None, name="blocksize"):
    try:
        R, C = (operator.index(b) for b in blocksize)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of positive integers (R, C), got {blocksize!r}") \
            from None
    if R < 1 or C < 1:
        raise ValueError(f"{name} must be a pair of positive integers (R, C), got {blocksize!r}")
    if shape is not None and (shape[0] % R or shape[1] % C):
        raise ValueError(f"{name} {(R, C)} does not divide the shape {tuple(shape)}: "
                         f"need M % R == 0 and K % C == 0")
    return R, C


def _check_shape(shape, name="shape"):
    try:
        M, K = (operator.index(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of non-negative integers, got {shape!r}") from None
    if M < 0 or K < 0:
        raise ValueError(f"{name} must be a pair of non-negative integers, got {shape!r}")
    return M, K


def _check_dtype(dtype, name="dtype"):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} {dtype!r} is not a NumPy dtype") from None
    dt = dt.newbyteorder("=") if dt.byteorder not in "=|" else dt
    if dt.kind == "c":
        raise TypeError(f"{name} {dt} is not supported: complex values cannot be stored "
                        f"(BlockSparseMatrix stores real float32, float64 or int8)")
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} {dt} is not supported; BlockSparseMatrix stores float32, "
                        f"float64 or int8 (pass dtype= to convert)")
    return dt


def _default_blocksize(shape):
    """(4, 1) (the paper's pattern) where it divides the shape, else (1, 1)."""
    return (4, 1) if shape[0] % 4 == 0 else (1, 1)


def _index_dtype(*maxima):
    return np.int32 if max(maxima, default=0) <= _INT32_MAX else np.int64


def _cast_values(a, dtype, name):
    """Cast to a storage dtype; int8 only from values that fit exactly."""
    a = np.asarray(a)
    if a.dtype.kind == "c":
        raise TypeError(f"{name} is complex; the imaginary part cannot be stored")
    if dtype == np.int8 and a.dtype != np.int8:
        if a.dtype.kind not in "iubf" or a.size and (
                not np.all(np.isfinite(a)) if a.dtype.kind == "f" else False):
            raise ValueError(f"{name} has values that int8 cannot represent")
        if a.size and (a.min() < -128 or a.max() > 127 or
                       (a.dtype.kind == "f" and np.any(a != np.round(a)))):
            raise ValueError(f"{name} has values that int8 cannot represent exactly "
                             f"(use blocksparse.quantize for scaled INT8)")
    return a.astype(dtype)


def issparse_block(x):
    """True if `x` is a :class:`BlockSparseMatrix`."""
    return isinstance(x, BlockSparseMatrix)


class BlockSparseMatrix(ScipyMethods, NumpyProtocol):
    """A 2-D matrix stored in block compressed sparse row (block-CSR) form.

    The layout is exactly SciPy's BSR: a matrix of shape ``(M, K)`` is cut
    into blocks of shape ``blocksize = (R, C)``; block row ``i`` owns the
    blocks ``indptr[i]:indptr[i+1]``, block ``j`` sits in block column
    ``indices[j]`` and holds ``data[j]`` of shape ``(R, C)``.

    Which axis a block runs along: a weight has PyTorch's Linear shape
    ``(out_features, in_features) = (M, K)``.  ``blocksize=(4, 1)`` is four
    consecutive *output rows* in one input column (the paper's "4x1");
    ``blocksize=(1, 4)`` is four consecutive weights of one row along the
    *reduction axis* K.  Other projects use "4x1" for the opposite.

    Constructor forms::

        BlockSparseMatrix(D, blocksize=(R, C))          # dense 2-D array
        BlockSparseMatrix(S, blocksize=None)            # any scipy.sparse matrix/array
        BlockSparseMatrix((data, indices, indptr), shape=(M, K))
        BlockSparseMatrix((M, K), blocksize=(R, C), dtype=...)   # empty
        BlockSparseMatrix(other_block_sparse_matrix)

    From a dense array, every block with a non-zero (or NaN) element is
    stored.  The default blocksize is taken from a BSR input, else
    ``(4, 1)`` where 4 divides M, else ``(1, 1)``.

    Parameters
    ----------
    arg : ndarray, scipy.sparse matrix or array, tuple or BlockSparseMatrix
        The source, see above.
    shape : tuple of int, optional
        ``(M, K)``; required for the ``(data, indices, indptr)`` form.
    blocksize : tuple of int, optional
        ``(R, C)``, must divide the shape.
    dtype : dtype, optional
        float32, float64 or int8.  Integer values outside int8 or
        non-integers raise instead of wrapping.
    copy : bool, optional
        Ignored: arrays handed in are always copied, so the caller's arrays
        are never modified and the matrix's own arrays stay read-only.

    Attributes
    ----------
    shape, ndim, dtype, blocksize, nnz, nnzb, density, data, indices, indptr

    Notes
    -----
    ``data``, ``indices`` and ``indptr`` are read-only; the products read a
    packed copy of them, made and checked once by the first product (see
    "Packed weights" in the design notes).  Products follow NumPy's
    result dtypes, with two documented exceptions: int8 matrices times uint8
    or int8 operands give exact int32 (NumPy would wrap around in int8 or
    int16), and float16 operands are computed and returned in float32.  Slicing, element
    assignment and sparse + sparse are not supported; convert with
    :meth:`to_scipy` for those.

    SciPy's methods (``tocsr``, ``tocoo``, ``tobsr``, ``multiply``, ``abs``,
    ``count_nonzero``, ``eliminate_zeros``, ``max``, ``min``, ``mean``,
    ``sum``) and products with SciPy sparse operands on either side follow
    ``scipy.sparse.bsr_array``: a BlockSparseMatrix where SciPy keeps a
    ``bsr_array`` of the same structure, SciPy's type elsewhere (see
    "SciPy's methods" in the formats page).  ``X`` of shape ``(..., K, N)``
    (``W @ X``) or ``(..., N, M)`` (``X @ W``) multiplies each matrix of
    the stack, exactly as its own 2-D product.

    With NumPy: ``np.dot`` and ``np.matmul`` compute the product (so
    ``X @ W`` works for an ndarray ``X``); ``np.asarray(W)``, other ufuncs
    and NumPy functions, and comparisons (``W == V``) raise
    :class:`TypeError` naming :meth:`toarray` and :meth:`to_scipy`, instead
    of building object arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from blocksparse import BlockSparseMatrix
    >>> D = np.zeros((4, 4), dtype=np.float32)
    >>> D[0:2, 2] = 1.0
    >>> W = BlockSparseMatrix(D, blocksize=(2, 1))
    >>> W.nnzb, W.blocksize
    (1, (2, 1))
    >>> (W @ np.ones(4, dtype=np.float32)).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """

    def __init__(self, arg, shape=None, blocksize=None, dtype=None, copy=False):
        if dtype is not None:
            dtype = _check_dtype(dtype)
        if isinstance(arg, BlockSparseMatrix):
            self._set(arg.data, arg.indices, arg.indptr, arg.shape, arg.blocksize)
            if blocksize is not None and _check_blocksize(blocksize) != arg.blocksize:
                other = BlockSparseMatrix(arg.to_scipy(), blocksize=blocksize)
                self._set(other.data, other.indices, other.indptr, other.shape, other.blocksize)
            if dtype is not None and dtype != self.dtype:
                self._set(_cast_values(self.data, dtype, "data"), self.indices, self.indptr,
                          self.shape, self.blocksize)
            return
        if sp.issparse(arg):
            self._from_scipy(arg, blocksize, dtype)
            return
        if isinstance(arg, tuple) and len(arg) == 2 and all(
                isinstance(s, numbers.Integral) for s in arg):
            M, K = _check_shape(arg, "shape")
            R, C = _check_blocksize(blocksize or _default_blocksize((M, K)), (M, K))
            dt = dtype or np.dtype(np.float64)
            self._set(np.zeros((0, R, C), dt), np.zeros(0, np.int32),
                      np.zeros(M // R + 1, np.int32), (M, K), (R, C))
            return
        if isinstance(arg, tuple):
            if len(arg) != 3:
                raise TypeError("the tuple form is (data, indices, indptr); got a tuple of "
                                f"length {len(arg)}")
            self._from_triple(*arg, shape=shape, blocksize=blocksize, dtype=dtype)
            return
        self._from_dense(arg, blocksize, dtype)

    # ---- construction ----------------------------------------------------

    def _set(self, data, indices, indptr, shape, blocksize):
        """Install already validated arrays (copied by the caller if needed)."""
        self._shape = (int(shape[0]), int(shape[1]))
        self._blocksize = (int(blocksize[0]), int(blocksize[1]))
        for a in (data, indices, indptr):
            a.flags.writeable = False
        self._data, self._indices, self._indptr = data, indices, indptr
        self._T = None
        self._packed = {}  # dtype -> PackedWeight, made by the first product that needs it

    @classmethod
    def _from_parts(cls, data, indices, indptr, shape, blocksize):
        """Build from arrays the package made itself (no copy)."""
        self = cls.__new__(cls)
        idt = _index_dtype(data.shape[0], shape[1] // max(blocksize[1], 1))
        self._set(np.ascontiguousarray(data), np.ascontiguousarray(indices, dtype=idt),
                  np.ascontiguousarray(indptr, dtype=idt), shape, blocksize)
        return self

    @classmethod
    def _from_packed(cls, packed):
        """A matrix over the arrays of a PackedWeight (read-only views, no copy)."""
        self = cls.__new__(cls)
        self._set(packed.data[...], packed.indices[...], packed.indptr[...], packed.shape,
                  packed.blocksize)
        self._packed[packed.dtype] = packed
        return self

    def _from_dense(self, arg, blocksize, dtype):
        if isinstance(arg, np.matrix):
            arg = np.asarray(arg)
        a = np.asarray(arg)
        if a.dtype == object:
            raise TypeError("cannot build a BlockSparseMatrix from an object array")
        if a.ndim != 2:
            raise ValueError(f"a dense input must be 2-D, got {a.ndim}-D with shape {a.shape}")
        dt = dtype or _check_dtype(a.dtype, "the input's dtype")
        M, K = a.shape
        R, C = _check_blocksize(blocksize or _default_blocksize((M, K)), (M, K))
        values = _cast_values(a, dt, "the input")
        blocks = values.reshape(M // R, R, K // C, C).transpose(0, 2, 1, 3)
        keep = np.any(blocks != 0, axis=(2, 3)) if blocks.size else \
            np.zeros((M // R, K // C), dtype=bool)
        brow, bcol = np.nonzero(keep)
        indptr = np.zeros(M // R + 1, dtype=np.int64)
        np.cumsum(np.bincount(brow, minlength=M // R), out=indptr[1:])
        idt = _index_dtype(brow.size, K // C)
        self._set(np.ascontiguousarray(blocks[brow, bcol]), bcol.astype(idt),
                  indptr.astype(idt), (M, K), (R, C))

    def _from_scipy(self, S, blocksize, dtype):
        if S.ndim != 2:
            raise ValueError(f"a scipy.sparse input must be 2-D, got {S.ndim}-D")
        if blocksize is None:
            blocksize = S.blocksize if S.format == "bsr" else _default_blocksize(S.shape)
        R, C = _check_blocksize(blocksize, S.shape)
        dt = dtype or _check_dtype(S.dtype, "the input's dtype")
        # every index is checked before anything is converted (scipy's C++ conversions
        # trust them), and nothing is allocated by the declared shape alone
        from ._scipy_input import blocks_from_scipy
        data, indices, indptr = blocks_from_scipy(S, (R, C))
        data = _cast_values(data, dt, "the input's data")
        idt = _index_dtype(data.shape[0], S.shape[1] // C)
        self._set(np.ascontiguousarray(data), indices.astype(idt), indptr.astype(idt),
                  S.shape, (R, C))

    def _from_triple(self, data, indices, indptr, shape, blocksize, dtype):
        if shape is None:
            raise ValueError("shape is required with the (data, indices, indptr) form")
        M, K = _check_shape(shape)
        data = np.asarray(data)
        if data.dtype == object:
            raise TypeError("data must be a numeric array, got an object array")
        if data.ndim != 3:
            raise ValueError(f"data must have shape (nnzb, R, C), got {data.ndim}-D "
                             f"shape {data.shape}")
        bs = tuple(data.shape[1:]) if blocksize is None else blocksize
        if bs == (0, 0) or 0 in bs:
            raise ValueError(f"data has zero-size blocks {data.shape[1:]}; give blocksize")
        R, C = _check_blocksize(bs, (M, K))
        if data.shape[1:] != (R, C):
            raise ValueError(f"data blocks have shape {data.shape[1:]} but blocksize is {(R, C)}")
        dt = dtype or _check_dtype(data.dtype, "data's dtype")
        idx = []
        for name, a in (("indices", indices), ("indptr", indptr)):
            a = np.asarray(a)
            if a.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
            idx.append(a)
        indices, indptr = idx
        idt = _index_dtype(data.shape[0], K // C)
        for name, a in (("indices", indices), ("indptr", indptr)):
            if a.size and (a.min() < 0 or a.max() > np.iinfo(idt).max):
                raise ValueError(f"{name} has values outside [0, {np.iinfo(idt).max}]")
        self._set(np.array(_cast_values(data, dt, "data"), order="C"),
                  indices.astype(idt), indptr.astype(idt), (M, K), (R, C))
        self.check_format(full_check=True)

    # ---- attributes --------------------------------------------------------

    @property
    def shape(self):
        """Tuple ``(M, K)``."""
        return self._shape

    @property
    def ndim(self):
        """Always 2."""
        return 2

    @property
    def dtype(self):
        """Element dtype: float32, float64 or int8."""
        return self._data.dtype

    @property
    def blocksize(self):
        """Block shape ``(R, C)``: R consecutive rows, C consecutive columns."""
        return self._blocksize

    @property
    def data(self):
        """ndarray of shape (nnzb, R, C): the stored blocks (read-only)."""
        return self._data

    @property
    def indices(self):
        """ndarray of shape (nnzb,): block column of each stored block (read-only)."""
        return self._indices

    @property
    def indptr(self):
        """ndarray of shape (M/R + 1,): block-row offsets into data (read-only)."""
        return self._indptr

    @property
    def nnzb(self):
        """Number of stored blocks."""
        return int(self._data.shape[0])

    @property
    def nnz(self):
        """Number of stored elements (explicit zeros inside blocks included)."""
        return int(self._data.size)

    @property
    def density(self):
        """Stored blocks / all blocks (0.0 for a matrix with no blocks)."""
        R, C = self._blocksize
        total = (self._shape[0] // R) * (self._shape[1] // C)
        return self.nnzb / total if total else 0.0

    @property
    def T(self):
        """The transpose, see :meth:`transpose`."""
        return self.transpose()

    def __repr__(self):
        R, C = self._blocksize
        return (f"<BlockSparseMatrix of shape {self._shape}, dtype {self.dtype}, "
                f"blocksize ({R}, {C}), {self.nnzb} stored blocks ({self.density:.1%} dense)>")

    def __len__(self):
        raise TypeError("sparse matrix length is ambiguous; use shape or nnzb")

    def __bool__(self):
        if self._shape == (1, 1):
            return bool(self.toarray()[0, 0])
        raise ValueError("the truth value of a BlockSparseMatrix with more than one element "
                         "is ambiguous")

    # ---- validation --------------------------------------------------------

    def check_format(self, full_check=False):
        """Check the block-CSR invariants.

        Parameters
        ----------
        full_check : bool, optional
            Also scan every index (O(nnzb)): range, sortedness, duplicates.

        Raises
        ------
        ValueError
            Naming the array and the broken invariant.
        """
        M, K = self._shape
        R, C = self._blocksize
        nbr, nbc = M // R, K // C
        indptr, indices, data = self._indptr, self._indices, self._data
        if indptr.shape != (nbr + 1,):
            raise ValueError(f"indptr must have length M/R + 1 = {nbr + 1}, got {indptr.size}")
        if data.shape[1:] != (R, C) or indices.shape != (data.shape[0],):
            raise ValueError(f"indices has {indices.size} entries but data holds "
                             f"{data.shape[0]} blocks")
        if indptr[0] != 0 or indptr[-1] != data.shape[0]:
            raise ValueError(f"indptr must run from 0 to nnzb = {data.shape[0]}, got "
                             f"{int(indptr[0])} .. {int(indptr[-1])}")
        if not full_check:
            return
        if np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        if indices.size and (indices.min() < 0 or indices.max() >= nbc):
            raise ValueError(f"indices must lie in [0, K/C) = [0, {nbc})")
        if indices.size > 1:
            step = np.diff(indices.astype(np.int64))
            # a block row boundary may restart the column order
            starts = np.zeros(indices.size - 1, dtype=bool)
            inner = indptr[1:-1]
            inner = inner[(inner > 0) & (inner < indices.size)]
            starts[inner - 1] = True
            if np.any((step <= 0) & ~starts):
                if np.any((step == 0) & ~starts):
                    raise ValueError("indices has duplicate blocks within a block row")
                raise ValueError("indices must be sorted within each block row")

    # ---- conversions -------------------------------------------------------

    def toarray(self, order=None, out=None):
        """Dense ndarray of shape (M, K) with the matrix's dtype.

        Parameters
        ----------
        order : {"C", None}, optional
            Only C order is produced.
        out : ndarray, optional
            C-contiguous (M, K) array of the same dtype to write into.
        """
        M, K = self._shape
        R, C = self._blocksize
        if out is None:
            ensure_available(M * K * self.dtype.itemsize, f"the dense {(M, K)} array")
            out = np.zeros((M, K), dtype=self.dtype)
        else:
            if out.shape != (M, K) or out.dtype != self.dtype or not out.flags.c_contiguous:
                raise ValueError(f"out must be a C-contiguous {self.dtype} array of shape {(M, K)}")
            out.fill(0)
        if self.nnzb:
            view = out.reshape(M // R, R, K // C, C)
            brow = _pack.block_rows(self._indptr)
            view[brow, :, self._indices, :] = self._data
        return out

    todense = toarray

    def to_scipy(self):
        """The same matrix as a :class:`scipy.sparse.bsr_array` (arrays copied)."""
        return sp.bsr_array((self._data.copy(), self._indices.copy(), self._indptr.copy()),
                            shape=self._shape, blocksize=self._blocksize)

    @classmethod
    def from_scipy(cls, S, blocksize=None, dtype=None):
        """Build from any scipy.sparse matrix or array (see the class docstring)."""
        if not sp.issparse(S):
            raise TypeError(f"S must be a scipy.sparse matrix or array, got {type(S).__name__}")
        return cls(S, blocksize=blocksize, dtype=dtype)

    def copy(self):
        """A deep copy."""
        return BlockSparseMatrix._from_parts(self._data.copy(), self._indices.copy(),
                                             self._indptr.copy(), self._shape, self._blocksize)

    def astype(self, dtype, copy=True):
        """Convert the stored values to float32, float64 or int8.

        Conversion to int8 requires integral values in [-128, 127]; use
        :func:`blocksparse.quantize` for scaled INT8 weights.
        """
        dt = _check_dtype(dtype)
        if dt == self.dtype:
            return self.copy() if copy else self
        return BlockSparseMatrix._from_parts(_cast_values(self._data, dt, "data"),
                                             self._indices, self._indptr, self._shape,
                                             self._blocksize)

    def transpose(self, axes=None, copy=False):
        """The transpose, of shape (K, M) and blocksize (C, R).

        Computed once and cached; the transpose of the transpose is the
        original object, so ``x @ W.T`` uses the Linear-form kernel on W.
        """
        if axes is not None and tuple(axes) != (1, 0):
            raise ValueError("axes must be None or (1, 0)")
        if self._T is None:
            M, K = self._shape
            R, C = self._blocksize
            # the transpose's offsets are sized by K, which no stored block backs
            ensure_available(16 * (K // C + 1), f"the transpose of a {(M, K)} matrix")
            brow = _pack.block_rows(self._indptr)
            bcol = self._indices.astype(np.int64)
            order = np.lexsort((brow, bcol))
            indptr = np.zeros(K // C + 1, dtype=np.int64)
            np.cumsum(np.bincount(bcol, minlength=K // C), out=indptr[1:])
            data = np.ascontiguousarray(self._data[order].transpose(0, 2, 1))
            T = BlockSparseMatrix._from_parts(data, brow[order], indptr, (K, M), (C, R))
            T._T = self
            self._T = T
        return self._T

    # ---- arithmetic --------------------------------------------------------

    def _with_data(self, data):
        out = BlockSparseMatrix._from_parts(np.ascontiguousarray(data), self._indices,
                                            self._indptr, self._shape, self._blocksize)
        return out

    def _scalar_op(self, other, op, name):
        if isinstance(other, (BlockSparseMatrix, np.ndarray)) and np.ndim(other) > 0 or \
                sp.issparse(other):
            raise TypeError(f"{name} is supported with scalars only; use multiply() for the "
                            f"elementwise product, or convert with toarray() or to_scipy() "
                            f"for other elementwise operations")
        if not isinstance(other, (numbers.Number, np.generic)) and np.ndim(other) != 0:
            return NotImplemented
        result = op(self._data, other)
        if result.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} by {other!r} gives dtype {result.dtype}, which a "
                            f"BlockSparseMatrix cannot store")
        if result.dtype == np.int8:
            exact = op(self._data.astype(np.int64), int(other))
            if not np.array_equal(exact, result):
                raise OverflowError(f"{name} by {other!r} overflows int8")
        return self._with_data(result)

    def __mul__(self, other):
        return self._scalar_op(other, np.multiply, "multiplication")

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._scalar_op(other, np.true_divide, "division")

    def __neg__(self):
        if self.dtype == np.int8 and self.nnz and self._data.min() == -128:
            raise OverflowError("negation overflows int8 (the matrix holds -128)")
        return self._with_data(-self._data)

    def __pos__(self):
        return self.copy()

    def sum(self, axis=None, dtype=None):
        """Sum of the elements, like :meth:`numpy.ndarray.sum`.

        Parameters
        ----------
        axis : {None, 0, 1, -1, -2}, optional
            None sums everything (a NumPy scalar), 0 gives shape (K,),
            1 gives shape (M,).
        dtype : dtype, optional
            Accumulator and result dtype; NumPy's default otherwise (int8
            sums to int64).
        """
        res_dtype = np.dtype(dtype) if dtype is not None else np.sum(
            np.zeros(1, self.dtype)).dtype
        axis = _check_axis(axis)
        d = self._data.astype(res_dtype)
        if axis is None:
            return d.sum(dtype=res_dtype)
        return self._axis_totals(d, axis)

    def _axis_totals(self, values, axis):
        """Totals over axis 1 (shape (M,)) or axis 0 (shape (K,)) of per-element
        `values` of shape (nnzb, R, C), in their dtype (implicit zeros add 0)."""
        M, K = self._shape
        R, C = self._blocksize
        if axis == 1:
            out = np.zeros((M // R, R), dtype=values.dtype)
            if self.nnzb:
                np.add.at(out, _pack.block_rows(self._indptr), values.sum(axis=2))
            return out.reshape(M)
        out = np.zeros((K // C, C), dtype=values.dtype)
        if self.nnzb:
            np.add.at(out, self._indices, values.sum(axis=1))
        return out.reshape(K)

    # ---- products ------------------------------------------------------------

    def __matmul__(self, other):
        if isinstance(other, BlockSparseMatrix) or sp.issparse(other):
            return self._sparse_matmul(other, left=True)  # SciPy's product and result type
        X = _as_operand(other, "X", stacked=True)
        if X.ndim == 1:
            return self._matmul(X[:, None], "X").reshape(self._shape[0])
        if X.ndim == 2:
            return self._matmul(X, "X")
        # a stack (..., K, N): one product per matrix, written into one result
        M, K = self._shape
        if X.shape[-2] != K:
            raise ValueError(f"matmul: X has {X.shape[-2]} rows but the matrix has {K} columns "
                             f"(shapes {self._shape} and {X.shape})")
        N = X.shape[-1]
        Y = _result(self, X, X.shape[:-2] + (M, N))
        B = int(np.prod(X.shape[:-2], dtype=np.int64))
        for Xi, Yi in zip(X.reshape((B, K, N)), Y.reshape((B, M, N))):
            _product(self, Xi, False, out=Yi)
        return Y

    def __rmatmul__(self, other):
        if sp.issparse(other):
            return self._sparse_matmul(other, left=False)
        X = _as_operand(other, "X", stacked=True)
        # X @ self == (self.T).T applied in the Linear form: Y (N, K) = X (N, M) @ V.T, V = self.T
        V = self.transpose()
        if X.ndim == 1:
            return V._matmul_linear(X[None, :], "X").reshape(self._shape[1])
        # a stack (..., N, M): every row is its own token, so one product of all rows
        # gives each matrix's product exactly (the kernels compute a token alone)
        if X.ndim == 2:
            return V._matmul_linear(X, "X")
        Y = V._matmul_linear(_rows(X), "X")
        return Y.reshape(X.shape[:-1] + (self._shape[1],))

    def dot(self, other):
        """Same as ``self @ other``."""
        return self @ other

    def _matmul(self, X, name):
        """self (M, K) @ X (K, N)."""
        M, K = self._shape
        if X.shape[0] != K:
            raise ValueError(f"matmul: {name} has {X.shape[0]} rows but the matrix has "
                             f"{K} columns (shapes {self._shape} and {X.shape})")
        return _product(self, X, transposed=False)

    def _matmul_linear(self, x, name):
        """x (N, K) @ self.T: the Linear-layer form, result (N, M)."""
        M, K = self._shape
        if x.shape[1] != K:
            raise ValueError(f"matmul: {name} has {x.shape[1]} columns but {K} are needed "
                             f"(shapes {x.shape} and {self._shape[::-1]})")
        return _product(self, x, transposed=True)

    # ---- pickling ------------------------------------------------------------

    def __reduce__(self):
        return (_rebuild, (self._data, self._indices, self._indptr, self._shape,
                           self._blocksize))

    # ---- kernel views --------------------------------------------------------

    def _packed_as(self, dtype):
        """The PackedWeight of this matrix with `dtype` values, made once."""
        packed = self._packed.get(dtype)
        if packed is None:
            like = next(iter(self._packed.values()), None)
            packed = _packed.PackedWeight.from_matrix(self, dtype, like=like)
            self._packed[dtype] = packed
        return packed


def _check_axis(axis):
    """None, or 0 / 1 for an axis of a 2-D matrix (negative axes counted from the end)."""
    if axis is None:
        return None
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be None or an integer, got {axis!r}") from None
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis {axis} is out of bounds for a 2-D matrix")
    return axis % 2


def _rebuild(data, indices, indptr, shape, blocksize):
    return BlockSparseMatrix((data, indices, indptr), shape=shape, blocksize=blocksize)


def _as_operand(X, name, stacked=False):
    """X as an ndarray of a product's dtypes; 1-D or 2-D (any ndim >= 1 if `stacked`)."""
    if isinstance(X, np.matrix):
        X = np.asarray(X)
    X = np.asarray(X)
    if X.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an object array")
    if X.dtype.kind not in "iubf":
        raise TypeError(f"{name} has unsupported dtype {X.dtype}")
    if stacked and X.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-D array")
    if not stacked and X.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got {X.ndim}-D with shape {X.shape}")
    if X.dtype.byteorder not in "=|":
        X = X.astype(X.dtype.newbyteorder("="))
    return X


def _rows(X):
    """A stack (..., N, K) as one (rows, K) array: a view when the layout allows."""
    return X.reshape(int(np.prod(X.shape[:-1], dtype=np.int64)), X.shape[-1])


def _result_dtype(W, X):
    """dtype of W @ X: exact int32 for int8 W times uint8/int8 X, else the float result."""
    if W.dtype == np.int8 and X.dtype.kind in "iub":
        if X.dtype not in (_U8, _I8):
            raise TypeError(f"int8 matrices multiply uint8 or int8 operands exactly (int32 "
                            f"result); got {X.dtype}: convert X or use W.astype(np.float32)")
        if W.shape[1] > _kernels.MAX_K_INT8:
            raise ValueError(f"K = {W.shape[1]} is too large for exact int32 accumulation "
                             f"(at most {_kernels.MAX_K_INT8})")
        return _I32
    return _float_result(W.dtype, X.dtype)


def _result(W, X, shape):
    """An uninitialized result array of W @ X's dtype, its memory checked first."""
    dtype = _result_dtype(W, X)
    ensure_available(int(np.prod(shape, dtype=np.float64)) * dtype.itemsize,
                     f"the {shape} result")
    return np.empty(shape, dtype=dtype)


def _product(W, X, transposed, out=None):
    """Dispatch a product to the float or INT8 kernels.

    transposed=False: W (M, K) @ X (K, N) -> (M, N)
    transposed=True:  X (N, K) @ W.T      -> (N, M)

    `out`: a C-contiguous result of the right dtype and shape (from :func:`_result`).
    """
    M, K = W.shape
    N = X.shape[1] if not transposed else X.shape[0]
    Y = _result(W, X, (N, M) if transposed else (M, N)) if out is None else out
    if Y.dtype == _I32:
        return _int8_product(W, X, transposed, Y)
    if Y.size == 0:
        return Y
    if K == 0 or W.nnzb == 0:
        Y.fill(0)
        return Y
    return _packed.matmul(W._packed_as(Y.dtype), _kernel_operand(X, Y.dtype), Y,
                          layout=_LAYOUT[transposed])


def _int8_product(W, X, transposed, Y):
    """int8 W times uint8/int8 X, exact in int32 (NumPy would wrap in int8/int16)."""
    if X.dtype == np.uint8:
        Xu, zero = X, None
    else:
        # shift to uint8 and subtract 128 * rowsum(W) in the epilogue
        Xu, zero = (X.view(np.uint8) ^ np.uint8(0x80)), 128
    N = Y.shape[0] if transposed else Y.shape[1]
    if Y.size == 0:
        return Y
    x = _packed.QuantizedActivations(_kernel_operand(Xu, Xu.dtype), None,
                                     None if zero is None else np.full(N, zero, np.int32))
    return _packed.matmul(W._packed_as(_I8), x, Y, layout=_LAYOUT[transposed])


_F32, _F64, _I8 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int8)
_U8, _I32 = np.dtype(np.uint8), np.dtype(np.int32)
_LAYOUT = {False: "features", True: "tokens"}  # transposed -> layout of _packed.matmul
_FLOAT_RESULT = {}  # (W.dtype, X.dtype) -> dtype of a float product


def _float_result(wdt, xdt):
    """float32 or float64: NumPy's promotion, float16 computed in float32."""
    key = (wdt, xdt)
    dtype = _FLOAT_RESULT.get(key)
    if dtype is None:
        dtype = np.result_type(wdt, xdt)
        if dtype.kind != "f":
            raise TypeError(f"no product for dtypes {wdt} and {xdt}")
        dtype = _FLOAT_RESULT[key] = _F64 if dtype.itemsize > 4 else _F32
    return dtype


def _kernel_operand(X, dtype):
    """X as a C-contiguous aligned array of `dtype`, copied only if it is not one."""
    if X.dtype == dtype and X.flags.c_contiguous and X.flags.aligned:
        return X
    return np.require(X, dtype=dtype, requirements="CA")
