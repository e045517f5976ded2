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


# ---- the epilogue's float part ------------------------------------------------------------

def float_part_case(rng, M=24, K=40, N=37):
    """Float weights (dense columns 7 and 30, sparse entries, rows without any), their
    activations and the activations' codes."""
    F = np.where(rng.random((M, K)) < 0.15, rng.standard_normal((M, K)) * 4, 0)
    F[[2, 9, 10]] = 0                         # rows without sparse entries
    cols = np.array([30, 7], np.int32)        # the dense columns, in the order given
    D = rng.standard_normal((M, 2)).astype(np.float32)
    F[:, cols] = 0
    Fm = BlockSparseMatrix(F.astype(np.float32), blocksize=(1, 1))
    x = (rng.standard_normal((K, N)) * 3).astype(np.float32)
    codes, scale, zero = blocksparse.quantize_activations(np.ascontiguousarray(x.T))
    xq = QuantizedActivations(np.ascontiguousarray(codes.T), scale, zero)
    dense = np.zeros((M, K))
    dense[:, cols] = D
    return Fm, cols, D, dense + Fm.toarray(), x, xq


@pytest.mark.parametrize("kind", ["strip (4, 1)", "row (1, 4)", "dense"])
@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("parts", ["dense and sparse", "dense", "sparse"])
@pytest.mark.parametrize("N", [37, 128])
def test_float_part_in_the_epilogue(rng, num_threads, kind, act, parts, N):
    """y = act(int8 part + F @ x + bias): against float64, and the same bits on every ISA."""
    M, K = 24, 40
    Wf = rng.standard_normal((M, K)).astype(np.float32)
    if kind == "dense":
        Q = blocksparse.quantize(Wf, dense=True)
    else:
        bs = (4, 1) if kind.startswith("strip") else (1, 4)
        Q = blocksparse.quantize(blocksparse.prune(Wf, 0.5, blocksize=bs), dense=False)
    Fm, cols, D, F, x, xq = float_part_case(rng, M, K, N)
    part = {"float_x": x}
    if parts != "sparse":
        part.update(float_columns=cols, float_dense=D)
    if parts != "dense":
        part["float_weight"] = Fm._packed_as(np.dtype(np.float32))
    if parts == "dense":
        F = F - Fm.toarray()
    elif parts == "sparse":
        F = Fm.toarray()
    bias = rng.standard_normal(M).astype(np.float32)
    core = matmul(Q.packed, xq, np.empty((M, N), np.float32), layout="features")
    want = core.astype(np.float64) + F.astype(np.float64) @ x + bias[:, None]
    if act == "gelu":
        from blocksparse.nn import gelu
        want = gelu(want.astype(np.float32)).astype(np.float64)
    results = {}
    for isa in blocksparse.available_isas():
        with blocksparse.isa_context(isa):
            results[isa] = matmul(Q.packed, xq, np.empty((M, N), np.float32),
                                  layout="features", epilogue=Epilogue(act, bias, **part))
            # uint8 output: the float32 result, requantized
            u8 = matmul(Q.packed, xq, np.empty((M, N), np.uint8), layout="features",
                        epilogue=Epilogue(act, bias, 0.05, 100, **part))
            np.testing.assert_array_equal(
                u8, np.clip(np.rint(results[isa] / np.float32(0.05)) + 100, 0, 255), strict=False)
    np.testing.assert_allclose(results["scalar"], want, rtol=1e-5, atol=1e-4)
    for isa, y in results.items():
        np.testing.assert_array_equal(y, results["scalar"], strict=True, err_msg=isa)
    # a row without float weights is the plain epilogue's
    plain = matmul(Q.packed, xq, np.empty((M, N), np.float32), layout="features",
                   epilogue=Epilogue(act, bias))
    empty = np.flatnonzero(~F.any(axis=1))
    np.testing.assert_array_equal(results["scalar"][empty], plain[empty])
    assert not np.array_equal(results["scalar"][0], plain[0])


def test_float_part_order_of_terms(rng):
    """Dense columns first, in their order, then the sparse entries: one fused
    multiply-add each (the scalar variant's fmaf chain, rebuilt here in float64 with
    a rounding to float32 after every step, which equals a fused multiply-add)."""
    Q = blocksparse.quantize(rng.standard_normal((24, 40)).astype(np.float32))
    Fm, cols, D, F, x, xq = float_part_case(rng, N=16)
    with blocksparse.isa_context("scalar"):
        got = matmul(Q.packed, xq, np.empty((24, 16), np.float32), layout="features",
                     epilogue=Epilogue(float_x=x, float_columns=cols, float_dense=D,
                                       float_weight=Fm._packed_as(np.dtype(np.float32))))
    y = matmul(Q.packed, xq, np.empty((24, 16), np.float32), layout="features")
    csr = Fm.tocsr()
    for m in range(24):
        terms = [(D[m, c], x[k]) for c, k in enumerate(cols)]
        terms += [(csr.data[j], x[csr.indices[j]]) for j in range(csr.indptr[m], csr.indptr[m + 1])]
        acc = y[m].astype(np.float64)
        for w, xk in terms:  # w * x is exact in float64, so this is fma(w, x, acc)
            acc = (np.float64(w) * xk.astype(np.float64) + acc).astype(np.float32)
            acc = acc.astype(np.float64)
        np.testing.assert_array_equal(got[m], acc.astype(np.float32))


def test_float_part_errors(rng):
    Q = blocksparse.quantize(rng.standard_normal((24, 40)).astype(np.float32))
    Fm, cols, D, F, x, xq = float_part_case(rng)
    FP = Fm._packed_as(np.dtype(np.float32))
    out = np.empty((24, 37), np.float32)
    with pytest.raises(ValueError, match="float_x goes with float_columns"):
        Epilogue(None, None, float_weight=FP)
    with pytest.raises(ValueError, match="float_x goes with float_columns"):
        Epilogue(None, None, float_x=x)
    with pytest.raises(ValueError, match="float_columns and float_dense go together"):
        Epilogue(None, None, float_x=x, float_columns=cols)
    with pytest.raises(ValueError, match=r"float_columns must lie in \[0, 40\)"):
        Epilogue(None, None, float_x=x, float_columns=np.array([40], np.int32),
                 float_dense=D[:, :1].copy())
    with pytest.raises(ValueError, match="float_columns must be a contiguous 1-D int32"):
        Epilogue(None, None, float_x=x, float_columns=cols.astype(np.int64), float_dense=D)
    with pytest.raises(ValueError, match=r"float_dense must have shape \(24, 2\)"):
        Epilogue(None, None, float_x=x, float_columns=cols, float_dense=D[:, :1].copy())
    with pytest.raises(TypeError, match="float_weight must be a packed weight"):
        Epilogue(None, None, float_weight=Fm, float_x=x)
    wide = BlockSparseMatrix(Fm.toarray(), blocksize=(2, 2))._packed_as(np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"float32 values in \(1, 1\) blocks"):
        Epilogue(None, None, float_weight=wide, float_x=x)
    with pytest.raises(TypeError, match="float_x must have dtype float32"):
        Epilogue(None, None, float_weight=FP, float_x=x.astype(np.float64))
    with pytest.raises(ValueError, match=r"float_weight must have 30 columns \(the rows of float_x\)"):
        Epilogue(None, None, float_weight=FP, float_x=x[:30].copy())
    with pytest.raises(ValueError, match=r"float_x must have shape \(40, 37\)"):
        matmul(Q.packed, xq, out, layout="features",
               epilogue=Epilogue(None, None, float_weight=FP, float_x=x[:, :36].copy()))
    small = BlockSparseMatrix(Fm.toarray()[:20], blocksize=(1, 1))._packed_as(np.float32)
    with pytest.raises(ValueError, match=r"float_weight must have the weight's shape"):
        matmul(Q.packed, xq, out, layout="features",
               epilogue=Epilogue(None, None, float_weight=small, float_x=x))
    with pytest.raises(ValueError, match="float_dense must have the weight's 24 rows"):
        matmul(Q.packed, xq, out, layout="features",
               epilogue=Epilogue(float_x=x, float_columns=cols, float_dense=D[:20].copy()))
    epi = Epilogue(None, None, float_weight=FP, float_x=x)
    with pytest.raises(ValueError, match="an int32 output takes no float part"):
        matmul(Q.packed, xq, np.empty((24, 37), np.int32), layout="features", epilogue=epi)
    toks = QuantizedActivations(np.ascontiguousarray(xq.q.T), xq.scale, xq.zero)
    with pytest.raises(ValueError, match="float part needs the 'features' layout"):
        matmul(Q.packed, toks, np.empty((37, 24), np.float32), layout="tokens", epilogue=epi)
    both = np.empty((64, 37), np.float32)
    shared = Epilogue(None, None, float_weight=FP, float_x=both[:40])
    with pytest.raises(ValueError, match="out must not overlap float_x"):
        matmul(Q.packed, xq, both[30:54], layout="features", epilogue=shared)
