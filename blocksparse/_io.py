"""Saving and loading BlockSparseMatrix in SciPy's .npz layout (no pickle)."""
import os

import numpy as np
import scipy.sparse as sp

from ._atomic import replacing
from ._matrix import BlockSparseMatrix

__all__ = ["save_npz", "load_npz"]


# The entries each SciPy format needs: nothing else in a file is read (an unused entry
# may decompress to gigabytes).
_ENTRIES = {"bsr": ("data", "indices", "indptr"), "csr": ("data", "indices", "indptr"),
            "csc": ("data", "indices", "indptr"), "coo": ("data", "row", "col"),
            "dia": ("data", "offsets")}


def save_npz(file, matrix, compressed=True):
    """Save a BlockSparseMatrix to a ``.npz`` file.

    The layout is SciPy's for BSR (``data``, ``indices``, ``indptr``,
    ``shape``, ``format=b"bsr"``), so :func:`scipy.sparse.load_npz` reads
    the file too.  A path is written atomically: the data goes to a
    temporary file in the same directory, which then replaces `file` (a
    symlink there is replaced, its target left alone), so the file holds the
    old or the new matrix at every instant.

    Parameters
    ----------
    file : str, os.PathLike or file-like
        Destination; ``.npz`` is appended to a name without it (as NumPy does).
    matrix : BlockSparseMatrix
    compressed : bool, optional
        Use zip compression (default True).

    Raises
    ------
    TypeError
        If `matrix` is not a BlockSparseMatrix.
    IsADirectoryError
        If `file` names a directory.
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    arrays = dict(data=matrix.data, indices=matrix.indices, indptr=matrix.indptr,
                  shape=np.array(matrix.shape, dtype=np.int64), format=np.array(b"bsr"),
                  _is_array=np.array(True))
    save = np.savez_compressed if compressed else np.savez
    if not isinstance(file, (str, os.PathLike)):
        save(file, **arrays)
        return
    path = os.fspath(file)
    if not path.endswith(".npz"):
        path += ".npz"
    with replacing(path) as tmp, open(tmp, "wb") as f:
        save(f, **arrays)


def _entry(npz, key, max_items=None, what="the file"):
    """One array of the file, its declared size checked against the entry first."""
    name = key + ".npy"
    if name not in npz.zip.namelist():
        raise ValueError(f"{what} has no {key!r} entry")
    info = npz.zip.getinfo(name)
    with npz.zip.open(name) as fp:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
        header = fp.tell()
    if dtype.hasobject:
        raise ValueError(f"entry {key!r} holds Python objects, which are not loaded "
                         f"(allow_pickle=False)")
    count = int(np.prod(shape, dtype=object))
    if header + count * dtype.itemsize != info.file_size:
        raise ValueError(f"entry {key!r} declares shape {shape} of {dtype} "
                         f"({count * dtype.itemsize} bytes) but holds "
                         f"{info.file_size - header} bytes")
    if max_items is not None and count > max_items:
        raise ValueError(f"entry {key!r} must hold at most {max_items} values, got shape {shape}")
    return npz[key]


def _shape(value):
    shape = np.asarray(value)
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or np.any(shape < 0):
        raise ValueError(f"the file's 'shape' entry must be two non-negative integers, got "
                         f"{shape.tolist()!r}")
    return int(shape[0]), int(shape[1])


def load_npz(file):
    """Load a matrix saved by :func:`save_npz` or :func:`scipy.sparse.save_npz`.

    Files are read with ``allow_pickle=False``, and only the entries the
    format needs are read (``format``, ``shape`` and, for BSR/CSR/CSC,
    ``data``, ``indices``, ``indptr``; ``row``, ``col``, ``data`` for COO;
    ``data``, ``offsets`` for DIA), each after checking that its declared
    shape matches the bytes it holds.  The arrays are validated as any
    other input (indices in range, offsets monotone), and a declared matrix
    shape must be backed by the data: see :class:`BlockSparseMatrix`.  A
    SciPy file in another format than BSR is converted with the default
    blocksize.

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
    try:
        with np.load(file, allow_pickle=False) as npz:
            if not hasattr(npz, "zip"):
                raise ValueError("not a .npz file (a single .npy array)")
            names = set(npz.zip.namelist())
            if "format.npy" not in names or "shape.npy" not in names:
                raise ValueError("the file does not hold a sparse matrix "
                                 "(no 'format' or 'shape' entry)")
            fmt = _entry(npz, "format", max_items=1)
            fmt = fmt.item() if fmt.size == 1 else None
            fmt = fmt.decode("ascii") if isinstance(fmt, bytes) else str(fmt)
            if fmt not in _ENTRIES:
                raise ValueError(f"cannot read the {fmt!r} sparse matrix file: unknown format; "
                                 f"expected one of {', '.join(_ENTRIES)}")
            shape = _shape(_entry(npz, "shape", max_items=2))
            arrays = {k: _entry(npz, k, what=f"the {fmt.upper()} file") for k in _ENTRIES[fmt]}
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("cannot read") else
                         f"cannot read the sparse matrix file: {msg}") from None
    except Exception as exc:
        # a damaged file fails in zipfile, zlib or NumPy's header parser with
        # many exception types (BadZipFile, zlib.error, NotImplementedError, ...)
        raise ValueError(f"cannot read the sparse matrix file: {exc}") from None
    if fmt == "bsr":
        triple = (arrays["data"], arrays["indices"], arrays["indptr"])
        try:
            return BlockSparseMatrix(triple, shape=shape)
        except ValueError as exc:
            # scipy writes BSR files with unsorted (even duplicate) block indices;
            # the ranges are checked by now, so canonicalize those through scipy
            if "sorted" not in str(exc) and "duplicate" not in str(exc):
                raise
        return BlockSparseMatrix(sp.bsr_array(triple, shape=shape))
    try:
        if fmt in ("csr", "csc"):
            S = getattr(sp, fmt + "_array")((arrays["data"], arrays["indices"],
                                             arrays["indptr"]), shape=shape)
        elif fmt == "coo":
            S = sp.coo_array((arrays["data"], (arrays["row"], arrays["col"])), shape=shape)
        else:
            S = sp.dia_array((arrays["data"], arrays["offsets"]), shape=shape)
        return BlockSparseMatrix(S)  # every index validated there, before any conversion
    except Exception as exc:  # scipy raises a mix of types for bad arrays
        raise ValueError(f"cannot read the {fmt!r} sparse matrix file: {exc}") from None
