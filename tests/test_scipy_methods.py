"""The scipy.sparse methods (issue 13 item 4), each checked against scipy.sparse.bsr_array.

The rule (blocksparse/_scipy_api.py): where bsr_array returns a bsr_array of its
own structure, a BlockSparseMatrix comes back; elsewhere SciPy's own type and
values.  Integer results never wrap around silently.
"""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from blocksparse import BlockSparseMatrix
from strategies import bcsr_matrices

ANY = st.one_of(bcsr_matrices(np.float32), bcsr_matrices(np.float64), bcsr_matrices(np.int8))
AXES = st.sampled_from([None, 0, 1, -1, -2])


def same(got, want):
    """Same type (a BlockSparseMatrix standing for a bsr_array), dtype, shape and values."""
    if isinstance(got, BlockSparseMatrix):
        assert isinstance(want, sp.bsr_array), type(want)
        assert got.blocksize == want.blocksize
        got, want = got.to_scipy(), want
    assert type(got) is type(want), (type(got), type(want))
    if sp.issparse(want):
        assert got.format == want.format and got.shape == want.shape
        got, want = got.toarray(), want.toarray()
    np.testing.assert_array_equal(got, want, strict=True)


# ---- conversions ------------------------------------------------------------------------

@given(ANY)
def test_tocsr_tocoo_tobsr(W):
    S = W.to_scipy()
    same(W.tocsr(), S.tocsr())
    same(W.tocoo(), S.tocoo())
    same(W.tobsr(), S.tobsr())
    assert W.tocsr().nnz == S.tocsr().nnz  # explicit zeros of blocks kept, as SciPy
    M, K = W.shape
    for bs in ((1, 1), (2, 1), (1, 2), (2, 2)):
        if M % bs[0] == 0 and K % bs[1] == 0:
            got = W.tobsr(blocksize=bs)
            assert got.blocksize == bs
            same(got, S.tobsr(blocksize=bs))


def test_tobsr_blocksize_must_divide():
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32), blocksize=(2, 2))
    with pytest.raises(ValueError, match=r"blocksize \(3, 1\) does not divide the shape"):
        W.tobsr(blocksize=(3, 1))


# ---- elementwise --------------------------------------------------------------------------

@given(bcsr_matrices(np.float32), bcsr_matrices(np.float64))
def test_abs_and_scalar_multiply_keep_the_structure(W, V):
    for A in (W, V):
        S = A.to_scipy()
        for got in (abs(A), A.abs()):
            same(got, abs(S))
            assert got.nnzb == A.nnzb
        for c in (2, -0.5, np.float32(3)):
            same(A.multiply(c), S.multiply(c))


def test_int8_abs_and_multiply_never_wrap():
    W = BlockSparseMatrix(np.array([[-128, 5], [3, 4]], np.int8), blocksize=(1, 1))
    with pytest.raises(OverflowError, match="abs overflows int8"):
        abs(W)
    with pytest.raises(OverflowError, match="overflows int8"):
        W.multiply(2)
    with pytest.raises(OverflowError, match="elementwise product overflows int8"):
        W.multiply(W)
    ok = BlockSparseMatrix(np.array([[-11, 5], [3, 4]], np.int8), blocksize=(1, 1))
    same(abs(ok), abs(ok.to_scipy()))
    same(ok.multiply(ok), ok.to_scipy().multiply(ok.to_scipy()))
    same(ok.multiply(2.5), ok.to_scipy().multiply(2.5))  # float64, as SciPy


@st.composite
def multiply_operands(draw):
    W = draw(bcsr_matrices(draw(st.sampled_from([np.float32, np.float64]))))
    M, K = W.shape
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["dense", "row", "column", "csr", "bsr", "ours", "dense32"]))
    full = gen.standard_normal((M, K))
    other = {"dense": full, "dense32": full.astype(np.float32), "row": full[:1],
             "column": full[:, :1], "csr": sp.csr_array(full * (gen.random((M, K)) < 0.3)),
             "bsr": sp.bsr_array(full), "ours": BlockSparseMatrix(full.astype(np.float32))}[kind]
    return W, other


@given(multiply_operands())
def test_multiply_matches_scipy(case):
    W, other = case
    want_other = other.to_scipy() if isinstance(other, BlockSparseMatrix) else other
    same(W.multiply(other), W.to_scipy().multiply(want_other))


def test_multiply_shape_mismatch_is_scipys_error():
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError):
        W.multiply(np.ones((3, 4)))


# ---- counts and reductions --------------------------------------------------------------------

@given(ANY, AXES)
def test_count_nonzero(W, axis):
    got = W.count_nonzero(axis=axis)
    want = W.tocsr().count_nonzero(axis=axis)  # bsr_array counts only axis=None
    if axis is None:
        assert got == W.to_scipy().count_nonzero() == want and isinstance(got, int)
    else:
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64
    dense = W.toarray()
    np.testing.assert_array_equal(got, np.count_nonzero(dense, axis=axis))


def test_count_nonzero_counts_nan_and_not_explicit_zeros():
    D = np.zeros((2, 4), np.float32)
    D[0, 0], D[1, 2] = np.nan, 1.0
    W = BlockSparseMatrix(D, blocksize=(2, 2))
    assert W.nnz == 8 and W.count_nonzero() == 2 == W.to_scipy().count_nonzero()
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        W.count_nonzero(axis=2)


@given(ANY)
def test_eliminate_zeros_in_place(W):
    S = W.to_scipy()
    D, T = W.toarray(), W.T
    assert W.eliminate_zeros() is None and S.eliminate_zeros() is None
    assert W.nnzb == S.data.shape[0] and W.blocksize == S.blocksize
    np.testing.assert_array_equal(W.data, S.data, strict=True)
    np.testing.assert_array_equal(W.indices, S.indices)
    np.testing.assert_array_equal(W.indptr, S.indptr)
    W.check_format(full_check=True)
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    np.testing.assert_array_equal(W.T.toarray(), T.toarray(), strict=True)
    assert not W.data.flags.writeable
    if W.dtype != np.int8 and W.shape[1]:
        x = np.ones((W.shape[1], 3), W.dtype)
        np.testing.assert_allclose(W @ x, D @ x, rtol=1e-5, atol=1e-5)


@given(ANY, AXES, st.booleans())
def test_max_min(W, axis, explicit):
    S = W.to_scipy()
    for name in ("max", "min"):
        try:
            want = getattr(S, name)(axis=axis, explicit=explicit)
        except ValueError as exc:  # SciPy refuses an empty reduction: so do we
            with pytest.raises(ValueError, match=str(exc)[:20]):
                getattr(W, name)(axis=axis, explicit=explicit)
            continue
        got = getattr(W, name)(axis=axis, explicit=explicit)
        same(got, want)


@given(ANY, AXES, st.sampled_from([None, np.float64, np.float32]))
def test_mean(W, axis, dtype):
    M, K = W.shape
    empty = (M * K == 0) if axis is None else (W.shape[axis % 2] == 0)
    if empty:
        with pytest.raises(ValueError, match="no elements to average"):
            W.mean(axis=axis, dtype=dtype)
        return
    got = W.mean(axis=axis, dtype=dtype)
    want = W.to_scipy().mean(axis=axis, dtype=dtype)
    same(got, want)
    ref = W.toarray().astype(np.float64).mean(axis=axis)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_reductions_refuse_bad_axes():
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32))
    for f in (W.max, W.min, W.mean, W.count_nonzero):
        with pytest.raises(ValueError, match="out of bounds"):
            f(axis=3)
        with pytest.raises(TypeError, match="axis must be None or an integer"):
            f(axis="rows")


# ---- products with scipy.sparse operands -------------------------------------------------------

@st.composite
def sparse_products(draw):
    W = draw(ANY)
    M, K = W.shape
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    N = draw(st.integers(0, 7))
    fmt = draw(st.sampled_from(["csr", "csc", "coo", "bsr", "ours", "csr_matrix"]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int8, np.int64]))

    def make(shape):
        D = (gen.standard_normal(shape) * 4 * (gen.random(shape) < 0.4)).astype(dtype)
        if fmt == "ours":
            return BlockSparseMatrix(D.astype(np.float32 if dtype == np.int64 else dtype),
                                     blocksize=(1, 1))
        if fmt == "csr_matrix":
            return sp.csr_matrix(D)
        return getattr(sp, f"{fmt}_array")(D)
    return W, make((K, N)), make((N, M))


@given(sparse_products())
def test_products_with_sparse_operands_match_scipy(case):
    W, right, left = case
    for got, want, dense in (
            (W @ right, _scipy_product(W, right, True), W.toarray().astype(np.float64)
             @ _dense(right)),
            (left @ W if not isinstance(left, BlockSparseMatrix) else left @ W,
             _scipy_product(W, left, False), _dense(left) @ W.toarray().astype(np.float64))):
        assert type(got) is type(want)
        same(got, want)
        if got.dtype.kind in "iu":  # exact: int8 is widened, never wraps
            np.testing.assert_array_equal(got.toarray(), dense.astype(got.dtype))


def _dense(x):
    return (x.toarray() if hasattr(x, "toarray") else np.asarray(x)).astype(np.float64)


def _scipy_product(W, other, left):
    S = W.to_scipy()
    o = other.to_scipy() if isinstance(other, BlockSparseMatrix) else other
    if S.dtype == np.int8 and o.dtype.kind in "iu":
        S = S.astype(np.int32)
    elif o.dtype == np.int8 and S.dtype.kind in "iu":
        o = o.astype(np.int32)
    return S @ o if left else o @ S


def test_int8_sparse_product_is_exact():
    W = BlockSparseMatrix(np.full((4, 4), 100, np.int8), blocksize=(2, 2))
    got = W @ sp.csr_array(np.full((4, 1), 100, np.int8))
    assert got.dtype == np.int32 and got.toarray()[0, 0] == 40000  # SciPy's int8 wraps
    assert (sp.csr_array(np.full((1, 4), 100, np.int8)) @ W).toarray()[0, 0] == 40000


def test_sparse_product_errors_are_scipys():
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension mismatch"):
        W @ sp.csr_array(np.ones((3, 2)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        sp.csr_array(np.ones((2, 3))) @ W
    # np.dot and np.matmul with a sparse left operand take the same path
    S = sp.csr_array(np.ones((2, 4)))
    same(np.dot(S, W), S @ W.to_scipy())
