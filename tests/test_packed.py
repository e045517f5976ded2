"""blocksparse._packed: the packed weight (owned, read-only, checked once) and the one call path.

PackedWeight checks its whole block structure when it is made and never
again, so what it holds must be its own: these tests check that it refuses
bad arrays, that its arrays are read-only and not the matrix's, that the
products read the packed copy (so a matrix whose index array is written
through a re-enabled flag still cannot send a kernel out of bounds), and
that ``matmul`` gives the same numbers in both layouts and every output kind.
"""
import numpy as np
import pytest

import blocksparse
from blocksparse import BlockSparseMatrix, _pack
from blocksparse._packed import (Epilogue, PackedWeight, QuantizedActivations, matmul)
from reference import int_matmul_i32


def int8_matrix(rng, M=16, K=24, blocksize=(4, 1), density=0.5):
    D = rng.integers(-128, 128, (M, K)).astype(np.int8)
    R, C = blocksize
    keep = np.repeat(np.repeat(rng.random((M // R, K // C)) < density, R, 0), C, 1)
    return BlockSparseMatrix(np.where(keep, D, 0).astype(np.int8), blocksize=blocksize)


def raw_arrays(W):
    """Fresh arrays for the raw constructor (as from_matrix makes them)."""
    data = np.array(W.data)
    indptr, indices = W.indptr.astype(np.int32), W.indices.astype(np.int32)
    rowsum = _pack.row_sums(W.shape, W.blocksize, indptr, data).astype(np.int32)
    return indptr, indices, data, rowsum


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (2, 3)])
def test_owned_read_only_arrays(rng, blocksize):
    W = int8_matrix(rng, M=12, K=24, blocksize=blocksize)
    P = PackedWeight.from_matrix(W, np.int8, scale=np.ones(12, np.float32))
    arrays = [P.indptr, P.indices, P.data, P.rowsum, P.scale] + list(P.groups or ())
    for a in arrays:
        assert not a.flags.writeable
    for a in (P.indptr, P.indices, P.data):
        assert not any(np.shares_memory(a, b) for b in (W.indptr, W.indices, W.data))
    assert (P.groups is not None) == (blocksize == (4, 1))
    assert P.shape == W.shape and P.blocksize == blocksize and P.nnzb == W.nnzb
    with pytest.raises(AttributeError):
        P.indices = np.zeros(0, np.int32)
    with pytest.raises(AttributeError):
        P.extra = 1
    assert "PackedWeight of shape (12, 24), int8" in repr(P)


def test_construction_checks_the_structure_once(rng):
    W = int8_matrix(rng)
    indptr, indices, data, rowsum = raw_arrays(W)
    PackedWeight(W.shape, W.blocksize, indptr.copy(), indices.copy(), data.copy(),
                 rowsum=rowsum.copy())
    bad_indices = indices.copy()
    bad_indices[0] = W.shape[1]
    with pytest.raises(ValueError, match=r"indices must lie in \[0, K/C\)"):
        PackedWeight(W.shape, W.blocksize, indptr.copy(), bad_indices, data.copy(),
                     rowsum=rowsum.copy())
    bad_indptr = indptr.copy()
    bad_indptr[1], bad_indptr[2] = bad_indptr[2] + 1, bad_indptr[1]
    with pytest.raises(ValueError, match="indptr"):
        PackedWeight(W.shape, W.blocksize, bad_indptr, indices.copy(), data.copy(),
                     rowsum=rowsum.copy())
    with pytest.raises(ValueError, match="indptr"):
        PackedWeight(W.shape, W.blocksize, indptr.astype(np.int64), indices.copy(),
                     data.copy(), rowsum=rowsum.copy())
    with pytest.raises(ValueError, match="rowsum"):
        PackedWeight(W.shape, W.blocksize, indptr.copy(), indices.copy(), data.copy())
    gptr, gcols, gw = _pack.group_strips(indptr, indices, data)
    gcols = gcols.copy()
    gcols[-1] = W.shape[1]
    with pytest.raises(ValueError, match=r"gcols must lie in \[0, K\)"):
        PackedWeight(W.shape, W.blocksize, indptr.copy(), indices.copy(), data.copy(),
                     (gptr, gcols, gw), rowsum.copy())
    with pytest.raises(ValueError, match="only for blocksize"):
        V = int8_matrix(rng, blocksize=(1, 4))
        a = raw_arrays(V)
        PackedWeight(V.shape, V.blocksize, *a[:3], (gptr, gcols, gw), a[3])


def test_products_read_the_packed_copy(rng):
    """Indices written after packing cannot reach a kernel: it reads its own copy."""
    D = rng.standard_normal((16, 12)).astype(np.float32)
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    X = rng.standard_normal((12, 3)).astype(np.float32)
    before = W @ X
    W.indices.flags.writeable = True
    W.indices[:] = 10**8
    np.testing.assert_array_equal(W @ X, before)


def test_indices_written_before_packing_are_refused(rng):
    W = BlockSparseMatrix(rng.standard_normal((16, 12)).astype(np.float32), blocksize=(4, 1))
    W.indices.flags.writeable = True
    W.indices[:] = 10**8
    with pytest.raises(ValueError, match="indices must lie"):
        W @ np.ones((12, 2), np.float32)


def test_quantized_matrix_weight_views_the_packed_arrays(rng):
    Q = blocksparse.quantize(rng.standard_normal((16, 24)).astype(np.float32))
    assert np.shares_memory(Q.weight.data, Q.packed.data)
    assert np.shares_memory(Q.weight.indices, Q.packed.indices)
    assert np.shares_memory(Q.scale, Q.packed.scale)
    with pytest.raises(ValueError):
        Q.weight.indices.flags.writeable = True


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_both_layouts_give_the_same_numbers(isa, rng, blocksize, act):
    Wf = rng.standard_normal((24, 32)).astype(np.float32)
    Q = blocksparse.quantize(blocksparse.prune(Wf, 0.5, blocksize=blocksize))
    N = 37
    q = rng.integers(0, 256, (32, N)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, N).astype(np.float32)
    zero = rng.integers(0, 256, N).astype(np.int32)
    bias = rng.standard_normal(24).astype(np.float32)
    feats = QuantizedActivations(q, scale, zero)
    toks = QuantizedActivations(np.ascontiguousarray(q.T), scale, zero)
    for dtype, epi in ((np.int32, None), (np.float32, Epilogue(act, bias)),
                       (np.uint8, Epilogue(act, bias, 0.05, 100))):
        a = matmul(Q.packed, feats, np.empty((24, N), dtype), layout="features", epilogue=epi)
        b = matmul(Q.packed, toks, np.empty((N, 24), dtype), layout="tokens", epilogue=epi)
        np.testing.assert_array_equal(a, b.T, strict=True)
    # the int32 output is the exact product with the zero points removed
    D = Q.weight.toarray()
    want = int_matmul_i32(D, q) - D.sum(axis=1, dtype=np.int64)[:, None] * zero[None, :]
    got = matmul(Q.packed, feats, np.empty((24, N), np.int32), layout="features")
    np.testing.assert_array_equal(got, want.astype(np.int32), strict=True)
    # linear() is the tokens layout of the same call
    x = rng.standard_normal((N, 32)).astype(np.float32)
    xq, s, z = blocksparse.quantize_activations(x)
    y = matmul(Q.packed, QuantizedActivations(xq, s, z), np.empty((N, 24), np.float32),
               layout="tokens", epilogue=Epilogue(act, bias))
    np.testing.assert_array_equal(y, blocksparse.linear(x, Q, bias, act), strict=True)


def test_float_weights(rng):
    W = BlockSparseMatrix(rng.standard_normal((8, 12)), blocksize=(2, 3))
    P = W._packed_as(np.dtype(np.float32))
    assert P.dtype == np.float32 and P is W._packed_as(np.dtype(np.float32))
    assert P.indices is W._packed_as(np.dtype(np.float64)).indices  # one index copy
    X = rng.standard_normal((12, 5)).astype(np.float32)
    y = matmul(P, X, np.empty((8, 5), np.float32), layout="features")
    np.testing.assert_allclose(y, W.toarray() @ X, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="an epilogue is for int8 weights"):
        matmul(P, X, np.empty((8, 5), np.float32), layout="features", epilogue=Epilogue())
    with pytest.raises(TypeError, match="X must have dtype float32"):
        matmul(P, X.astype(np.float64), np.empty((8, 5), np.float32), layout="features")


def test_call_errors(rng):
    Q = blocksparse.quantize(rng.standard_normal((8, 12)).astype(np.float32))
    x = QuantizedActivations(np.zeros((12, 3), np.uint8), None, None)
    with pytest.raises(TypeError, match="an int8 weight multiplies QuantizedActivations"):
        matmul(Q.packed, x.q, np.empty((8, 3), np.int32), layout="features")
    with pytest.raises(ValueError, match="layout must be 'features' or 'tokens'"):
        matmul(Q.packed, x, np.empty((8, 3), np.int32), layout="rows")
    with pytest.raises(ValueError, match="need the weight's and x's scales"):
        matmul(Q.packed, x, np.empty((8, 3), np.float32), layout="features")
    with pytest.raises(ValueError, match="an int32 output takes no activation or bias"):
        matmul(Q.packed, x, np.empty((8, 3), np.int32), layout="features",
               epilogue=Epilogue("relu"))
    with pytest.raises(TypeError, match="out must be int32, float32 or uint8"):
        matmul(Q.packed, x, np.empty((8, 3), np.float64), layout="features")
    with pytest.raises(ValueError, match=r"out must have shape \(8, 3\)"):
        matmul(Q.packed, x, np.empty((3, 8), np.int32), layout="features")
    with pytest.raises(ValueError, match="activation must be one of"):
        Epilogue("tanh")
    with pytest.raises(ValueError, match="out_scale must be finite and positive"):
        Epilogue(None, None, 1e-50)
    with pytest.raises(ValueError, match="out_zero must lie in"):
        Epilogue(None, None, 1.0, 256)
    with pytest.raises(ValueError, match="bias must be a contiguous 1-D float32"):
        Epilogue(None, np.ones(8))
