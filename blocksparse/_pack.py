"""Weight packing for the INT8 kernels (pure NumPy, done once per matrix)."""
import numpy as np

__all__ = ["block_rows", "group_strips", "row_sums", "dense_panel"]


def block_rows(indptr):
    """Block-row index of every stored block, shape (nnzb,), int64."""
    counts = np.diff(indptr.astype(np.int64))
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


def group_strips(indptr, indices, data):
    """Group the blocks of each 4-row strip four at a time for the (4, 1) kernel.

    Parameters
    ----------
    indptr, indices : ndarray of int32
        Block-CSR structure of a matrix with blocksize (4, 1): four
        consecutive output rows in one input column.
    data : ndarray of shape (nnzb, 4, 1), dtype int8

    Returns
    -------
    gptr : ndarray of shape (M/4 + 1,), dtype int32
        Group offsets per strip.
    gcols : ndarray of shape (4 * groups,), dtype int32
        The four input columns of each group.  Padding slots repeat the
        strip's last column with zero weights.
    gw : ndarray of shape (4 * groups,), dtype int32
        For group g and row r, ``gw[4g + r]`` packs the row's four weights
        (in column order, little-endian bytes) as one VNNI group.
    """
    indptr = indptr.astype(np.int64)
    counts = np.diff(indptr)
    groups = (counts + 3) // 4
    gptr = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(groups, out=gptr[1:])
    total = int(gptr[-1])
    slot_strip = np.repeat(np.arange(counts.size), 4 * groups)
    gcols = np.zeros(4 * total, dtype=np.int32)
    if total:
        gcols[:] = indices[indptr[slot_strip + 1] - 1]
    wpad = np.zeros((4 * total, 4), dtype=np.int8)
    if indices.size:
        strip = block_rows(indptr)
        slot = 4 * gptr[strip] + (np.arange(indices.size) - indptr[strip])
        gcols[slot] = indices
        wpad[slot] = data.reshape(-1, 4)
    # (group, slot, row) -> (group, row, slot): each row's 4 weights contiguous
    gw = np.ascontiguousarray(wpad.reshape(total, 4, 4).transpose(0, 2, 1))
    return gptr.astype(np.int32), gcols, gw.view(np.int32).reshape(-1).copy()


def row_sums(shape, blocksize, indptr, data):
    """Sum of every row of a block-CSR matrix, shape (M,), dtype int64 for ints."""
    M = shape[0]
    R = blocksize[0]
    acc_dtype = np.int64 if data.dtype.kind in "iub" else np.float64
    out = np.zeros((M // R, R), dtype=acc_dtype) if R else np.zeros((0, 0), acc_dtype)
    if data.shape[0]:
        np.add.at(out, block_rows(indptr), data.sum(axis=2, dtype=acc_dtype))
    return out.reshape(M)


def dense_panel(dense, mr):
    """Pack a dense int8 weight for the dense INT8 kernel (``bsk_qdense``).

    Parameters
    ----------
    dense : ndarray of shape (M, K), dtype int8
    mr : int
        Rows per block (``blocksparse._kernels.QGEMM_MR``).

    Returns
    -------
    ndarray of shape (ceil(M / mr) * ceil(K / 4) * mr,), dtype int32
        Block b, group g, row r at ``(b * G + g) * mr + r``: the 32-bit VNNI
        group of ``W[b * mr + r, 4g .. 4g + 3]`` (little-endian bytes), so the
        kernel reads a block's rows group by group, linearly.  Rows past M and
        columns past K are zeros.
    """
    M, K = dense.shape
    nb, G = -(-M // mr), -(-K // 4)
    padded = np.zeros((nb * mr, 4 * G), dtype=np.int8)
    padded[:M, :K] = dense
    panel = np.ascontiguousarray(padded.reshape(nb, mr, G, 4).transpose(0, 2, 1, 3))
    return panel.view(np.int32).reshape(-1)
