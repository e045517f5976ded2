"""Float products W @ X, X @ W and x @ W.T on every ISA and thread count.

Reference: float64 NumPy on the operands' exact values, with dtype-based
tolerances (reference.assert_float_product).  The product kernels use a
deterministic split, so 1 and 2 threads are compared bit for bit in
test_threads.py; here every (ISA, threads) pair is checked against NumPy.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix
from reference import (assert_float_product, assert_not_vacuous, float_matmul,
                       result_dtype)
from strategies import bcsr_matrices, dense_operands, per_variant_settings

# the isa/num_threads fixtures stay set for all examples of one test, as intended
fixture_settings = per_variant_settings()

FLOATS = [np.float32, np.float64]


@st.composite
def float_cases(draw, form):
    """(W, X) for one product form: "W@X", "X@W" or "x@W.T"."""
    wdt = draw(st.sampled_from(FLOATS))
    xdt = draw(st.sampled_from(FLOATS))
    W = draw(bcsr_matrices(wdt))
    M, K = W.shape
    if form == "W@X":
        X = draw(dense_operands(K, xdt))
    elif form == "X@W":
        X = draw(dense_operands(M, xdt, transposed=True))
    else:
        X = draw(dense_operands(K, xdt, transposed=True))
    return W, X


def check_product(W, X, form):
    D = W.toarray()
    X_before = X.copy()
    W_before = (W.data.copy(), W.indices.copy(), W.indptr.copy())
    if form == "W@X":
        Y = W @ X
        ref, absref = float_matmul(D, X)
        K = W.shape[1]
    elif form == "X@W":
        Y = X @ W
        ref, absref = float_matmul(X, D)
        K = W.shape[0]
    else:
        Y = X @ W.T
        ref, absref = float_matmul(X, D.T)
        K = W.shape[1]
    dtype = result_dtype(W.dtype, X.dtype)
    assert_float_product(Y, ref, absref, K, dtype, form)
    assert_not_vacuous(Y, ref, (K + 2) * np.finfo(dtype).eps * absref)
    # inputs untouched
    np.testing.assert_array_equal(X, X_before, strict=True)
    for a, b in zip((W.data, W.indices, W.indptr), W_before):
        np.testing.assert_array_equal(a, b, strict=True)
    return Y


@pytest.mark.parametrize("form", ["W@X", "X@W", "x@W.T"])
@fixture_settings
@given(case=st.data())
def test_products_match_numpy(isa, num_threads, form, case):
    W, X = case.draw(float_cases(form))
    assert blocksparse.get_isa() == isa
    check_product(W, X, form)


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (4, 4), (16, 1), (1, 1), (3, 2),
                                       (8, 8), (2, 16)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_products_fixed_shapes(isa, rng, blocksize, dtype):
    """Larger fixed shapes: K and N across vector, tile and 64-row panel edges.

    (Thread counts on these shapes: test_threads.py, bit for bit.)
    """
    R, C = blocksize
    M, K = 48 * R, 40 * C
    D = rng.standard_normal((M, K)).astype(dtype)
    D[rng.random((M, K)) < 0.6] = 0
    W = blocksparse.prune(D, 0.7, blocksize=blocksize)
    assert W.nnzb
    for N in (1, 17, 64, 129):
        check_product(W, rng.standard_normal((K, N)).astype(dtype), "W@X")
        check_product(W, rng.standard_normal((N, M)).astype(dtype), "X@W")
        check_product(W, rng.standard_normal((N, K)).astype(dtype), "x@W.T")


@pytest.mark.parametrize("dtype", FLOATS)
def test_one_dimensional_operands(isa, rng, dtype):
    D = rng.standard_normal((12, 20)).astype(dtype)
    D[4:8] = 0
    W = BlockSparseMatrix(D, blocksize=(4, 2))
    x = rng.standard_normal(20).astype(dtype)
    y = rng.standard_normal(12).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    r = W @ x
    assert r.shape == (12,) and r.dtype == dtype
    np.testing.assert_allclose(r, D @ x, **tol)
    r = y @ W
    assert r.shape == (20,) and r.dtype == dtype
    np.testing.assert_allclose(r, y @ D, **tol)
    r = x @ W.T
    assert r.shape == (12,) and r.dtype == dtype
    np.testing.assert_allclose(r, x @ D.T, **tol)
    np.testing.assert_allclose(W.dot(x), D @ x, **tol)
    # plain lists are operands too
    np.testing.assert_allclose(W @ x.tolist(), D.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M,K,N", [(0, 8, 5), (8, 0, 5), (8, 8, 0), (0, 0, 0), (4, 0, 0),
                                   (0, 4, 0)])
def test_zero_size_shapes(isa, M, K, N, dtype):
    W = BlockSparseMatrix(np.ones((M, K), dtype), blocksize=(4, 4) if M and K else (1, 1))
    Y = W @ np.ones((K, N), dtype)
    assert Y.shape == (M, N) and Y.dtype == dtype
    np.testing.assert_array_equal(Y, np.full((M, N), K, dtype))
    Y = np.ones((N, M), dtype) @ W
    assert Y.shape == (N, K) and Y.dtype == dtype
    np.testing.assert_array_equal(Y, np.full((N, K), M, dtype))
    Y = np.ones((N, K), dtype) @ W.T
    assert Y.shape == (N, M)
    np.testing.assert_array_equal(Y, np.full((N, M), K, dtype))
    assert (W @ np.ones(K, dtype)).shape == (M,)


def test_all_empty_matrix_gives_zeros(isa):
    W = BlockSparseMatrix((16, 32), blocksize=(4, 1), dtype=np.float32)
    X = np.full((32, 7), np.float32(3))
    Y = W @ X
    np.testing.assert_array_equal(Y, np.zeros((16, 7), np.float32), strict=True)
    np.testing.assert_array_equal(X.T @ W.T, np.zeros((7, 16), np.float32), strict=True)


# NumPy's promotion for each (storage dtype, operand dtype) pair
PROMOTION_CASES = [(w, x) for w in (np.float32, np.float64)
                   for x in (np.float16, np.float32, np.float64, np.int8, np.uint8,
                             np.int16, np.int32, np.int64, np.bool_)]
PROMOTION_CASES += [(np.int8, np.float32), (np.int8, np.float64), (np.int8, np.float16)]


@pytest.mark.parametrize("wdt,xdt", PROMOTION_CASES)
def test_result_dtype_follows_numpy(wdt, xdt, rng):
    D = rng.integers(-3, 4, (8, 8)).astype(wdt)
    W = BlockSparseMatrix(D, blocksize=(2, 2))
    X = rng.integers(0, 2, (8, 3)).astype(xdt)
    for Y, ref in ((W @ X, D @ X), (X.T @ W, X.T @ D), (X.T @ W.T, X.T @ D.T)):
        # no half-precision kernel: where NumPy would give float16 the product
        # is computed and returned in float32 (undocumented in the package)
        expected = np.float32 if ref.dtype == np.float16 else ref.dtype
        assert Y.dtype == expected, (wdt, xdt)
        np.testing.assert_allclose(Y, ref, rtol=1e-3)


@pytest.mark.parametrize("dtype", FLOATS)
def test_strided_operands_are_handled(isa, rng, dtype):
    """Non-contiguous, negative-stride, Fortran, read-only, byte-swapped: right answer."""
    D = rng.standard_normal((8, 12)).astype(dtype)
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    base = rng.standard_normal((24, 10)).astype(dtype)
    readonly = base[:12].copy()
    readonly.flags.writeable = False
    variants = {
        "every other row": base[::2],
        "negative rows": base[::-2],
        "negative cols": base[:12, ::-1],
        "fortran": np.asfortranarray(base[:12]),
        "readonly": readonly,
        "byteswapped": base[:12].astype(np.dtype(dtype).newbyteorder()),
        "column slice": base[:12, 3:7],
    }
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name, X in variants.items():
        before = X.copy()
        np.testing.assert_allclose(W @ X, D @ X.astype(dtype), rtol=tol, atol=tol,
                                   err_msg=name)
        np.testing.assert_allclose(X.T @ W.T, X.astype(dtype).T @ D.T, rtol=tol, atol=tol,
                                   err_msg=name)
        np.testing.assert_array_equal(X, before, err_msg=name)
    Y = rng.standard_normal((20, 16)).astype(dtype)[::-2, ::2]
    np.testing.assert_allclose(Y @ W, Y @ D, rtol=tol, atol=tol)


def test_isas_agree_within_tolerance(rng):
    """The float kernels of every ISA give the same answer within float32 rounding."""
    D = rng.standard_normal((64, 96)).astype(np.float32)
    W = blocksparse.prune(D, 0.5, blocksize=(4, 1))
    X = rng.standard_normal((96, 33)).astype(np.float32)
    ref, absref = float_matmul(W.toarray(), X)
    for isa in blocksparse.available_isas():
        with blocksparse.isa_context(isa):
            assert_float_product(W @ X, ref, absref, 96, np.float32, isa)
            assert_float_product(X.T @ W.T, ref.T, absref.T, 96, np.float32, isa)


def test_nan_and_inf_propagate(isa):
    D = np.zeros((4, 4), np.float32)
    D[0, 0] = np.nan
    D[1, 1] = np.inf
    D[2, 2] = 1.0
    W = BlockSparseMatrix(D, blocksize=(1, 1))
    Y = W @ np.ones((4, 3), np.float32)
    assert np.all(np.isnan(Y[0])) and np.all(np.isposinf(Y[1]))
    np.testing.assert_array_equal(Y[2:], [[1, 1, 1], [0, 0, 0]])
