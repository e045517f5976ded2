"""blocksparse.prune: exact block counts, smallest norms removed, deterministic ties."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix
from reference import kept_blocks as kept_mask
from strategies import BLOCKSIZES, draw_values

SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.95, 1.0]


@st.composite
def dense_weights(draw, dtype=np.float32):
    R, C = draw(st.sampled_from(BLOCKSIZES))
    nbr, nbc = draw(st.integers(0, 6)), draw(st.integers(0, 9))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["uniform", "extremes", "mixed", "zeros", "ones", "small"]))
    return draw_values(gen, (nbr * R, nbc * C), dtype, style), (R, C)


def block_norms(D, blocksize):
    R, C = blocksize
    M, K = D.shape
    B = D.astype(np.float64).reshape(M // R, R, K // C, C)
    return np.sqrt((B ** 2).sum(axis=(1, 3)))


@given(dense_weights(), st.sampled_from(SPARSITIES))
def test_prune_exact_count_and_smallest_norms(case, sparsity):
    D, bs = case
    before = D.copy()
    P = blocksparse.prune(D, sparsity, blocksize=bs)
    np.testing.assert_array_equal(D, before, strict=True)
    P.check_format(full_check=True)
    norms = block_norms(D, bs)
    total = norms.size
    removed = round(sparsity * total)
    assert P.blocksize == bs and P.shape == D.shape and P.dtype == D.dtype
    assert P.nnzb == total - removed
    assert P.density == ((total - removed) / total if total else 0.0)
    keep = kept_mask(P)
    assert int(keep.sum()) == P.nnzb
    if 0 < removed < total:
        assert norms[keep].min() >= norms[~keep].max()
    # kept blocks carry the original values, the rest is zero
    R, C = bs
    expect = np.where(np.repeat(np.repeat(keep, R, axis=0), C, axis=1), D, 0)
    np.testing.assert_array_equal(P.toarray(), expect.astype(D.dtype), strict=True)


@given(dense_weights(), st.sampled_from(SPARSITIES))
def test_prune_balanced_rows(case, sparsity):
    D, bs = case
    P = blocksparse.prune(D, sparsity, blocksize=bs, balanced=True)
    norms = block_norms(D, bs)
    nbr, nbc = norms.shape
    per_row = nbc - round(sparsity * nbc)
    np.testing.assert_array_equal(np.diff(P.indptr), np.full(nbr, per_row))
    keep = kept_mask(P)
    for i in range(nbr):
        if 0 < per_row < nbc:
            assert norms[i, keep[i]].min() >= norms[i, ~keep[i]].max()


def test_ties_broken_by_position():
    D = np.ones((8, 8), np.float32)
    P = blocksparse.prune(D, 0.5, blocksize=(4, 1))
    # 16 equal blocks: the 8 with the lowest flat index (block row 0) go first
    assert P.indptr.tolist() == [0, 0, 8]
    assert P.indices.tolist() == list(range(8))
    Q = blocksparse.prune(D, 0.25, blocksize=(4, 1), balanced=True)
    assert Q.indptr.tolist() == [0, 6, 12]
    assert Q.indices.tolist() == [2, 3, 4, 5, 6, 7] * 2
    # deterministic: the same call twice gives the same structure
    R = blocksparse.prune(D, 0.5, blocksize=(4, 1))
    np.testing.assert_array_equal(P.indices, R.indices)


def test_prune_example_and_kept_zero_blocks():
    W = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    P = blocksparse.prune(W, 0.5, blocksize=(4, 1))
    assert P.indices.tolist() == [2, 3]
    Z = blocksparse.prune(np.zeros((4, 8), np.float64), 0.25, blocksize=(1, 4))
    assert Z.nnzb == 6  # zero blocks kept: density is exact
    assert Z.density == 0.75


@pytest.mark.parametrize("kind", ["ndarray", "list", "scipy", "blocksparse", "int64"])
def test_prune_input_kinds(kind, rng):
    D = rng.integers(-5, 6, (8, 12)).astype(np.float64)
    src = {"ndarray": D, "list": D.tolist(), "scipy": sp.csr_array(D),
           "blocksparse": BlockSparseMatrix(D, blocksize=(1, 1)),
           "int64": D.astype(np.int64)}[kind]
    P = blocksparse.prune(src, 0.5, blocksize=(4, 1))
    ref = blocksparse.prune(D, 0.5, blocksize=(4, 1))
    assert P.dtype == np.float64
    np.testing.assert_array_equal(P.toarray(), ref.toarray())


def test_prune_dtype_argument(rng):
    D = rng.integers(-128, 128, (8, 8)).astype(np.float32)
    P = blocksparse.prune(D, 0.5, blocksize=(1, 4), dtype=np.int8)
    assert P.dtype == np.int8
    np.testing.assert_array_equal(P.toarray(),
                                  blocksparse.prune(D, 0.5, blocksize=(1, 4)).toarray()
                                  .astype(np.int8), strict=True)
    I = blocksparse.prune(D.astype(np.int8), 0.5, blocksize=(1, 4))
    assert I.dtype == np.int8
    with pytest.raises(ValueError, match="int8 cannot represent exactly"):
        blocksparse.prune(D + 0.5, 0.5, blocksize=(1, 4), dtype=np.int8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_prune_refuses_non_finite(bad):
    D = np.ones((4, 4), np.float32)
    D[1, 2] = bad
    with pytest.raises(ValueError, match="A has NaN or Inf"):
        blocksparse.prune(D, 0.5)


@pytest.mark.parametrize("sparsity,err,match", [
    (-0.1, ValueError, "sparsity must lie in"), (1.5, ValueError, "sparsity must lie in"),
    (float("nan"), ValueError, "sparsity must lie in"), (True, TypeError, "sparsity must be"),
    ("0.5", TypeError, "sparsity must be"), (None, TypeError, "sparsity must be")])
def test_prune_bad_sparsity(sparsity, err, match):
    with pytest.raises(err, match=match):
        blocksparse.prune(np.ones((4, 4)), sparsity)


def test_prune_bad_shapes():
    with pytest.raises(ValueError, match=r"blocksize \(4, 1\) does not divide the shape"):
        blocksparse.prune(np.ones((6, 4)), 0.5)
    with pytest.raises(ValueError, match="A must be 2-D"):
        blocksparse.prune(np.ones((4, 4, 4)), 0.5)
    with pytest.raises(TypeError, match="A must be numeric"):
        blocksparse.prune(np.array([["a", "b"]]), 0.5)
