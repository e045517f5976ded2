"""INT8 products: int8 W @ uint8/int8 X exactly in int32, on every ISA.

Reference: the int64 NumPy product (scipy's int8 product wraps around and is
never used for values).  Comparisons are exact and strict (dtype and shape).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix
from blocksparse._kernels import MAX_K_INT8
from reference import int_matmul_i32
from strategies import bcsr_matrices, dense_operands, draw_values, per_variant_settings

fixture_settings = per_variant_settings()

INT8_BLOCKSIZES = [(4, 1), (1, 4), (4, 1), (1, 4), (4, 4), (1, 1), (16, 1), (3, 2), (2, 8)]


@st.composite
def int8_cases(draw, xdtype=np.uint8):
    """(W, X (K, N), x (N, K)) with the VNNI shapes drawn most often."""
    W = draw(bcsr_matrices(np.int8, blocksizes=INT8_BLOCKSIZES, max_block_rows=8,
                           max_block_cols=40))
    K = W.shape[1]
    X = draw(dense_operands(K, xdtype))
    x = draw(dense_operands(K, xdtype, transposed=True))
    return W, X, x


def check_int8(W, X, x):
    D = W.toarray()
    saved = (W.data.copy(), X.copy(), x.copy())
    Y = W @ X
    np.testing.assert_array_equal(Y, int_matmul_i32(D, X), strict=True)
    Z = x @ W.T
    np.testing.assert_array_equal(Z, int_matmul_i32(x, D.T), strict=True)
    np.testing.assert_array_equal(W.data, saved[0], strict=True)
    np.testing.assert_array_equal(X, saved[1], strict=True)
    np.testing.assert_array_equal(x, saved[2], strict=True)
    return Y, Z


@fixture_settings
@given(case=int8_cases(np.uint8))
def test_int8_uint8_exact(isa, num_threads, case):
    check_int8(*case)


@fixture_settings
@given(case=int8_cases(np.int8))
def test_int8_int8_exact(isa, num_threads, case):
    check_int8(*case)


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (4, 4), (1, 1), (16, 1), (3, 2)])
@pytest.mark.parametrize("K", [4, 60, 64, 68, 1020, 4096])
def test_extreme_values_large_k(isa, num_threads, blocksize, K):
    """-128/127 weights against 0/255 activations: int16-saturating shortcuts fail here."""
    R, C = blocksize
    K = K // C * C
    M = 8 * R
    gen = np.random.default_rng(K + 1000 * R + C)
    D = gen.choice(np.array([-128, 127, -128, 0], np.int8), size=(M, K))
    D[:R] = -128                        # first strip: all -128
    D[R:2 * R] = 0                      # an empty block row
    W = BlockSparseMatrix(D, blocksize=blocksize)
    for N in (1, 16, 65):
        X = gen.choice(np.array([0, 255, 255], np.uint8), size=(K, N))
        X[:, 0] = 255
        Y, _ = check_int8(W, X, np.ascontiguousarray(X.T))
        assert Y[0, 0] == -128 * 255 * K
        Xs = gen.choice(np.array([-128, 127], np.int8), size=(K, N))
        check_int8(W, Xs, np.ascontiguousarray(Xs.T))


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4)])
def test_densities(isa, rng, blocksize, density):
    M, K = 64, 256
    D = rng.integers(-128, 128, (M, K)).astype(np.int8)
    P = blocksparse.prune(D, 1.0 - density, blocksize=blocksize)
    assert abs(P.density - density) <= 1 / 4096
    for N in (1, 15, 16, 17, 63, 64, 65, 127, 128, 129):
        X = rng.integers(0, 256, (K, N)).astype(np.uint8)
        check_int8(P, X, np.ascontiguousarray(X.T))


@pytest.mark.parametrize("blocksize,K", [((4, 1), MAX_K_INT8), ((1, 4), MAX_K_INT8 // 4 * 4),
                                         ((1, 1), MAX_K_INT8)])
def test_largest_exact_k(isa, blocksize, K):
    """At the documented limit the worst case still fits int32 exactly."""
    R, _ = blocksize
    W = BlockSparseMatrix(np.full((R, K), -128, np.int8), blocksize=blocksize)
    X = np.full((K, 2), 255, np.uint8)
    Y = W @ X
    assert Y.dtype == np.int32
    np.testing.assert_array_equal(Y, np.full((R, 2), -128 * 255 * K, np.int32), strict=True)
    np.testing.assert_array_equal(X.T @ W.T, Y.T, strict=True)
    assert -128 * 255 * K >= -2**31


def test_one_dimensional_and_empty(isa, rng):
    D = rng.integers(-128, 128, (8, 12)).astype(np.int8)
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    x = rng.integers(0, 256, 12).astype(np.uint8)
    y = W @ x
    np.testing.assert_array_equal(y, int_matmul_i32(D, x), strict=True)
    np.testing.assert_array_equal(x @ W.T, int_matmul_i32(D, x), strict=True)
    u = rng.integers(0, 256, 8).astype(np.uint8)
    np.testing.assert_array_equal(u @ W, int_matmul_i32(u, D), strict=True)
    for shape, N in (((0, 12), 3), ((8, 0), 3), ((8, 12), 0)):
        E = BlockSparseMatrix(np.ones(shape, np.int8), blocksize=(4, 1) if shape[0] else (1, 1))
        Y = E @ np.ones((shape[1], N), np.uint8)
        np.testing.assert_array_equal(Y, np.full((shape[0], N), shape[1], np.int32),
                                      strict=True)


def test_int8_matrix_with_float_operand_uses_float_path(rng):
    D = rng.integers(-128, 128, (8, 12)).astype(np.int8)
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    X = rng.standard_normal((12, 5)).astype(np.float32)
    Y = W @ X
    assert Y.dtype == np.float32
    np.testing.assert_allclose(Y, D.astype(np.float64) @ X, rtol=1e-5, atol=1e-3)


def test_operand_layouts(isa, rng):
    """Strided, negative-stride, read-only and Fortran uint8 operands: exact results."""
    D = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    W = BlockSparseMatrix(D, blocksize=(1, 4))
    base = rng.integers(0, 256, (64, 20)).astype(np.uint8)
    ro = base[:32].copy()
    ro.flags.writeable = False
    for X in (base[::2], base[::-2], base[:32, ::-1], np.asfortranarray(base[:32]), ro,
              base[:32, 5:9]):
        before = X.copy()
        np.testing.assert_array_equal(W @ X, int_matmul_i32(D, X), strict=True)
        np.testing.assert_array_equal(X.T @ W.T, int_matmul_i32(X.T, D.T), strict=True)
        np.testing.assert_array_equal(X, before)
    xs = base[:32].view(np.int8)[::-1]
    np.testing.assert_array_equal(W @ xs, int_matmul_i32(D, xs), strict=True)


@given(case=int8_cases(np.uint8), act=st.sampled_from([None, "relu", "gelu"]))
def test_all_isas_bit_identical(case, act):
    """int32 products and linear()'s float32 and uint8 outputs: same bits on every ISA."""
    W, X, _ = case
    if W.shape[0] == 0:
        return
    gen = np.random.default_rng(W.shape[0] * 131 + W.shape[1])
    Wf = W.toarray().astype(np.float32) * np.float32(0.01)
    Q = blocksparse.quantize(BlockSparseMatrix(Wf, blocksize=W.blocksize))
    xf = draw_values(gen, (X.shape[1], W.shape[1]), np.float32, "uniform")
    bias = gen.standard_normal(W.shape[0]).astype(np.float32)
    outs = {}
    for isa in blocksparse.available_isas():
        with blocksparse.isa_context(isa):
            outs[isa] = (W @ X, X.T @ W.T,
                         blocksparse.linear(xf, Q, bias, activation=act).view(np.int32),
                         blocksparse.linear(xf, Q, bias, activation=act, out_dtype="uint8",
                                            out_scale=0.05, out_zero_point=128))
    first = outs["scalar"]
    for isa, res in outs.items():
        for a, b in zip(res, first):
            np.testing.assert_array_equal(a, b, strict=True, err_msg=isa)


def test_kernel_names_cover_fast_paths(rng):
    """The (4, 1) and (1, 4) shapes reach the vector kernels on non-scalar ISAs."""
    from blocksparse import _kernels
    for isa_i, isa in enumerate(_kernels.ISA_NAMES):
        for bs, grouped, word in (((4, 1), True, "strip4x1"), ((1, 4), False, "row1x4"),
                                  ((4, 4), False, "scalar")):
            name = _kernels.qspmm_kernel_name(isa_i, bs, grouped)
            expect = "scalar" if isa == "scalar" else word
            assert expect in name, (isa, bs, name)
