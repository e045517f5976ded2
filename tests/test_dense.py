"""The dense INT8 kernel (``bsk_qgemm``) and the choice between it and the block-sparse one.

Integer results are compared with the int64 NumPy product; float32 and uint8
results with the block-sparse kernels' bits (the choice of kernel never
changes a result), on every ISA variant of this machine and thread count.
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix, _kernels, _pack
from blocksparse._packed import (DENSE_DENSITY, Epilogue, PackedWeight, QuantizedActivations,
                                 dense_density, matmul)
from reference import int_matmul, int_matmul_i32
from strategies import draw_values, per_variant_settings

fixture_settings = per_variant_settings()
MR = _kernels.QGEMM_MR

# rows around the 8-row blocks and 16-row pairs, K around the 4-byte groups and the
# 16-byte transposes, tokens around the 8/16-lane vectors, 48-token tiles, 512-token spans
M_EDGES = [13, 1, 8, 16, 7, 9, 15, 17, 24, 25, 33, 40]
K_EDGES = [37, 1, 2, 3, 4, 5, 15, 16, 17, 31, 64, 66, 0]
N_EDGES = [50, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 96, 97, 129, 0]


def packed_pair(D, blocksize=(1, 1), scale=None):
    """The dense and the block-sparse PackedWeight of int8 array D."""
    W = BlockSparseMatrix(D, blocksize=blocksize)
    scale = np.ones(D.shape[0], np.float32) if scale is None else scale
    return (PackedWeight.from_matrix(W, np.int8, scale=scale, dense=True),
            PackedWeight.from_matrix(W, np.int8, scale=scale))


def activations(q, zero=None, scale=None):
    """QuantizedActivations in both layouts from q (K, N)."""
    return (QuantizedActivations(q, scale, zero),
            QuantizedActivations(np.ascontiguousarray(q.T), scale, zero))


def expected_i32(D, q, zero):
    ref = int_matmul(D, q)
    if zero is not None:
        ref = ref - D.sum(axis=1, dtype=np.int64)[:, None] * zero[None, :].astype(np.int64)
    assert ref.size == 0 or (ref.min() >= -2**31 and ref.max() < 2**31)
    return ref.astype(np.int32)


def both_layouts(P, q, zero, dtype=np.int32, epi=None, scale=None):
    """(features result (M, N), tokens result transposed back to (M, N))."""
    M, N = P.shape[0], q.shape[1]
    feats, toks = activations(q, zero, scale)
    a = matmul(P, feats, np.empty((M, N), dtype), layout="features", epilogue=epi)
    b = matmul(P, toks, np.empty((N, M), dtype), layout="tokens", epilogue=epi)
    return a, b.T


@st.composite
def gemm_cases(draw):
    M = draw(st.sampled_from(M_EDGES))
    K = draw(st.sampled_from(K_EDGES))
    N = draw(st.sampled_from(N_EDGES))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    D = draw_values(gen, (M, K), np.int8, draw(st.sampled_from(["uniform", "extremes", "mixed"])))
    q = draw_values(gen, (K, N), np.uint8, draw(st.sampled_from(["uniform", "extremes",
                                                                 "ones", "zeros"])))
    zero = draw(st.sampled_from([None, "drawn"]))
    zero = None if zero is None else gen.integers(0, 256, N).astype(np.int32)
    return D, q, zero


@fixture_settings
@given(case=gemm_cases())
def test_exact_int32(isa, num_threads, case):
    D, q, zero = case
    P, _ = packed_pair(D)
    want = expected_i32(D, q, zero)
    for got in both_layouts(P, q, zero):
        np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize("K", [4, 63, 1020, 4099, _kernels.MAX_K_INT8])
def test_extreme_values_large_k(isa, num_threads, K):
    """-128 x 255 over the largest K that int32 holds: no int16 shortcut survives."""
    gen = np.random.default_rng(K)
    D = gen.choice(np.array([-128, 127, 0], np.int8), size=(17, K))
    D[0] = -128
    q = gen.choice(np.array([0, 255, 255], np.uint8), size=(K, 18))
    q[:, 0] = 255
    P, _ = packed_pair(D)
    for got in both_layouts(P, q, None):
        np.testing.assert_array_equal(got, expected_i32(D, q, None), strict=True)
        assert got[0, 0] == -128 * 255 * K


def test_row_chunks_and_spans(isa, num_threads):
    """Long K (row chunks of two blocks) and more than 512 tokens (two packing spans)."""
    gen = np.random.default_rng(7)
    for M, K, N in ((41, 16400, 3), (20, 9, 1100)):
        D = gen.integers(-128, 128, (M, K)).astype(np.int8)
        q = gen.integers(0, 256, (K, N)).astype(np.uint8)
        zero = gen.integers(0, 256, N).astype(np.int32)
        P, _ = packed_pair(D)
        for got in both_layouts(P, q, zero):
            np.testing.assert_array_equal(got, expected_i32(D, q, zero), strict=True)


def epilogues(M, gen):
    bias = gen.standard_normal(M).astype(np.float32)
    out = []
    for act in (None, "relu", "gelu"):
        out.append((np.float32, Epilogue(act, bias)))
        out.append((np.float32, Epilogue(act)))
        out.append((np.uint8, Epilogue(act, bias, 0.05, 100)))
    return out


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("density", [1.0, 0.6, 0.1])
def test_same_bits_as_the_sparse_kernels(isa, num_threads, blocksize, density):
    """Every output kind and activation, both layouts: dense == block-sparse, bit for bit."""
    gen = np.random.default_rng(int(density * 10) + blocksize[0])
    M, K, N = 48, 68 if blocksize[1] == 4 else 66, 37
    Wf = gen.standard_normal((M, K)).astype(np.float32)
    Q = blocksparse.quantize(blocksparse.prune(Wf, 1 - density, blocksize=blocksize),
                             dense=False)
    P = PackedWeight.from_matrix(Q.weight, np.int8, scale=Q.scale, dense=True)
    assert (P.format, Q.packed.format) == ("dense", "sparse")
    q = gen.integers(0, 256, (K, N)).astype(np.uint8)
    scale = gen.uniform(0.01, 0.1, N).astype(np.float32)
    zero = gen.integers(0, 256, N).astype(np.int32)
    for dtype, epi in [(np.int32, None)] + epilogues(M, gen):
        dense = both_layouts(P, q, zero, dtype, epi, scale)
        sparse = both_layouts(Q.packed, q, zero, dtype, epi, scale)
        with blocksparse.isa_context("scalar"):
            scalar = both_layouts(Q.packed, q, zero, dtype, epi, scale)
        for got in dense:
            np.testing.assert_array_equal(got, sparse[0], strict=True)
            np.testing.assert_array_equal(got, scalar[0], strict=True)


def test_thread_count_invariance(isa):
    gen = np.random.default_rng(3)
    M, K, N = 72, 50, 150
    D = gen.integers(-128, 128, (M, K)).astype(np.int8)
    q = gen.integers(0, 256, (K, N)).astype(np.uint8)
    scale = gen.uniform(0.01, 0.1, N).astype(np.float32)
    zero = gen.integers(0, 256, N).astype(np.int32)
    P, _ = packed_pair(D, scale=gen.uniform(0.01, 0.1, M).astype(np.float32))
    epi = Epilogue("gelu", gen.standard_normal(M).astype(np.float32))
    saved, saved_work = blocksparse.get_num_threads(), _kernels.set_min_work_per_thread(0)
    try:
        results = []
        for t in (1, 2, 3, 4, 7):
            blocksparse.set_num_threads(t)
            results.append(both_layouts(P, q, zero, np.float32, epi, scale))
    finally:
        _kernels.set_min_work_per_thread(saved_work)
        blocksparse.set_num_threads(saved)
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], results[0][0], strict=True)
        np.testing.assert_array_equal(got[1], results[0][1], strict=True)


def test_empty_operands(isa):
    gen = np.random.default_rng(1)
    for M, K, N in ((0, 5, 3), (5, 0, 3), (5, 4, 0), (0, 0, 0)):
        D = gen.integers(-128, 128, (M, K)).astype(np.int8)
        q = gen.integers(0, 256, (K, N)).astype(np.uint8)
        zero = np.full(N, 7, np.int32)
        P, _ = packed_pair(D)
        for got in both_layouts(P, q, zero):
            np.testing.assert_array_equal(got, expected_i32(D, q, zero), strict=True)
        bias = np.arange(M, dtype=np.float32)
        a, b = both_layouts(P, q, zero, np.float32, Epilogue(None, bias),
                            np.ones(N, np.float32))
        np.testing.assert_array_equal(a, np.broadcast_to(bias[:, None], (M, N)), strict=True)
        np.testing.assert_array_equal(b, a, strict=True)


# ---- the packed format --------------------------------------------------------------------

def test_panel_layout():
    D = np.arange(-60, 60, dtype=np.int8).reshape(10, 12)[:, :11]
    panel = _pack.dense_panel(np.ascontiguousarray(D), MR)
    G = 3
    assert panel.dtype == np.int32 and panel.shape == (2 * G * MR,)
    b = panel.view(np.int8).reshape(2, G, MR, 4)
    for m in range(10):
        for k in range(11):
            assert b[m // MR, k // 4, m % MR, k % 4] == D[m, k]
    assert not b[1, :, 2:].any() and not b[:, 2, :, 3].any()  # padding rows and column


def test_dense_packed_weight_is_owned_and_checked(rng):
    D = rng.integers(-128, 128, (12, 10)).astype(np.int8)
    P, S = packed_pair(D, blocksize=(4, 1))
    assert P.format == "dense" and S.format == "sparse"
    assert P.groups is None and S.groups is not None
    assert not P.panel.flags.writeable
    assert "dense panel" in repr(P)
    assert P.kernel_name(_kernels.ISA_NAMES.index("scalar")) == "bsk_qgemm_u8s8s32_scalar"
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    args = (W.shape, W.blocksize, W.indptr.astype(np.int32), W.indices.astype(np.int32),
            np.array(W.data))
    rowsum = D.sum(axis=1).astype(np.int32)
    with pytest.raises(ValueError, match="panel must be a contiguous 1-D int32 array of length"):
        PackedWeight(*args, rowsum=rowsum, panel=np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="panel must be a contiguous 1-D int32"):
        PackedWeight(*args, rowsum=rowsum, panel=P.panel.astype(np.int64))
    with pytest.raises(ValueError, match="groups, rowsum, scale and panel are for int8"):
        PackedWeight(W.shape, W.blocksize, *args[2:4], np.array(W.data, np.float32),
                     panel=P.panel)
    with pytest.raises(ValueError, match="dense packing is for int8 weights"):
        PackedWeight.from_matrix(W.astype(np.float32), np.float32, dense=True)


def test_dense_call_errors(rng):
    P, _ = packed_pair(rng.integers(-128, 128, (8, 12)).astype(np.int8))
    x = QuantizedActivations(np.zeros((12, 3), np.uint8), None, None)
    with pytest.raises(ValueError, match=r"out must have shape \(8, 3\)"):
        matmul(P, x, np.empty((3, 8), np.int32), layout="features")
    with pytest.raises(ValueError, match=r"x must have shape \(3, 12\)"):
        matmul(P, QuantizedActivations(np.zeros((3, 11), np.uint8), None, None),
               np.empty((3, 8), np.int32), layout="tokens")
    with pytest.raises(ValueError, match="need the weight's and x's scales"):
        matmul(P, x, np.empty((8, 3), np.float32), layout="features")


def test_c_kernel_refuses_large_k(monkeypatch):
    monkeypatch.setattr(_kernels, "MAX_K_INT8", 10**7)
    K = _kernels.MAX_K_INT8 + 1
    D = np.zeros((1, K), np.int8)
    P = PackedWeight(D.shape, (1, 1), np.array([0, 0], np.int32), np.zeros(0, np.int32),
                     np.zeros((0, 1, 1), np.int8), rowsum=np.zeros(1, np.int32),
                     panel=_pack.dense_panel(D, MR))
    x = QuantizedActivations(np.zeros((K, 2), np.uint8), None, None)
    with pytest.raises(OverflowError, match=r"bsk_qgemm.*int32 accumulation range exceeded"):
        matmul(P, x, np.empty((1, 2), np.int32), layout="features")


# ---- the choice -----------------------------------------------------------------------------

def test_quantize_chooses_by_density(rng):
    Wf = rng.standard_normal((32, 48)).astype(np.float32)
    assert blocksparse.quantize(Wf).format == "dense"
    sparse = blocksparse.prune(Wf, 0.9, blocksize=(4, 1))
    assert blocksparse.quantize(sparse).format == "sparse"
    assert blocksparse.quantize(sparse, dense=True).format == "dense"
    assert blocksparse.quantize(Wf, dense=False).format == "sparse"
    for bs, threshold in DENSE_DENSITY.items():
        if bs is None:
            continue
        assert dense_density(bs) == threshold
        above = blocksparse.prune(Wf, max(0.0, 1 - threshold - 0.05), blocksize=bs)
        below = blocksparse.prune(Wf, 1 - threshold + 0.05, blocksize=bs)
        assert above.density >= threshold > below.density
        assert blocksparse.quantize(above).format == "dense"
        assert blocksparse.quantize(below).format == "sparse"
    assert dense_density((2, 2)) == DENSE_DENSITY[None]
    Q = blocksparse.quantize(Wf)
    assert "dense kernel" in repr(Q)
    with pytest.raises(TypeError, match="dense must be True, False or None"):
        blocksparse.quantize(Wf, dense="yes")


def test_the_choice_never_changes_results(rng):
    Wf = rng.standard_normal((24, 40)).astype(np.float32)
    x = rng.standard_normal((9, 40)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    D, S = blocksparse.quantize(Wf, dense=True), blocksparse.quantize(Wf, dense=False)
    for kw in ({"activation": "gelu"}, {"out_dtype": "uint8", "out_scale": 0.1,
                                        "out_zero_point": 128}):
        np.testing.assert_array_equal(blocksparse.linear(x, D, bias, **kw),
                                      blocksparse.linear(x, S, bias, **kw), strict=True)
    X = rng.standard_normal((40, 5)).astype(np.float32)
    np.testing.assert_array_equal(D @ X, S @ X, strict=True)
    Xi = rng.integers(0, 256, (40, 5)).astype(np.uint8)
    np.testing.assert_array_equal(D.weight @ Xi, S.weight @ Xi, strict=True)
    np.testing.assert_array_equal(D.weight @ Xi, int_matmul_i32(D.weight.toarray(), Xi),
                                  strict=True)


def test_pickle_keeps_the_choice(rng):
    Wf = rng.standard_normal((8, 8)).astype(np.float32)
    for dense in (True, False):
        Q = pickle.loads(pickle.dumps(blocksparse.quantize(Wf, dense=dense)))
        assert Q.format == ("dense" if dense else "sparse")


def test_environment_override(monkeypatch, rng):
    Wf = rng.standard_normal((16, 16)).astype(np.float32)
    monkeypatch.setenv("BLOCKSPARSE_DENSE_DENSITY", "1.5")
    assert blocksparse.quantize(Wf).format == "sparse"
    monkeypatch.setenv("BLOCKSPARSE_DENSE_DENSITY", "0")
    assert blocksparse.quantize(blocksparse.prune(Wf, 0.9)).format == "dense"
    monkeypatch.setenv("BLOCKSPARSE_DENSE_DENSITY", "many")
    with pytest.warns(RuntimeWarning, match="BLOCKSPARSE_DENSE_DENSITY='many'"):
        assert dense_density((4, 1)) == DENSE_DENSITY[(4, 1)]


def test_nn_int8_linear_chooses_per_layer(rng):
    from blocksparse.nn import Linear
    w = rng.standard_normal((16, 24)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dense = Linear.from_dense(w, b, dtype="int8")
    sparse = Linear.from_dense(w, b, sparsity=0.9, dtype="int8")
    assert dense.weight.format == "dense" and sparse.weight.format == "sparse"
    x = rng.standard_normal((3, 5, 24)).astype(np.float32)
    forced = Linear(blocksparse.quantize(w, blocksize=(4, 1), dense=False), b)
    np.testing.assert_array_equal(dense(x, "gelu"), forced(x, "gelu"), strict=True)


def test_verbose_names_the_dense_kernel(rng):
    code = ("import numpy as np, blocksparse\n"
            "Q = blocksparse.quantize(np.ones((8, 8), np.float32))\n"
            "Q @ np.ones((8, 2), np.float32)\n")
    env = dict(os.environ, BLOCKSPARSE_VERBOSE="1", BLOCKSPARSE_ISA="scalar")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stderr
    assert "bsk_qgemm_u8s8s32_scalar [scalar] M=8 K=8 N=2" in err
