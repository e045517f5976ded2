"""Stacked products (issue 13 item 3): ``W @ X`` for X (..., K, N), ``x @ W`` and
``linear`` for x (..., K), ``QuantizedMatrix.T``/``toarray``, ``linear`` with a
float ``BlockSparseMatrix``.

The rule: a stacked product is the 2-D product of each matrix of the stack
(NumPy's ``matmul``), bit for bit, on every ISA variant and thread count;
integer results are also checked against NumPy int64.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import erf

import blocksparse
from blocksparse import BlockSparseMatrix, QuantizedTranspose
from reference import int_matmul_i32
from strategies import bcsr_matrices, draw_values, per_variant_settings

fixture_settings = per_variant_settings()
LEADS = [(2,), (3, 2), (1,), (0,), (2, 0, 3), (1, 1, 2)]
N_SMALL = [1, 3, 16, 17]


def _stack(draw, lead, rows, cols, dtype, layout):
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = draw_values(gen, lead + (rows, cols), dtype, draw(st.sampled_from(["uniform", "mixed"])))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]  # same values, not contiguous
    return a


@st.composite
def stacked_cases(draw, wdtype, xdtype):
    W = draw(bcsr_matrices(wdtype, max_block_rows=4, max_block_cols=5))
    lead = draw(st.sampled_from(LEADS))
    layout = draw(st.sampled_from(["c", "c", "fortran", "strided"]))
    X = _stack(draw, lead, W.shape[1], draw(st.sampled_from(N_SMALL)), xdtype, layout)
    x = _stack(draw, lead, draw(st.sampled_from(N_SMALL)), W.shape[0], xdtype, layout)
    return W, X, x


def check_stacked(W, X, x):
    M, K = W.shape
    Y = W @ X
    assert Y.shape == X.shape[:-2] + (M, X.shape[-1])
    for idx in np.ndindex(X.shape[:-2]):
        np.testing.assert_array_equal(Y[idx], W @ X[idx], strict=True)
    Z = x @ W
    assert Z.shape == x.shape[:-1] + (K,)
    for idx in np.ndindex(x.shape[:-2]):
        np.testing.assert_array_equal(Z[idx], x[idx] @ W, strict=True)
    np.testing.assert_array_equal(np.matmul(W, X), Y, strict=True)
    return Y, Z


@fixture_settings
@given(case=stacked_cases(np.float32, np.float32))
def test_float_stacks_equal_the_2d_products(isa, num_threads, case):
    W, X, x = case
    Y, Z = check_stacked(W, X, x)
    A = W.toarray()
    # float32 sums in another order differ by a few ulps of the sum of |terms|
    assert_close_to_sum(Y, np.matmul(A, X), np.matmul(np.abs(A), np.abs(X)))
    assert_close_to_sum(Z, np.matmul(x, A), np.matmul(np.abs(x), np.abs(A)))


def assert_close_to_sum(actual, desired, abs_terms):
    bound = 1e-5 * abs_terms.astype(np.float64) + 1e-30
    np.testing.assert_array_less(np.abs(actual.astype(np.float64) - desired), bound)


@fixture_settings
@given(case=stacked_cases(np.float64, np.float32))
def test_float64_stacks(isa, case):
    W, X, x = case
    Y, Z = check_stacked(W, X, x)
    assert Y.dtype == Z.dtype == np.float64


@fixture_settings
@given(case=stacked_cases(np.int8, np.uint8))
def test_int8_stacks_exact(isa, num_threads, case):
    W, X, x = case
    Y, Z = check_stacked(W, X, x)
    D = W.toarray()
    for idx in np.ndindex(X.shape[:-2]):
        np.testing.assert_array_equal(Y[idx], int_matmul_i32(D, X[idx]), strict=True)
    for idx in np.ndindex(x.shape[:-2]):
        np.testing.assert_array_equal(Z[idx], int_matmul_i32(x[idx], D), strict=True)


@fixture_settings
@given(case=stacked_cases(np.int8, np.int8))
def test_int8_int8_stacks_exact(isa, case):
    check_stacked(*case)


def test_np_dot_keeps_its_axis_order(rng):
    W = BlockSparseMatrix(rng.standard_normal((8, 6)).astype(np.float32), blocksize=(4, 1))
    X = rng.standard_normal((3, 6, 5)).astype(np.float32)
    got = np.dot(W, X)
    assert got.shape == (8, 3, 5)
    np.testing.assert_allclose(got, np.dot(W.toarray(), X), rtol=1e-5, atol=1e-5)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(np.dot(x, W), np.dot(x, W.toarray()), rtol=1e-5, atol=1e-5)


# ---- QuantizedMatrix ------------------------------------------------------------------------

@st.composite
def quantized_cases(draw):
    W = draw(bcsr_matrices(np.float32, blocksizes=[(4, 1), (1, 4), (2, 2)], max_block_rows=4,
                           max_block_cols=6))
    lead = draw(st.sampled_from(LEADS))
    layout = draw(st.sampled_from(["c", "fortran", "strided"]))
    X = _stack(draw, lead, W.shape[1], draw(st.sampled_from(N_SMALL)), np.float32, layout)
    x = _stack(draw, lead, draw(st.sampled_from(N_SMALL)), W.shape[1], np.float32, layout)
    return blocksparse.quantize(W), X, x


@fixture_settings
@given(case=quantized_cases())
def test_quantized_stacks_equal_the_2d_calls(isa, num_threads, case):
    Q, X, x = case
    Y = Q @ X
    assert Y.shape == X.shape[:-2] + (Q.shape[0], X.shape[-1]) and Y.dtype == np.float32
    for idx in np.ndindex(X.shape[:-2]):  # each matrix quantized on its own
        np.testing.assert_array_equal(Y[idx], Q @ X[idx], strict=True)
    Z = x @ Q.T
    assert Z.shape == x.shape[:-1] + (Q.shape[0],)
    np.testing.assert_array_equal(Z, blocksparse.linear(x, Q), strict=True)
    n = int(np.prod(x.shape[:-1]))
    flat = blocksparse.linear(np.ascontiguousarray(x).reshape(n, Q.shape[1]), Q)
    np.testing.assert_array_equal(Z.reshape(n, Q.shape[0]), flat, strict=True)
    for idx in np.ndindex(x.shape[:-2]):
        np.testing.assert_array_equal(Z[idx], blocksparse.linear(x[idx], Q), strict=True)


def test_quantized_transpose_and_toarray(rng):
    W = blocksparse.prune(rng.standard_normal((8, 12)).astype(np.float32), 0.5, blocksize=(4, 1))
    Q = blocksparse.quantize(W)
    T = Q.T
    assert isinstance(T, QuantizedTranspose) and T.T is Q and T.shape == (12, 8)
    assert np.transpose(Q).T is Q and Q.transpose().shape == (12, 8)
    D = Q.toarray()
    assert D.dtype == np.float32 and D.shape == (8, 12)
    np.testing.assert_array_equal(D, Q.dequantize().toarray(), strict=True)
    np.testing.assert_array_equal(
        D, (Q.weight.toarray().astype(np.float64) * Q.scale[:, None]).astype(np.float32))
    np.testing.assert_array_equal(T.toarray(), D.T, strict=True)
    x = rng.standard_normal(12).astype(np.float32)
    np.testing.assert_array_equal(x @ Q.T, blocksparse.linear(x[None], Q)[0], strict=True)
    with pytest.raises(TypeError, match="Wq.T @ Y is not supported"):
        T @ np.ones((8, 2), np.float32)
    with pytest.raises(ValueError, match="axes must be None"):
        Q.transpose((0, 1))
    import pickle
    assert pickle.loads(pickle.dumps(T)).shape == (12, 8)


# ---- linear: stacked x, out=, static scales, float weights ----------------------------------

def test_linear_stacked_x_with_out_and_per_token_scales(rng):
    W = blocksparse.prune(rng.standard_normal((8, 12)).astype(np.float32), 0.5, blocksize=(4, 1))
    Q = blocksparse.quantize(W)
    x = rng.standard_normal((2, 3, 12)).astype(np.float32)
    out = np.empty((2, 3, 8), np.float32)
    y = blocksparse.linear(x, Q, bias=np.arange(8.0), activation="gelu", out=out)
    assert y is out
    np.testing.assert_array_equal(
        y.reshape(6, 8), blocksparse.linear(x.reshape(6, 12), Q, bias=np.arange(8.0),
                                            activation="gelu"), strict=True)
    xq, s, z = blocksparse.quantize_activations(x.reshape(6, 12))
    y8 = blocksparse.linear(xq.reshape(2, 3, 12), Q, x_scale=s.reshape(2, 3),
                            x_zero_point=z.reshape(2, 3))
    np.testing.assert_array_equal(y8.reshape(6, 8), blocksparse.linear(x.reshape(6, 12), Q))
    with pytest.raises(ValueError, match=r"x_scale must be a scalar or have shape \(2, 3\)"):
        blocksparse.linear(xq.reshape(2, 3, 12), Q, x_scale=s, x_zero_point=z.reshape(2, 3))
    with pytest.raises(ValueError, match=r"out must be a writable C-contiguous float32 array "
                                         r"of shape \(2, 3, 8\)"):
        blocksparse.linear(x, Q, out=np.empty((6, 8), np.float32))
    # per-tensor quantization spans the whole stack, as on the reshaped 2-D x
    np.testing.assert_array_equal(
        blocksparse.linear(x, Q, per_token=False).reshape(6, 8),
        blocksparse.linear(x.reshape(6, 12), Q, per_token=False), strict=True)


def _gelu(y):
    return y * (1 + erf(y / np.sqrt(2))) / 2


@fixture_settings
@given(W=bcsr_matrices(np.float32, max_block_rows=4, max_block_cols=5),
       lead=st.sampled_from([(), (3,), (2, 3), (0,)]),
       activation=st.sampled_from([None, "relu", "gelu"]), bias=st.booleans(),
       xdtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_linear_with_a_float_block_sparse_weight(isa, W, lead, activation, bias, xdtype, seed):
    gen = np.random.default_rng(seed)
    M, K = W.shape
    x = gen.standard_normal(lead + (K,)).astype(xdtype)
    b = gen.standard_normal(M).astype(np.float32) if bias else None
    y = blocksparse.linear(x, W, bias=b, activation=activation)
    want = np.dtype(np.result_type(W.dtype, xdtype))
    assert y.shape == lead + (M,) and y.dtype == want
    ref = x.astype(np.float64) @ W.toarray().astype(np.float64).T + (0 if b is None else b)
    ref = {None: ref, "relu": np.maximum(ref, 0), "gelu": _gelu(ref)}[activation]
    tol = 1e-4 if want == np.float32 else 1e-10
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * (1 + np.abs(ref).max(initial=0)))
    # the product part is the float kernel's x @ W.T itself
    if activation is None and b is None:
        np.testing.assert_array_equal(y, x @ W.T, strict=True)


def test_linear_float_weight_matches_nn_linear(rng):
    from blocksparse.nn import Linear
    W = blocksparse.prune(rng.standard_normal((16, 8)).astype(np.float32), 0.5, blocksize=(4, 1))
    b = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    got = blocksparse.linear(x, W, bias=b, activation="relu")
    np.testing.assert_allclose(got, Linear(W, b)(x, activation="relu"), rtol=1e-6, atol=1e-6)
