"""Saving and loading BlockSparseMatrix in SciPy's .npz layout (no pickle)."""
import os

import numpy as np

from ._matrix import BlockSparseMatrix

__all__ = ["save_npz", "load_npz"]


def save_npz(file, matrix, compressed=True):
    """Save a BlockSparseMatrix to a ``.npz`` file.

    The layout is SciPy's for BSR (``data``, ``indices``, ``indptr``,
    ``shape``, ``format=b"bsr"``), so :func:`scipy.sparse.load_npz` reads
    the file too.

    Parameters
    ----------
    file : str, os.PathLike or file-like
        Destination; ``.npz`` is appended to a name without it (as NumPy does).
    matrix : BlockSparseMatrix
    compressed : bool, optional
        Use zip compression (default True).
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    arrays = dict(data=matrix.data, indices=matrix.indices, indptr=matrix.indptr,
                  shape=np.array(matrix.shape, dtype=np.int64), format=np.array(b"bsr"),
                  _is_array=np.array(True))
    (np.savez_compressed if compressed else np.savez)(file, **arrays)


def load_npz(file):
    """Load a matrix saved by :func:`save_npz` or :func:`scipy.sparse.save_npz`.

    Files are read with ``allow_pickle=False``.  A SciPy file in another
    format (CSR, COO, ...) is converted with the default blocksize.

    Parameters
    ----------
    file : str, os.PathLike or file-like

    Returns
    -------
    BlockSparseMatrix

    Raises
    ------
    ValueError
        If the file is not a valid sparse ``.npz`` file or its arrays break
        the block-CSR invariants.
    """
    if isinstance(file, (str, os.PathLike)):
        # np.load leaks the handle it opens when the zip is corrupt: own it here
        with open(file, "rb") as fh:
            return load_npz(fh)
    # a file object is read twice for non-BSR formats: remember where it starts
    start = file.tell() if hasattr(file, "seek") and hasattr(file, "tell") else None
    try:
        with np.load(file, allow_pickle=False) as f:
            keys = set(f.files)
            if "format" not in keys or "shape" not in keys:
                raise ValueError("the file does not hold a sparse matrix "
                                 "(no 'format' or 'shape' entry)")
            fmt = f["format"].item()
            fmt = fmt.decode("ascii") if isinstance(fmt, bytes) else str(fmt)
            arrays = {k: f[k] for k in keys}
    except Exception as exc:
        # a damaged file fails in zipfile, zlib or NumPy's header parser with
        # many exception types (BadZipFile, zlib.error, NotImplementedError, ...)
        raise ValueError(f"cannot read the sparse matrix file: {exc}") from None
    shape = tuple(int(s) for s in arrays["shape"])
    if fmt == "bsr":
        for key in ("data", "indices", "indptr"):
            if key not in arrays:
                raise ValueError(f"the BSR file has no {key!r} entry")
        triple = (arrays["data"], arrays["indices"], arrays["indptr"])
        try:
            return BlockSparseMatrix(triple, shape=shape)
        except ValueError as exc:
            # scipy writes BSR files with unsorted (even duplicate) block indices;
            # the ranges are checked by now, so canonicalize those through scipy
            if "sorted" not in str(exc) and "duplicate" not in str(exc):
                raise
        import scipy.sparse as sp
        return BlockSparseMatrix(sp.bsr_array(triple, shape=shape))
    import scipy.sparse as sp
    try:
        if start is not None:
            file.seek(start)
        S = sp.load_npz(file)
        if hasattr(S, "check_format"):
            # scipy checks index ranges only on request; converting a corrupt
            # CSR/CSC file to BSR would read and write out of bounds
            S.check_format(full_check=True)
    except Exception as exc:  # scipy raises a mix of types for bad files
        raise ValueError(f"cannot read the {fmt!r} sparse matrix file: {exc}") from None
    return BlockSparseMatrix(S)
