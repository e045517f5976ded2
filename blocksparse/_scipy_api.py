"""The scipy.sparse methods of BlockSparseMatrix, with the semantics of ``bsr_array``.

A :class:`~blocksparse.BlockSparseMatrix` stands for a ``scipy.sparse.bsr_array``
here: where SciPy's ``bsr_array`` keeps its own structure and dtype (``abs``,
``multiply`` by a scalar, ``eliminate_zeros``) the result is a
BlockSparseMatrix; where SciPy returns another type (``csr_array``,
``coo_array``, a dense ndarray or scalar, the result of a sparse product) the
same type comes back, computed by SciPy on :meth:`to_scipy`'s copy.  Integer
results are exact: where SciPy's int8 arithmetic would wrap around, the
product is computed in int32 and an elementwise result that does not fit
int8 raises :class:`OverflowError` (as ``-W`` does for -128).
"""
import numbers
import sys

import numpy as np
import scipy.sparse as sp

__all__ = ["ScipyMethods", "called_by_scipy_product"]


def _is_scalar(x):
    return isinstance(x, (numbers.Number, np.generic)) or (
        isinstance(x, np.ndarray) and x.ndim == 0)


def called_by_scipy_product():
    """True when ``__array__`` was asked for by scipy.sparse's product dispatch.

    ``S @ W`` (S a scipy.sparse array or matrix) first tries
    ``np.asanyarray(W)``; a 0-d object array makes SciPy return
    NotImplemented, so that Python calls ``W.__rmatmul__(S)``.  The frames:
    0 here, 1 ``__array__``, 2 its Python caller (``np.asanyarray`` is C).
    """
    try:
        frame = sys._getframe(2)
    except ValueError:
        return False
    return frame.f_code.co_name == "_matmul_dispatch" and \
        str(frame.f_globals.get("__name__", "")).startswith("scipy.sparse")


class ScipyMethods:
    """Mixin for BlockSparseMatrix: the scipy.sparse methods (see the module notes)."""

    # ---- conversions ------------------------------------------------------------------

    def tocsr(self, copy=False):
        """The matrix as a :class:`scipy.sparse.csr_array` (explicit zeros of blocks kept).

        Parameters
        ----------
        copy : bool, optional
            Ignored: the result never shares memory with this matrix.
        """
        return self.to_scipy().tocsr()

    def tocoo(self, copy=False):
        """The matrix as a :class:`scipy.sparse.coo_array` (explicit zeros of blocks kept).

        Parameters
        ----------
        copy : bool, optional
            Ignored: the result never shares memory with this matrix.
        """
        return self.to_scipy().tocoo()

    def tobsr(self, blocksize=None, copy=False):
        """The matrix as a :class:`scipy.sparse.bsr_array`, optionally re-blocked.

        Parameters
        ----------
        blocksize : tuple of int, optional
            ``(R, C)`` of the result, which must divide the shape; this
            matrix's own by default.  (4, 1) is four consecutive rows in one
            column, (1, 4) four consecutive columns of one row.
        copy : bool, optional
            Ignored: the result never shares memory with this matrix.

        Returns
        -------
        scipy.sparse.bsr_array
        """
        S = self.to_scipy()
        if blocksize is None or tuple(blocksize) == self.blocksize:
            return S
        from ._matrix import _check_blocksize
        _check_blocksize(blocksize, self.shape)
        return S.tobsr(blocksize=tuple(int(b) for b in blocksize))

    # ---- elementwise --------------------------------------------------------------------

    def multiply(self, other):
        """Elementwise product with a scalar, a dense array or a sparse matrix.

        As ``scipy.sparse.bsr_array.multiply``: a scalar keeps the structure
        (a BlockSparseMatrix, as ``W * c``); a dense array (broadcast as
        NumPy does) gives a ``coo_array`` (or a dense array where SciPy
        gives one); a sparse operand (SciPy's or a BlockSparseMatrix) gives
        a ``bsr_array``.

        Parameters
        ----------
        other : scalar, array_like, scipy.sparse matrix/array or BlockSparseMatrix

        Returns
        -------
        BlockSparseMatrix, scipy.sparse array or ndarray

        Raises
        ------
        OverflowError
            If an int8 result does not fit int8 (SciPy would wrap around).
        ValueError
            If the shapes do not broadcast.
        """
        if _is_scalar(other):
            return self * other
        other = _scipy_operand(other)
        S = self.to_scipy()
        result = S.multiply(other)
        if self.dtype == np.int8 and getattr(result, "dtype", None) == np.int8:
            wide = other.astype(np.int64) if sp.issparse(other) else \
                np.asarray(other, dtype=np.int64)
            exact = S.astype(np.int64).multiply(wide)
            exact = exact.toarray() if sp.issparse(exact) else np.asarray(exact)
            got = result.toarray() if sp.issparse(result) else np.asarray(result)
            if not np.array_equal(got.astype(np.int64), exact):
                raise OverflowError("the elementwise product overflows int8")
        return result

    def __abs__(self):
        if self.dtype == np.int8 and self.nnz and self._data.min() == -128:
            raise OverflowError("abs overflows int8 (the matrix holds -128)")
        return self._with_data(np.abs(self._data))

    def abs(self):
        """Elementwise absolute value, as ``abs(W)``: a BlockSparseMatrix of the same structure.

        Raises
        ------
        OverflowError
            For an int8 matrix holding -128 (SciPy would wrap around to -128).
        """
        return abs(self)

    # ---- counts and reductions ------------------------------------------------------------

    def count_nonzero(self, axis=None):
        """Number of non-zero values, explicit zeros of the stored blocks not counted.

        Parameters
        ----------
        axis : {None, 0, 1, -1, -2}, optional
            None counts all (an int); 0 gives the count per column, shape
            (K,); 1 per row, shape (M,) (as ``csr_array.count_nonzero``;
            SciPy's ``bsr_array`` has no per-axis count).

        Returns
        -------
        int or ndarray of int64

        Notes
        -----
        NaN counts as non-zero, as in :func:`numpy.count_nonzero`.
        """
        from ._matrix import _check_axis
        axis = _check_axis(axis)
        nonzero = self._data != 0
        if axis is None:
            return int(np.count_nonzero(nonzero))
        return self._axis_totals(nonzero.astype(np.int64), axis)

    def eliminate_zeros(self):
        """Drop the stored blocks whose values are all zero, in place (as SciPy does).

        The matrix's values do not change, so a transpose or a quantized
        copy made before stays valid; only ``nnzb`` and the index arrays
        shrink (arrays read from ``data``, ``indices`` and ``indptr`` before
        keep the old structure).  Blocks with a non-zero (or NaN) value are
        kept whole, explicit zeros inside them included.  Do not call it
        while another thread multiplies with this matrix.
        """
        keep = np.any(self._data != 0, axis=(1, 2)) if self.nnzb else np.zeros(0, bool)
        if keep.all():
            return
        from . import _pack
        rows = _pack.block_rows(self._indptr)[keep]
        indptr = np.zeros_like(self._indptr)
        np.cumsum(np.bincount(rows, minlength=indptr.size - 1), out=indptr[1:])
        self._set(np.ascontiguousarray(self._data[keep]), self._indices[keep], indptr,
                  self._shape, self._blocksize)

    def max(self, axis=None, out=None, *, explicit=False):
        """Largest value, implicit zeros included unless `explicit`, as SciPy's ``max``.

        Parameters
        ----------
        axis : {None, 0, 1, -1, -2}, optional
        out : None
            Not supported (as in SciPy); must be None.
        explicit : bool, optional
            Only the stored values (also the explicit zeros of blocks).

        Returns
        -------
        NumPy scalar (axis None) or scipy.sparse.coo_array of shape (K,) or (M,)

        Raises
        ------
        ValueError
            For a matrix with no elements and ``axis=None``.
        """
        return self._reduce("max", axis, out, explicit)

    def min(self, axis=None, out=None, *, explicit=False):
        """Smallest value, implicit zeros included unless `explicit`, as SciPy's ``min``.

        Parameters and results as in :meth:`max`.
        """
        return self._reduce("min", axis, out, explicit)

    def mean(self, axis=None, dtype=None, out=None):
        """Mean over all elements (implicit zeros included), as SciPy's ``mean``.

        Parameters
        ----------
        axis : {None, 0, 1, -1, -2}, optional
        dtype : dtype, optional
            Of the computation and the result; float64 for int8 matrices and
            the matrix's dtype for float ones by default.
        out : None
            Must be None.

        Returns
        -------
        NumPy scalar (axis None) or ndarray of shape (K,) or (M,)

        Raises
        ------
        ValueError
            For a mean over no elements.
        """
        from ._matrix import _check_axis
        axis = _check_axis(axis)
        M, K = self.shape
        if (M * K == 0) if axis is None else (self.shape[axis] == 0):
            raise ValueError(f"mean of a matrix of shape {self.shape} over "
                             f"{'all elements' if axis is None else f'axis {axis}'}: there "
                             f"are no elements to average")
        return self.to_scipy().mean(axis=axis, dtype=dtype, out=out)

    def _reduce(self, name, axis, out, explicit):
        from ._matrix import _check_axis
        axis = _check_axis(axis)
        return getattr(self.to_scipy(), name)(axis=axis, out=out, explicit=explicit)

    # ---- products with scipy.sparse operands ---------------------------------------------------

    def _sparse_matmul(self, other, left):
        """``self @ other`` (`left`) or ``other @ self`` with a sparse operand, by SciPy.

        int8 values are widened to int32 first: SciPy's int8 product would
        wrap around, the package's int8 products are exact in int32.
        """
        S = self.to_scipy()
        other = _scipy_operand(other)
        if S.dtype == np.int8 and other.dtype.kind in "iub":
            S = S.astype(np.int32)
        elif other.dtype == np.int8 and S.dtype.kind in "iub":
            other = other.astype(np.int32)
        return S @ other if left else other @ S


def _scipy_operand(other):
    """A BlockSparseMatrix operand as SciPy's bsr_array; anything else as it is."""
    from ._matrix import BlockSparseMatrix
    return other.to_scipy() if isinstance(other, BlockSparseMatrix) else other
