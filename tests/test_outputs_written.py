"""Outputs are fully written and inputs are never modified (issue 6, item 5).

1. Every public function taking ``out=`` (:func:`blocksparse.linear`,
   :meth:`BlockSparseMatrix.toarray`) overwrites all of a sentinel-filled
   ``out`` (NaN or 1e30 for float, 0xAB or 0x55 for uint8: two sentinels, so
   an element that happens to equal one sentinel still shows) and writes
   nothing outside it: ``out`` is a view into a larger sentinel buffer whose
   guard regions must stay untouched.  Many shapes, ragged N, every ISA,
   one and two threads.
2. No public function modifies its array inputs: byte copies of every input
   (and of the whole buffer behind a view) are compared before and after,
   for C, Fortran, strided, negative-stride, read-only and byte-swapped
   inputs.
"""
import io
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import blocksparse
from blocksparse import BlockSparseMatrix

GUARD = 37  # elements of sentinel before and after `out` in its buffer


def guarded_out(shape, dtype, sentinel):
    """(out, buffer): a C-contiguous `out` inside a sentinel-filled buffer with guards."""
    n = int(np.prod(shape))
    buf = np.full(n + 2 * GUARD, sentinel, dtype=dtype)
    return buf[GUARD:GUARD + n].reshape(shape), buf


def assert_guards_intact(buf, sentinel):
    for part in (buf[:GUARD], buf[-GUARD:]):
        np.testing.assert_array_equal(part, np.full(GUARD, sentinel, dtype=buf.dtype),
                                      err_msg="written outside out=")


# ---- 1. out= fully written --------------------------------------------------------------

LINEAR_SHAPES = [  # (M, K, blocksize, sparsity); (4, 1): four output rows in one input
    (8, 16, (4, 1), 0.5),  # column; (1, 4): four weights of one row along K
    (20, 36, (4, 1), 0.0),
    (24, 40, (4, 1), 0.9),
    (12, 64, (1, 4), 0.5),
    (7, 12, (1, 4), 0.25),
    (6, 9, (2, 3), 0.5),
    (5, 3, (1, 1), 0.0),
    (16, 20, (4, 4), 1.0),  # no stored block at all: the output is the bias
]
N_RAGGED = [1, 2, 3, 5, 15, 16, 17, 31, 33, 64, 65, 129]


def _linear_cases(rng):
    for M, K, bs, sparsity in LINEAR_SHAPES:
        W = blocksparse.prune(rng.standard_normal((M, K)).astype(np.float32), sparsity,
                              blocksize=bs)
        Q = blocksparse.quantize(W)
        bias = rng.standard_normal(M).astype(np.float32)
        for N in N_RAGGED:
            yield Q, rng.standard_normal((N, K)).astype(np.float32) * 2, bias


@pytest.mark.parametrize("kind,sentinels", [("float32", (np.nan, 1e30)),
                                            ("uint8", (0xAB, 0x55))])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_overwrites_all_of_out(isa, num_threads, rng, kind, sentinels, activation):
    kw = {"activation": activation}
    if kind == "uint8":
        kw.update(out_dtype="uint8", out_scale=0.03, out_zero_point=117)
    checked = 0
    for Q, x, bias in _linear_cases(rng):
        expected = blocksparse.linear(x, Q, bias, **kw)
        for sentinel in sentinels:
            out, buf = guarded_out(expected.shape, kind, sentinel)
            res = blocksparse.linear(x, Q, bias, out=out, **kw)
            assert res is out
            np.testing.assert_array_equal(out, expected, strict=True,
                                          err_msg=f"shape {Q.shape} N={x.shape[0]}")
            assert_guards_intact(buf, sentinel)
            checked += 1
        # static quantization and already-quantized uint8 input take other paths in
        xq, s, z = blocksparse.quantize_activations(x, per_token=False)
        expected = blocksparse.linear(xq, Q, bias, x_scale=float(s), x_zero_point=int(z), **kw)
        out, buf = guarded_out(expected.shape, kind, sentinels[0])
        blocksparse.linear(xq, Q, bias, out=out, x_scale=float(s), x_zero_point=int(z), **kw)
        np.testing.assert_array_equal(out, expected, strict=True)
        assert_guards_intact(buf, sentinels[0])
    assert checked == 2 * len(LINEAR_SHAPES) * len(N_RAGGED)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
@pytest.mark.parametrize("blocksize", [(1, 1), (4, 1), (1, 4), (2, 3), (3, 2)])
def test_toarray_overwrites_all_of_out(rng, dtype, blocksize):
    R, C = blocksize
    sentinels = (np.nan, 1e30) if dtype != np.int8 else (-0x55, 0x55)
    for nbr, nbc, density in [(1, 1, 1.0), (3, 5, 0.4), (6, 2, 0.0), (0, 3, 0.5), (4, 0, 0.5),
                              (5, 7, 1.0)]:
        D = rng.integers(-3, 4, (nbr * R, nbc * C)).astype(dtype)
        keep = np.repeat(np.repeat(rng.random((nbr, nbc)) < density, R, 0), C, 1)
        D = np.where(keep, D, 0).astype(dtype)
        W = BlockSparseMatrix(D, blocksize=blocksize)
        for sentinel in sentinels:
            out, buf = guarded_out(D.shape, dtype, sentinel)
            assert W.toarray(out=out) is out
            np.testing.assert_array_equal(out, D, strict=True)
            assert_guards_intact(buf, sentinel)


# ---- 2. inputs never modified -------------------------------------------------------------

LAYOUTS = ["c", "f", "strided", "reversed", "readonly", "swapped"]


def laid_out(a, layout):
    """The values of `a` in `layout` (every one a valid NumPy array)."""
    a = np.asarray(a)
    if layout == "f":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.full(tuple(2 * s + 1 for s in a.shape), 77, dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "reversed":
        return np.flip(np.flip(a).copy())
    if layout == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if layout == "swapped" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder())
    return a.copy()


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Guard:
    """Byte snapshots of arrays, and of the whole buffers behind views."""

    def __init__(self, *arrays):
        self.items = []
        for a in arrays:
            if isinstance(a, np.ndarray):
                self.items.append((a, a.tobytes(), _root(a), _root(a).tobytes()))
            elif sp.issparse(a):
                for name in ("data", "indices", "indptr", "row", "col", "offsets"):
                    arr = getattr(a, name, None)
                    if isinstance(arr, np.ndarray):
                        self.items.append((arr, arr.tobytes(), _root(arr), _root(arr).tobytes()))

    def check(self, what):
        for a, raw, root, root_raw in self.items:
            assert a.tobytes() == raw, f"{what} modified an input"
            assert root.tobytes() == root_raw, f"{what} modified the buffer behind an input"


def _matrices(rng, dtype, blocksize=(4, 1)):
    R, C = blocksize
    D = rng.standard_normal((8 * R, 6 * C))
    D[np.abs(D) < 0.8] = 0
    if dtype == np.int8:
        D = np.clip(np.rint(D * 40), -128, 127)
    return D.astype(dtype)


def _calls(rng, layout):
    """(name, callable, inputs) for every public function that takes arrays."""
    def L(a):
        return laid_out(a, layout)

    calls = []
    for dtype in (np.float32, np.float64, np.int8):
        for bs in ((4, 1), (1, 4), (2, 3)):
            D = L(_matrices(rng, dtype, bs))
            calls.append((f"BlockSparseMatrix(dense {np.dtype(dtype)} {bs})",
                          lambda D=D, bs=bs: BlockSparseMatrix(D, blocksize=bs), [D]))
            W = BlockSparseMatrix(np.ascontiguousarray(D), blocksize=bs)
            data, indices, indptr = (L(W.data), L(W.indices.astype(np.int64)), L(W.indptr))
            calls.append((f"BlockSparseMatrix(triple {np.dtype(dtype)} {bs})",
                          lambda t=(data, indices, indptr), W=W: BlockSparseMatrix(
                              t, shape=W.shape), [data, indices, indptr]))
            M, K = W.shape
            if dtype == np.int8:
                xdts = (np.uint8, np.int8, np.float32)
            else:
                xdts = (dtype, np.float64 if dtype == np.float32 else np.float32)
            for xdt in xdts:
                def vals(shape, xdt=xdt):
                    if np.dtype(xdt).kind == "f":
                        return rng.standard_normal(shape)
                    return rng.integers(*((0, 256) if xdt == np.uint8 else (-128, 128)), shape)
                X = L(vals((K, 7)).astype(xdt))
                x1 = L(vals((K,)).astype(xdt))
                Xm = L(vals((5, M)).astype(xdt))
                xm1 = L(vals((M,)).astype(xdt))
                xl = L(vals((9, K)).astype(xdt))
                tag = f"{np.dtype(dtype)} {bs} x {np.dtype(xdt)}"
                calls += [(f"W @ X ({tag})", lambda W=W, X=X: W @ X, [X]),
                          (f"W @ x ({tag})", lambda W=W, x=x1: W @ x, [x1]),
                          (f"W.dot(X) ({tag})", lambda W=W, X=X: W.dot(X), [X]),
                          (f"X @ W ({tag})", lambda W=W, X=Xm: X @ W, [Xm]),
                          (f"x @ W ({tag})", lambda W=W, x=xm1: x @ W, [xm1]),
                          (f"x @ W.T ({tag})", lambda W=W, x=xl: x @ W.T, [xl])]
            if dtype != np.int8:
                calls += [(f"prune({np.dtype(dtype)} {bs})",
                           lambda D=D, bs=bs: blocksparse.prune(D, 0.5, blocksize=bs), [D]),
                          (f"prune(balanced {np.dtype(dtype)} {bs})",
                           lambda D=D, bs=bs: blocksparse.prune(D, 0.3, blocksize=bs,
                                                                balanced=True), [D]),
                          (f"quantize(dense {np.dtype(dtype)} {bs})",
                           lambda D=D, bs=bs: blocksparse.quantize(D, blocksize=bs), [D])]
    # SciPy inputs with unsorted indices and duplicates: canonicalised on a copy only
    rows = np.array([3, 0, 3, 1, 0, 3])
    cols = np.array([2, 5, 2, 0, 1, 4])
    vals = np.array([1.0, -2.0, 3.0, 4.0, 0.5, -1.5])
    S = sp.csr_array((vals, (rows, cols)), shape=(4, 8))
    S.indices[:] = S.indices[::-1].copy()  # an unsorted column order
    S.has_sorted_indices = False
    Ls = L if layout != "swapped" else np.array  # scipy refuses byte-swapped data
    coo = sp.coo_array((Ls(vals), (Ls(rows), Ls(cols))), shape=(4, 8))
    calls += [("BlockSparseMatrix(csr unsorted)", lambda: BlockSparseMatrix(S), [S]),
              ("from_scipy(coo duplicates)",
               lambda: BlockSparseMatrix.from_scipy(coo, blocksize=(2, 2)), [coo]),
              ("quantize(scipy)", lambda: blocksparse.quantize(coo, blocksize=(4, 1)), [coo]),
              ("prune(scipy)", lambda: blocksparse.prune(coo, 0.5, blocksize=(2, 1)), [coo])]
    # quantization
    Wf = blocksparse.prune(rng.standard_normal((16, 24)).astype(np.float32), 0.5)
    Q = blocksparse.quantize(Wf)
    x = L(rng.standard_normal((11, 24)).astype(np.float32))
    x64 = L(rng.standard_normal((11, 24)))
    xq = L(rng.integers(0, 256, (11, 24)).astype(np.uint8))
    bias = L(rng.standard_normal(16).astype(np.float32))
    bias64 = L(rng.standard_normal(16))
    Xq = L(rng.standard_normal((24, 5)).astype(np.float32))
    samples = [L(rng.standard_normal((4, 24)).astype(np.float32)),
               L(rng.standard_normal((3, 24)))]
    calls += [
        ("quantize_activations(dynamic)", lambda: blocksparse.quantize_activations(x), [x]),
        ("quantize_activations(per tensor, float64)",
         lambda: blocksparse.quantize_activations(x64, per_token=False), [x64]),
        ("quantize_activations(static)",
         lambda: blocksparse.quantize_activations(x, scale=0.05, zero_point=128), [x]),
        ("calibrate", lambda: blocksparse.calibrate(samples), samples),
        ("linear(float)", lambda: blocksparse.linear(x, Q, bias, activation="gelu"),
         [x, bias]),
        ("linear(float64, bias float64, per tensor)",
         lambda: blocksparse.linear(x64, Q, bias64, per_token=False), [x64, bias64]),
        ("linear(uint8 in, uint8 out)",
         lambda: blocksparse.linear(xq, Q, bias, x_scale=0.02, x_zero_point=3,
                                    out_dtype="uint8", out_scale=0.1, out_zero_point=128),
         [xq, bias]),
        ("linear(out=)", lambda: blocksparse.linear(x, Q, bias, out=np.empty((11, 16),
                                                                            np.float32)),
         [x, bias]),
        ("Q @ X", lambda: Q @ Xq, [Xq]),
        ("Q @ x", lambda: Q @ Xq[:, 2], [Xq]),
    ]
    return calls


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_never_modified(rng, layout):
    calls = _calls(rng, layout)
    assert len(calls) > 100
    for name, call, inputs in calls:
        guard = Guard(*inputs)
        call()
        guard.check(f"{name} [{layout}]")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_methods_leave_the_matrix_unchanged(rng, dtype):
    """Methods, operators and round trips never touch the matrix's own arrays."""
    W = BlockSparseMatrix(_matrices(rng, dtype), blocksize=(4, 1))
    Q = blocksparse.quantize(W.astype(np.float32))
    guard = Guard(W.data, W.indices, W.indptr, Q.scale, Q.weight.data)
    D = W.toarray()
    k = 1 if dtype == np.int8 else 2  # int8 * 2 overflows: OverflowError by design
    results = [W.T, W.T.T, W.copy(), W.astype(np.float64), W.to_scipy(), W.sum(), W.sum(0),
               W.sum(1), W * k, k * W, W / 4, repr(W), W.check_format(True),
               pickle.loads(pickle.dumps(W)), Q.dequantize(), pickle.loads(pickle.dumps(Q))]
    if dtype != np.int8:
        results.append(-W)
    buf = io.BytesIO()
    blocksparse.save_npz(buf, W)
    results.append(blocksparse.load_npz(io.BytesIO(buf.getvalue())))
    results.append(blocksparse.quantize(W.astype(np.float32)))
    guard.check(f"methods of a {np.dtype(dtype)} matrix")
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    assert len(results) > 10
