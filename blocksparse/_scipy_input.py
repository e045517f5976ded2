"""Validated conversion of any scipy.sparse input to block-CSR arrays.

SciPy checks index ranges only on request, and its format conversions (in
C++) trust them: a CSR input with an index past the end made ``csr_tobsr``
write out of bounds.  Here every input is checked first (index dtypes,
``indptr`` monotone and long enough, every index in range, arrays as long
as they claim), then converted in NumPy with memory proportional to what
the input stores: nothing is allocated by the declared number of columns,
and block-row offsets (one per block row, which any block-CSR matrix needs)
only up to :data:`UNBACKED_ROWS` beyond the size of the input's arrays.
"""
import numpy as np

__all__ = ["blocks_from_scipy", "UNBACKED_ROWS"]

# Block rows a conversion may create beyond the entries the input stores
# (8 MB of int64 offsets): a COO matrix of shape (10**12, 4) with one entry
# would otherwise cost terabytes that no data backs.
UNBACKED_ROWS = 1 << 20
_I64_MAX = np.iinfo(np.int64).max


def _index_array(a, name):
    """1-D int64 copy of an index array (any integer dtype, values checked)."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"the input's {name} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"the input's {name} must have an integer dtype, got {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > _I64_MAX:
        raise ValueError(f"the input's {name} has values beyond int64")
    return a.astype(np.int64)


def _check_range(idx, bound, name):
    if idx.size and (idx.min() < 0 or idx.max() >= bound):
        raise ValueError(f"the input's {name} must lie in [0, {bound}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")


def _compressed(S, nmajor, nminor):
    """(major index of each entry, minor indices, nnz) of a CSR/CSC/BSR input, checked."""
    indptr = _index_array(S.indptr, "indptr")
    indices = _index_array(S.indices, "indices")
    if indptr.size != nmajor + 1:
        raise ValueError(f"the input's indptr must have {nmajor + 1} entries for its shape, "
                         f"got {indptr.size}")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError("the input's indptr must start at 0 and be non-decreasing")
    nnz = int(indptr[-1])
    stored = np.shape(S.data)[0] if np.ndim(S.data) else 0
    if nnz > indices.size or nnz > stored:
        raise ValueError(f"the input's indptr ends at {nnz}, but indices and data hold "
                         f"{indices.size} and {stored} entries")
    indices = indices[:nnz]
    _check_range(indices, nminor, "indices")
    major = np.repeat(np.arange(nmajor, dtype=np.int64), np.diff(indptr))
    return major, indices, nnz


def _coo(S, M, K):
    """(rows, cols, values) of a COO input, checked."""
    rows, cols = _index_array(S.row, "row indices"), _index_array(S.col, "column indices")
    vals = np.asarray(S.data)
    if vals.ndim != 1 or not rows.size == cols.size == vals.size:
        raise ValueError(f"the input's row, col and data must be 1-D of one length, got "
                         f"{rows.size}, {cols.size} and shape {vals.shape}")
    _check_range(rows, M, "row indices")
    _check_range(cols, K, "column indices")
    return rows, cols, vals


def _entries(S, M, K):
    """(rows, cols, values) of a CSR/CSC/COO/DIA/DOK/LIL input, all checked."""
    fmt = S.format
    if fmt == "csr":
        rows, cols, nnz = _compressed(S, M, K)
        return rows, cols, np.asarray(S.data)[:nnz]
    if fmt == "csc":
        cols, rows, nnz = _compressed(S, K, M)
        return rows, cols, np.asarray(S.data)[:nnz]
    if fmt == "dia":
        data, offsets = np.asarray(S.data), np.asarray(S.offsets)
        if data.ndim != 2 or offsets.ndim != 1 or offsets.size != data.shape[0] or \
                offsets.dtype.kind not in "iu":
            raise ValueError(f"the input's DIA data must be 2-D with one integer offset per "
                             f"row, got shapes {data.shape} and {offsets.shape}")
    # COO directly; DIA, DOK and LIL through SciPy's tocoo, which builds its index
    # arrays in NumPy from the stored entries (no writes by unchecked indices)
    return _coo(S if fmt == "coo" else S.tocoo(), M, K)


def _group(brow, bcol, nbc, sub):
    """Order the entries by (block row, block column, sub) and find the blocks.

    Returns the order, the block number of every (ordered) entry, the
    (block row, block column) of every block, and the ordered `sub`.
    """
    n = brow.size
    if (nbc + 1) * (int(brow.max()) + 1) * (int(sub.max()) + 1) < 2**62:
        key = (brow * nbc + bcol) * (int(sub.max()) + 1) + sub
        order = np.argsort(key, kind="stable")
    else:  # a shape too large for one int64 key
        order = np.lexsort((sub, bcol, brow))
    brow, bcol, sub = brow[order], bcol[order], sub[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (brow[1:] != brow[:-1]) | (bcol[1:] != bcol[:-1])
    block = np.cumsum(first) - 1
    return order, block, brow[first], bcol[first], sub


def blocks_from_scipy(S, blocksize):
    """Block-CSR ``(data, indices, indptr)`` of any scipy.sparse input.

    Parameters
    ----------
    S : scipy.sparse matrix or array (2-D)
    blocksize : tuple of int
        ``(R, C)`` dividing ``S.shape``: R consecutive rows (output
        features of a weight) by C consecutive columns (the reduction axis).

    Returns
    -------
    data : ndarray of shape (nnzb, R, C), the input's dtype
        Duplicates summed (in int64 for integer inputs, then cast back by
        the caller, which checks the range), blocks of explicit zeros kept,
        as SciPy does.
    indices, indptr : ndarray of int64
        Sorted block columns within each block row.

    Raises
    ------
    ValueError
        If an index array is malformed or out of range, or the shape needs
        more block rows than the input could back (:data:`UNBACKED_ROWS`).
    TypeError
        If an index array is not of an integer dtype.
    """
    M, K = S.shape
    R, C = blocksize
    nbr, nbc = M // R, K // C
    stored = sum(np.size(getattr(S, a, ())) for a in ("data", "indices", "indptr", "row",
                                                      "col", "offsets"))
    if S.format in ("dok", "lil"):
        stored = S.nnz + (M if S.format == "lil" else 0)
    if nbr + 1 > stored + UNBACKED_ROWS:
        raise ValueError(f"the input's shape {(M, K)} needs {nbr + 1} block-row offsets but "
                         f"the input stores only {stored} values: the shape is not backed by "
                         f"data (at most {UNBACKED_ROWS} block rows more than stored)")
    if S.format == "bsr":
        R0, C0 = S.blocksize
        if M % R0 or K % C0:
            raise ValueError(f"the input's blocksize {(R0, C0)} does not divide its shape "
                             f"{(M, K)}")
        brow, bcol, nnzb = _compressed(S, M // R0, K // C0)
        blocks = np.asarray(S.data)
        if blocks.ndim != 3 or blocks.shape[1:] != (R0, C0):
            raise ValueError(f"the input's BSR data must have shape (nnzb, {R0}, {C0}), got "
                             f"{blocks.shape}")
        blocks = blocks[:nnzb]
        if (R0, C0) == (R, C):
            return _from_blocks(brow, bcol, blocks, nbr, nbc)
        # another blocksize: every element of every stored block is an entry
        r, c = np.meshgrid(np.arange(R0), np.arange(C0), indexing="ij")
        rows = (brow[:, None, None] * R0 + r).reshape(-1)
        cols = (bcol[:, None, None] * C0 + c).reshape(-1)
        vals = blocks.reshape(-1)
    else:
        rows, cols, vals = _entries(S, M, K)
    dtype = vals.dtype
    if rows.size == 0:
        return (np.zeros((0, R, C), dtype), np.zeros(0, np.int64),
                np.zeros(nbr + 1, np.int64))
    order, block, brow, bcol, pos = _group(rows // R, cols // C, nbc,
                                           (rows % R) * C + cols % C)
    vals = vals[order]
    acc = np.int64 if dtype.kind in "iub" else dtype
    data = np.zeros((brow.size, R * C), dtype=acc)
    if rows.size > 1 and np.any((block[1:] == block[:-1]) & (pos[1:] == pos[:-1])):
        np.add.at(data, (block, pos), vals.astype(acc))  # duplicates are summed
    else:
        data[block, pos] = vals
    return data.reshape(-1, R, C), bcol, _indptr(brow, nbr)


def _from_blocks(brow, bcol, blocks, nbr, nbc):
    dtype = blocks.dtype
    if brow.size == 0:
        R, C = blocks.shape[1:]
        return np.zeros((0, R, C), dtype), np.zeros(0, np.int64), np.zeros(nbr + 1, np.int64)
    order, block, brow_u, bcol_u, _ = _group(brow, bcol, nbc, np.zeros_like(brow))
    blocks = blocks[order]
    if brow_u.size == brow.size:
        data = np.ascontiguousarray(blocks)
    else:  # duplicate blocks are summed, as scipy's sum_duplicates does
        acc = np.int64 if dtype.kind in "iub" else dtype
        data = np.zeros((brow_u.size,) + blocks.shape[1:], dtype=acc)
        np.add.at(data, block, blocks.astype(acc))
    return data, bcol_u, _indptr(brow_u, nbr)


def _indptr(brow, nbr):
    indptr = np.zeros(nbr + 1, dtype=np.int64)
    np.cumsum(np.bincount(brow, minlength=nbr), out=indptr[1:])
    return indptr
