"""Hypothesis strategies for block-sparse matrices and their dense operands.

The values of a drawn matrix come from a NumPy generator seeded by a drawn
integer, in one of a few drawn *styles* (uniform, extremes only, mostly
zeros, ...): hypothesis still chooses (and derandomizes) everything, while
operands of thousands of elements stay cheap to draw.

Which axis a block runs along: a weight has PyTorch's Linear shape
``(out_features, in_features) = (M, K)``; ``blocksize=(4, 1)`` is four
consecutive output rows in one input column (the paper's "4x1"),
``blocksize=(1, 4)`` four consecutive weights of one row along K.
"""
import numpy as np
from hypothesis import strategies as st

from blocksparse import BlockSparseMatrix

# (4, 1) and (1, 4) have INT8 fast paths; (4, 4) and (16, 1) vectorized float
# paths; (1, 1) and the odd shapes run the generic loops.
BLOCKSIZES = [(4, 1), (1, 4), (4, 4), (16, 1), (1, 1), (3, 2), (2, 3), (8, 2)]

# Token counts straddling vector widths and tiles (8/16 lanes, 32/64/128 tiles)
# (hypothesis starts from the first entry of a sampled_from: lists begin with
# a typical case, not the trivial one, so derandomized runs stay diverse)
N_EDGES = [17, 1, 64, 15, 16, 2, 3, 31, 32, 33, 63, 65, 127, 128, 129]

OCCUPANCY = ["random", "dense_rows", "rows", "full", "random", "empty", "diagonal"]
VALUE_STYLES = ["uniform", "extremes", "mixed", "uniform", "zeros", "ones", "small"]

_INT_LIMITS = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def draw_values(gen, shape, dtype, style):
    """Values of `dtype` and `shape` in a `style`, from NumPy generator `gen`.

    Integers are biased to the extremes of their type and 0; floats span
    about six orders of magnitude and include exact zeros.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if dtype.kind in "iu":
        lo, hi = _INT_LIMITS[dtype]
        if style == "zeros":
            v = np.zeros(size, dtype=np.int64)
        elif style == "ones":
            v = np.full(size, hi, dtype=np.int64)
        elif style == "extremes":
            v = gen.choice(np.array([lo, hi, 0] if lo else [0, hi]), size=size)
        elif style == "small":
            v = gen.integers(max(lo, -2), 3, size=size)
        else:
            v = gen.integers(lo, hi + 1, size=size)
            if style == "mixed":
                pick = gen.random(size)
                v[pick < 0.25] = lo
                v[(pick >= 0.25) & (pick < 0.5)] = hi
                v[(pick >= 0.5) & (pick < 0.6)] = 0
        return v.astype(dtype).reshape(shape)
    if style == "zeros":
        v = np.zeros(size)
    elif style == "ones":
        v = np.ones(size)
    elif style == "extremes":
        v = gen.choice(np.array([-100.0, 100.0, 0.0, 1.0, -1.0]), size=size)
    elif style == "small":
        v = gen.standard_normal(size) * 1e-3
    else:
        v = gen.standard_normal(size) * np.exp(gen.uniform(-3, 3, size=size))
        if style == "mixed":
            v[gen.random(size) < 0.3] = 0.0
    return v.astype(dtype).reshape(shape)


def _mask(draw, gen, nbr, nbc):
    """Per-block-row occupancy: empty rows, full rows, all-empty, all-full."""
    mode = draw(st.sampled_from(OCCUPANCY))
    if mode == "empty":
        return np.zeros((nbr, nbc), dtype=bool)
    if mode == "full":
        return np.ones((nbr, nbc), dtype=bool)
    if mode == "diagonal":
        return np.eye(nbr, nbc, dtype=bool)
    if mode == "rows":
        # each block row either empty or full
        return np.repeat(gen.random((nbr, 1)) < 0.5, nbc, axis=1)
    density = draw(st.sampled_from([0.5, 0.1, 0.9, 1.0, 0.0]))
    mask = gen.random((nbr, nbc)) < density
    if mode == "dense_rows" and nbr:
        mask[gen.integers(0, nbr)] = True
        mask[gen.integers(0, nbr)] = False
    return mask


@st.composite
def bcsr_matrices(draw, dtype=np.float32, blocksize=None, max_block_rows=6,
                  max_block_cols=8, min_block_rows=0, min_block_cols=0,
                  index_dtype=None, blocksizes=BLOCKSIZES):
    """A BlockSparseMatrix with drawn structure and values.

    Parameters
    ----------
    dtype : dtype
        float32, float64 or int8.
    blocksize : tuple of int, optional
        ``(R, C)``; drawn from `blocksizes` when None.  ``(4, 1)``: four
        consecutive output rows in one input column; ``(1, 4)``: four
        consecutive weights of one row along K.
    max_block_rows, max_block_cols, min_block_rows, min_block_cols : int
        Bounds of the block grid; 0 and 1 are drawn when allowed.
    index_dtype : dtype, optional
        int32 or int64 for the arrays handed to the constructor (drawn).

    Stored blocks may be all zero (explicit zeros), as scipy allows.
    """
    R, C = blocksize if blocksize is not None else draw(st.sampled_from(blocksizes))
    # integers() already favours the bounds (0 and 1 come up); start from a
    # mid-sized grid so that most examples have real work in them
    nbr = draw(st.one_of(st.integers(min(max(min_block_rows, 3), max_block_rows),
                                     max_block_rows),
                         st.integers(min_block_rows, max_block_rows)))
    nbc = draw(st.one_of(st.integers(min(max(min_block_cols, 3), max_block_cols),
                                     max_block_cols),
                         st.integers(min_block_cols, max_block_cols)))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = _mask(draw, gen, nbr, nbc)
    brow, bcol = np.nonzero(mask)
    style = draw(st.sampled_from(VALUE_STYLES))
    data = draw_values(gen, (brow.size, R, C), dtype, style)
    idt = index_dtype if index_dtype is not None else draw(st.sampled_from([np.int32, np.int64]))
    indptr = np.zeros(nbr + 1, dtype=idt)
    np.cumsum(np.bincount(brow, minlength=nbr), out=indptr[1:])
    return BlockSparseMatrix((data, bcol.astype(idt), indptr), shape=(nbr * R, nbc * C),
                             blocksize=(R, C))


@st.composite
def dense_operands(draw, K, dtype=np.float32, n=None, transposed=False):
    """A dense operand of K rows: shape (K, N), or (N, K) when `transposed`.

    N straddles lane and tile edges (1, 15/16/17, 63/64/65, 127/128/129);
    values are biased to the extremes of integer types and include zeros.
    """
    N = n if n is not None else draw(st.sampled_from(N_EDGES))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(VALUE_STYLES))
    shape = (N, K) if transposed else (K, N)
    return draw_values(gen, shape, dtype, style)


def per_variant_settings():
    """Settings for a @given test that the `isa` (and `num_threads`) fixtures
    repeat for every variant: half the profile's examples per variant (the
    total still exceeds the profile's), and no complaint about the fixtures,
    which are meant to stay set for all examples of one run."""
    from hypothesis import HealthCheck, settings
    return settings(max_examples=max(settings.default.max_examples // 2, 10),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
