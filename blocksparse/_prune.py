"""Magnitude pruning to constant-size blocks."""
import numbers

import numpy as np
import scipy.sparse as sp

from ._matrix import SUPPORTED_DTYPES, BlockSparseMatrix, _check_blocksize, _check_dtype

__all__ = ["prune"]


def prune(A, sparsity, blocksize=(4, 1), balanced=False, dtype=None):
    """Remove the blocks of smallest L2 norm.

    Exactly ``round(sparsity * nblocks)`` blocks are removed (per block row
    ``round(sparsity * blocks_per_row)`` with ``balanced=True``); ties in the
    norm are broken by position, lower block index first, so the result is
    deterministic.  The kept blocks are stored even if they are all zero, so
    ``density == 1 - removed / nblocks`` exactly.

    Which axis a block runs along: for a weight of shape (out_features,
    in_features) = (M, K), ``blocksize=(4, 1)`` is four consecutive output
    rows in one input column (the paper's "4x1", the default) and
    ``blocksize=(1, 4)`` four consecutive weights of one row along K.

    Parameters
    ----------
    A : array_like of shape (M, K), scipy.sparse matrix or BlockSparseMatrix
        The weights.  Non-finite values are refused.
    sparsity : float
        Fraction of blocks to remove, in [0, 1].
    blocksize : tuple of int, optional
        Block shape ``(R, C)``; must divide the shape.
    balanced : bool, optional
        Prune every block row to the same number of blocks (balanced rows
        split evenly over threads, as in the paper's per-layer pruning).
    dtype : dtype, optional
        Storage dtype of the result (float32, float64 or int8); the input's
        by default.

    Returns
    -------
    BlockSparseMatrix
        With the requested blocksize.

    Raises
    ------
    ValueError
        If `sparsity` is outside [0, 1], `blocksize` does not divide the
        shape, or `A` has NaN or Inf.
    TypeError
        If `A` is not 2-D numeric data.

    Examples
    --------
    >>> import numpy as np
    >>> import blocksparse
    >>> W = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    >>> P = blocksparse.prune(W, 0.5, blocksize=(4, 1))
    >>> P.nnzb, P.indices.tolist()
    (2, [2, 3])
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1], got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    if sp.issparse(A):  # validated first: scipy's toarray trusts the indices
        A = BlockSparseMatrix(A, blocksize=(1, 1),
                              dtype=None if A.dtype in SUPPORTED_DTYPES else np.float64)
    if isinstance(A, BlockSparseMatrix):
        dense = A.toarray()
    else:
        dense = np.asarray(A)
        if dense.dtype == object or dense.dtype.kind not in "iubf":
            raise TypeError(f"A must be numeric, got dtype {dense.dtype}")
    if dense.ndim != 2:
        raise ValueError(f"A must be 2-D, got {dense.ndim}-D with shape {dense.shape}")
    if dense.dtype.kind == "f" and not np.all(np.isfinite(dense)):
        raise ValueError("A has NaN or Inf values; pruning needs finite weights")
    out_dtype = _check_dtype(dtype if dtype is not None else
                             (dense.dtype if dense.dtype in (np.float32, np.float64, np.int8)
                              else np.float64))
    R, C = _check_blocksize(blocksize, dense.shape)
    keep = _magnitude_keep(dense, sparsity, (R, C), balanced)
    return _from_keep(dense, keep, (R, C), out_dtype)


def _drop_counts(sparsity, nbr, nbc, balanced):
    """Blocks to remove: in the whole matrix, or per block row if balanced."""
    return int(round(sparsity * nbc)) if balanced else int(round(sparsity * (nbr * nbc)))


def _block_view(dense, blocksize):
    """(nbr, nbc, R, C) view of the blocks of a dense (M, K) array."""
    (M, K), (R, C) = dense.shape, blocksize
    return dense.reshape(M // R, R, K // C, C).transpose(0, 2, 1, 3)


def _magnitude_keep(dense, sparsity, blocksize, balanced):
    """Boolean (nbr, nbc) mask of the blocks that magnitude pruning keeps."""
    blocks = _block_view(dense, blocksize)
    nbr, nbc = blocks.shape[:2]
    norms = np.sqrt(np.sum(np.square(blocks, dtype=np.float64), axis=(2, 3)))
    keep = np.ones((nbr, nbc), dtype=bool)
    drop = _drop_counts(sparsity, nbr, nbc, balanced)
    if drop and balanced:
        order = np.argsort(norms, axis=1, kind="stable")[:, :drop]
        np.put_along_axis(keep, order, False, axis=1)
    elif drop:
        order = np.argsort(norms.ravel(), kind="stable")[:drop]
        keep.ravel()[order] = False
    return keep


def _from_keep(dense, keep, blocksize, out_dtype):
    """BlockSparseMatrix of the blocks of `dense` where `keep` (nbr, nbc) is True."""
    M, K = dense.shape
    R, C = blocksize
    blocks = _block_view(dense, blocksize)
    nbr = blocks.shape[0]
    brow, bcol = np.nonzero(keep)
    indptr = np.zeros(nbr + 1, dtype=np.int64)
    np.cumsum(np.bincount(brow, minlength=nbr), out=indptr[1:])
    data = blocks[brow, bcol]
    if out_dtype == np.int8 and dense.dtype != np.int8:
        return BlockSparseMatrix((data, bcol, indptr), shape=(M, K), blocksize=(R, C),
                                 dtype=out_dtype)
    return BlockSparseMatrix._from_parts(np.ascontiguousarray(data, dtype=out_dtype), bcol,
                                         indptr, (M, K), (R, C))
