"""BlockSparseMatrix: constructors, attributes, conversions and arithmetic.

scipy.sparse.bsr_array is the reference for structure and conversions only
(STYLE.md section 5); values are checked against NumPy.
"""
import copy
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix
from strategies import bcsr_matrices

DTYPES = [np.float32, np.float64, np.int8]
any_matrix = st.sampled_from(DTYPES).flatmap(lambda dt: bcsr_matrices(dt))


def snapshot(W):
    return W.data.copy(), W.indices.copy(), W.indptr.copy()


def assert_same_arrays(W, snap):
    for a, b in zip((W.data, W.indices, W.indptr), snap):
        np.testing.assert_array_equal(a, b, strict=True)


def assert_structure_matches_scipy(W, S):
    """Same blocks, columns and offsets as a scipy bsr_array (structure only)."""
    assert W.shape == S.shape
    assert W.blocksize == S.blocksize
    np.testing.assert_array_equal(W.indptr, S.indptr)
    np.testing.assert_array_equal(W.indices, S.indices)
    np.testing.assert_array_equal(W.data, S.data)


def expected_dense(W):
    """Dense matrix rebuilt from the raw arrays with plain loops."""
    M, K = W.shape
    R, C = W.blocksize
    D = np.zeros((M, K), dtype=W.dtype)
    for i in range(M // R):
        for j in range(W.indptr[i], W.indptr[i + 1]):
            c = W.indices[j]
            D[i * R:(i + 1) * R, c * C:(c + 1) * C] = W.data[j]
    return D


# ---- constructors ----------------------------------------------------------------

@given(any_matrix)
def test_attributes_consistent(W):
    M, K = W.shape
    R, C = W.blocksize
    assert W.ndim == 2
    assert M % R == 0 and K % C == 0
    assert W.data.shape == (W.nnzb, R, C)
    assert W.indices.shape == (W.nnzb,)
    assert W.indptr.shape == (M // R + 1,)
    assert W.nnz == W.nnzb * R * C
    total = (M // R) * (K // C)
    assert W.density == (W.nnzb / total if total else 0.0)
    assert 0.0 <= W.density <= 1.0
    assert W.dtype == W.data.dtype
    assert W.indices.dtype in (np.int32, np.int64) and W.indptr.dtype == W.indices.dtype
    for a in (W.data, W.indices, W.indptr):
        assert not a.flags.writeable
    W.check_format(full_check=True)


@given(any_matrix)
def test_toarray_matches_loops(W):
    D = W.toarray()
    assert D.dtype == W.dtype and D.shape == W.shape
    np.testing.assert_array_equal(D, expected_dense(W), strict=True)
    out = np.full(W.shape, 7, dtype=W.dtype)
    assert W.toarray(out=out) is out
    np.testing.assert_array_equal(out, D, strict=True)
    np.testing.assert_array_equal(W.todense(), D, strict=True)


@given(any_matrix)
def test_dense_constructor_round_trip(W):
    D = W.toarray()
    before = D.copy()
    V = BlockSparseMatrix(D, blocksize=W.blocksize)
    np.testing.assert_array_equal(D, before, strict=True)
    np.testing.assert_array_equal(V.toarray(), D, strict=True)
    # only blocks with a non-zero are kept from dense input
    assert V.nnzb == int(np.count_nonzero(np.any(W.data != 0, axis=(1, 2))))
    assert np.all(np.any(V.data != 0, axis=(1, 2)))
    V.check_format(full_check=True)


@given(any_matrix)
def test_to_scipy_and_back(W):
    snap = snapshot(W)
    S = W.to_scipy()
    assert isinstance(S, sp.bsr_array)
    assert_structure_matches_scipy(W, S)
    np.testing.assert_array_equal(S.toarray(), W.toarray(), strict=True)
    V = BlockSparseMatrix.from_scipy(S)
    assert V.blocksize == W.blocksize
    np.testing.assert_array_equal(V.toarray(), W.toarray(), strict=True)
    assert_same_arrays(W, snap)
    # the scipy arrays are copies: changing them leaves W alone
    if S.data.size:
        S.data[...] = 1
    assert_same_arrays(W, snap)


@given(any_matrix)
def test_from_scipy_formats_match_bsr_array(W):
    D = W.toarray()
    ref = sp.bsr_array(D, blocksize=W.blocksize)
    for fmt in ("csr", "csc", "coo", "lil", "dok"):
        S = sp.csr_array(D).asformat(fmt)
        V = BlockSparseMatrix(S, blocksize=W.blocksize)
        assert V.dtype == W.dtype
        np.testing.assert_array_equal(V.toarray(), D, strict=True)
        # the same non-zero blocks as scipy's own conversion
        keep = np.any(ref.data != 0, axis=(1, 2))
        nz = np.any(V.data != 0, axis=(1, 2))
        assert int(nz.sum()) == int(keep.sum())


def test_from_scipy_sums_duplicates_and_sorts():
    row = np.array([0, 0, 1, 0])
    col = np.array([3, 1, 2, 3])
    val = np.array([1.0, 2.0, 3.0, 4.0])
    S = sp.coo_array((val, (row, col)), shape=(2, 4))
    V = BlockSparseMatrix(S, blocksize=(1, 1))
    np.testing.assert_array_equal(V.toarray(), S.toarray())
    assert V.toarray()[0, 3] == 5.0
    V.check_format(full_check=True)
    # an unsorted, duplicated csr is canonicalized
    C = sp.csr_array((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3])),
                     shape=(1, 4))
    V = BlockSparseMatrix(C, blocksize=(1, 2))
    np.testing.assert_array_equal(V.toarray(), [[2.0, 0.0, 4.0, 0.0]])
    V.check_format(full_check=True)


def test_from_scipy_default_blocksize():
    D = np.arange(48, dtype=np.float64).reshape(8, 6)
    assert BlockSparseMatrix(sp.bsr_array(D, blocksize=(2, 3))).blocksize == (2, 3)
    assert BlockSparseMatrix(sp.csr_array(D)).blocksize == (4, 1)
    assert BlockSparseMatrix(sp.csr_matrix(D[:6])).blocksize == (1, 1)
    assert BlockSparseMatrix(D).blocksize == (4, 1)
    assert BlockSparseMatrix(D[:3]).blocksize == (1, 1)
    # a different blocksize converts a BSR input
    V = BlockSparseMatrix(sp.bsr_array(D, blocksize=(2, 3)), blocksize=(4, 2))
    assert V.blocksize == (4, 2)
    np.testing.assert_array_equal(V.toarray(), D)


def test_from_scipy_matrix_and_array_classes():
    D = np.eye(4, dtype=np.float32)
    for S in (sp.csr_matrix(D), sp.csr_array(D), sp.bsr_matrix(D, blocksize=(2, 2)),
              sp.dia_array(D), sp.csc_matrix(D)):
        V = BlockSparseMatrix.from_scipy(S, blocksize=(2, 2))
        np.testing.assert_array_equal(V.toarray(), D, strict=True)


@given(any_matrix)
def test_triple_constructor_copies_inputs(W):
    data = np.array(W.data)
    indices = np.array(W.indices)
    indptr = np.array(W.indptr)
    saved = (data.copy(), indices.copy(), indptr.copy())
    V = BlockSparseMatrix((data, indices, indptr), shape=W.shape)
    assert V.blocksize == W.blocksize  # taken from data's block shape
    np.testing.assert_array_equal(V.toarray(), W.toarray(), strict=True)
    # the caller's arrays are neither modified nor shared
    for a, b in zip((data, indices, indptr), saved):
        np.testing.assert_array_equal(a, b, strict=True)
    assert not np.shares_memory(V.data, data)
    if data.size:
        data[...] = 1
        np.testing.assert_array_equal(V.toarray(), W.toarray(), strict=True)


def test_triple_constructor_blocksize_argument_and_lists():
    V = BlockSparseMatrix(([[[1.0], [2.0]]], [1], [0, 1]), shape=(2, 3), blocksize=(2, 1))
    np.testing.assert_array_equal(V.toarray(), [[0, 1, 0], [0, 2, 0]])
    assert V.dtype == np.float64
    # zero blocks: the blocksize must be given
    V = BlockSparseMatrix((np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int32),
                           np.zeros(3, np.int32)), shape=(4, 6))
    assert V.blocksize == (2, 2) and V.nnzb == 0 and V.dtype == np.float32


@pytest.mark.parametrize("dtype", [None, np.float32, np.float64, np.int8])
@pytest.mark.parametrize("shape,blocksize", [((0, 0), (1, 1)), ((8, 12), (4, 1)),
                                             ((8, 12), (1, 4)), ((0, 16), (4, 4)),
                                             ((16, 0), (16, 1)), ((6, 4), None)])
def test_empty_constructor(shape, blocksize, dtype):
    W = BlockSparseMatrix(shape, blocksize=blocksize, dtype=dtype)
    assert W.shape == shape
    assert W.dtype == (np.float64 if dtype is None else dtype)
    assert W.nnzb == W.nnz == 0
    assert W.density == 0.0
    if blocksize is not None:
        assert W.blocksize == blocksize
    np.testing.assert_array_equal(W.toarray(), np.zeros(shape, W.dtype), strict=True)
    W.check_format(full_check=True)


@given(any_matrix)
def test_copy_constructor_and_copy(W):
    for V in (BlockSparseMatrix(W), W.copy(), copy.copy(W), copy.deepcopy(W)):
        assert V.shape == W.shape and V.blocksize == W.blocksize and V.dtype == W.dtype
        np.testing.assert_array_equal(V.toarray(), W.toarray(), strict=True)
    C = W.copy()
    assert C is not W and not np.shares_memory(C.data, W.data)


def test_copy_constructor_with_blocksize_and_dtype():
    D = np.arange(32, dtype=np.float32).reshape(4, 8) - 16
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    V = BlockSparseMatrix(W, blocksize=(2, 4))
    assert V.blocksize == (2, 4)
    np.testing.assert_array_equal(V.toarray(), D)
    V = BlockSparseMatrix(W, dtype=np.int8)
    assert V.dtype == np.int8
    np.testing.assert_array_equal(V.toarray(), D.astype(np.int8))
    assert W.dtype == np.float32


def test_dense_constructor_dtypes_and_inputs():
    D = [[1, 0], [0, 2]]
    # a list becomes int64, which is not a storage dtype: refused, not silently cast
    with pytest.raises(TypeError, match="int64 is not supported.*pass dtype="):
        BlockSparseMatrix(D, blocksize=(1, 1))
    for dt in (np.float32, np.float64, np.int8):
        W = BlockSparseMatrix(D, blocksize=(1, 1), dtype=dt)
        assert W.dtype == dt
        np.testing.assert_array_equal(W.toarray(), np.array(D, dt), strict=True)
    W = BlockSparseMatrix([[1.5, 0.0]], blocksize=(1, 1))
    assert W.dtype == np.float64


def test_dense_constructor_matrix_and_nan_blocks():
    with pytest.warns(PendingDeprecationWarning):
        D = np.matrix([[0.0, np.nan], [0.0, 0.0]])
    W = BlockSparseMatrix(D, blocksize=(1, 1))
    assert W.nnzb == 1  # NaN blocks are stored
    assert np.isnan(W.toarray()[0, 1])


def test_dense_int8_cast_exact():
    D = np.array([[1.0, -128.0], [127.0, 0.0]])
    W = BlockSparseMatrix(D, blocksize=(1, 1), dtype=np.int8)
    np.testing.assert_array_equal(W.toarray(), D.astype(np.int8), strict=True)


# ---- transpose, astype, arithmetic ----------------------------------------------------

@given(any_matrix)
def test_transpose(W):
    snap = snapshot(W)
    T = W.transpose()
    assert T is W.T
    assert T.T is W
    assert T.shape == W.shape[::-1]
    assert T.blocksize == W.blocksize[::-1]
    assert W.transpose(axes=(1, 0)) is T
    np.testing.assert_array_equal(T.toarray(), W.toarray().T, strict=True)
    T.check_format(full_check=True)
    assert_structure_matches_scipy(T, sp.bsr_array(W.to_scipy().T))
    assert_same_arrays(W, snap)


@given(bcsr_matrices(np.int8))
def test_astype(W):
    D = W.toarray()
    for dt in (np.float32, np.float64):
        V = W.astype(dt)
        assert V.dtype == dt and V.blocksize == W.blocksize
        np.testing.assert_array_equal(V.toarray(), D.astype(dt), strict=True)
        B = V.astype(np.int8)
        np.testing.assert_array_equal(B.toarray(), D, strict=True)
    same = W.astype(np.int8)
    assert same is not W
    np.testing.assert_array_equal(same.toarray(), D, strict=True)
    assert W.astype(np.int8, copy=False) is W
    assert W.astype("float32").dtype == np.float32


@given(any_matrix, st.sampled_from([2, -1, 0.5, 3.0, np.float32(2.5), 1]))
def test_scalar_mul_div(W, c):
    D = W.toarray()
    snap = snapshot(W)
    exp_mul = D * c
    exp_div = D / c
    fits = exp_mul.dtype != np.int8 or np.array_equal(D.astype(np.int64) * int(c), exp_mul)
    if fits:
        for res in (W * c, c * W):
            assert res.dtype == exp_mul.dtype
            np.testing.assert_array_equal(res.toarray(), exp_mul, strict=True)
    else:
        with pytest.raises(OverflowError, match="overflows int8"):
            W * c
    res = W / c
    assert res.dtype == exp_div.dtype
    np.testing.assert_array_equal(res.toarray(), exp_div, strict=True)
    assert_same_arrays(W, snap)


@given(any_matrix)
def test_negation(W):
    D = W.toarray()
    if W.dtype == np.int8 and W.nnz and D.min() == -128:
        with pytest.raises(OverflowError, match="negation overflows int8"):
            -W
        return
    N = -W
    assert N.dtype == W.dtype
    np.testing.assert_array_equal(N.toarray(), -D, strict=True)
    np.testing.assert_array_equal((+W).toarray(), D, strict=True)


def test_int8_overflow_refused():
    W = BlockSparseMatrix(np.array([[100, -128]], np.int8), blocksize=(1, 1))
    with pytest.raises(OverflowError, match="multiplication by 2 overflows int8"):
        W * 2
    with pytest.raises(OverflowError, match="negation"):
        -W


@given(any_matrix, st.sampled_from([None, 0, 1, -1, -2]))
def test_sum(W, axis):
    D = W.toarray()
    got = W.sum(axis=axis)
    exp = D.sum(axis=axis)
    assert np.asarray(got).dtype == exp.dtype
    assert np.shape(got) == np.shape(exp)
    if W.dtype == np.int8:
        np.testing.assert_array_equal(got, exp, strict=True)
    else:
        # summation order differs from NumPy's pairwise sum
        absum = np.abs(D.astype(np.float64)).sum(axis=axis)
        eps = np.finfo(W.dtype).eps
        assert np.all(np.abs(np.asarray(got, np.float64) - exp) <=
                      (D.size + 2) * eps * absum + 1e-30)


def test_sum_dtype_argument():
    W = BlockSparseMatrix(np.full((4, 4), 100, np.int8), blocksize=(2, 2))
    assert W.sum() == 1600 and W.sum().dtype == np.int64
    assert W.sum(dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(W.sum(axis=0, dtype=np.int32), np.full(4, 400, np.int32),
                                  strict=True)


# ---- check_format, repr, pickling -------------------------------------------------

@given(any_matrix)
def test_check_format_accepts_valid(W):
    assert W.check_format() is None
    assert W.check_format(full_check=True) is None


def test_repr():
    W = BlockSparseMatrix(np.eye(8, dtype=np.float32), blocksize=(4, 4))
    assert repr(W) == ("<BlockSparseMatrix of shape (8, 8), dtype float32, blocksize (4, 4), "
                       "2 stored blocks (50.0% dense)>")
    E = BlockSparseMatrix((0, 4), blocksize=(1, 4), dtype=np.int8)
    assert repr(E) == ("<BlockSparseMatrix of shape (0, 4), dtype int8, blocksize (1, 4), "
                       "0 stored blocks (0.0% dense)>")


@given(any_matrix)
def test_pickle_round_trip(W):
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        V = pickle.loads(pickle.dumps(W, protocol=proto))
        assert V.shape == W.shape and V.blocksize == W.blocksize and V.dtype == W.dtype
        np.testing.assert_array_equal(V.data, W.data, strict=True)
        np.testing.assert_array_equal(V.indices, W.indices)
        np.testing.assert_array_equal(V.indptr, W.indptr)
        assert not V.data.flags.writeable


def test_pickle_keeps_working_after_transpose_and_product():
    W = BlockSparseMatrix(np.arange(16, dtype=np.float32).reshape(4, 4), blocksize=(2, 2))
    W.T
    W @ np.ones(4, np.float32)
    V = pickle.loads(pickle.dumps(W))
    np.testing.assert_array_equal(V.T.toarray(), W.T.toarray())


def test_issparse_block_and_unsupported():
    W = BlockSparseMatrix(np.eye(4), blocksize=(2, 2))
    assert blocksparse.issparse_block(W)
    assert not blocksparse.issparse_block(W.toarray())
    with pytest.raises(TypeError, match="length is ambiguous"):
        len(W)
    # issue 13: sparse @ sparse is SciPy's product, with SciPy's result type
    assert type(W @ W) is sp.bsr_array and type(sp.csr_array(np.eye(4)) @ W) is sp.csr_array
    np.testing.assert_array_equal((W @ W).toarray(), np.eye(4))
    with pytest.raises(TypeError, match="scalars only"):
        W * np.ones(4)
    with pytest.raises(TypeError, match="scalars only"):
        W * W


def test_check_format_cheap_and_full_checks():
    """The O(1) checks always run; index scans only with full_check=True."""
    W = BlockSparseMatrix(np.ones((2, 6), np.float32), blocksize=(1, 2))
    W._indices = np.array([2, 1, 0, 0, 1, 2], dtype=W.indices.dtype)  # unsorted row 0
    W.check_format()
    with pytest.raises(ValueError, match="indices must be sorted within each block row"):
        W.check_format(full_check=True)
    W._indices = np.array([0, 1, 2, 0, 1, 5], dtype=W.indices.dtype)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, K/C\) = \[0, 3\)"):
        W.check_format(full_check=True)
    W._indptr = np.array([0, 3, 7], dtype=W.indptr.dtype)
    with pytest.raises(ValueError, match="indptr must run from 0 to nnzb = 6"):
        W.check_format()
    W._indptr = np.array([0, 3], dtype=W.indptr.dtype)
    with pytest.raises(ValueError, match=r"indptr must have length M/R \+ 1 = 3"):
        W.check_format()
