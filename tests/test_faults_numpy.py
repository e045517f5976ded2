"""NumPy protocol traps and SciPy input (issue 11, classes 3 and 9).

- ``np.dot``/``np.matmul`` give the product; ``np.asarray``, comparisons and
  other ufuncs/functions raise a TypeError that names the way out;
- every scipy.sparse input is validated before its data is touched: bad
  indices never reach SciPy's C++ conversions (a CSR index past the end
  segfaulted), and a declared shape that no data backs is refused.

Crash cases run in a subprocess with a time limit.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import blocksparse
from blocksparse import BlockSparseMatrix
from blocksparse._scipy_input import UNBACKED_ROWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32


@pytest.fixture
def W():
    D = np.zeros((8, 6), F32)
    D[0:4, 1] = [1, 2, 3, 4]
    D[4:8, 5] = [5, 6, 7, 8]
    D[4:8, 0] = [-1, 0, 0, 2]
    return BlockSparseMatrix(D, blocksize=(4, 1))


# ---- products through NumPy ------------------------------------------------------------------

def test_numpy_products(W):
    D = W.toarray()
    X = np.arange(12, dtype=F32).reshape(6, 2)
    x = np.arange(16, dtype=F32).reshape(2, 8)
    for got, want in [(np.dot(W, X), D @ X), (np.matmul(W, X), D @ X), (np.dot(x, W), x @ D),
                      (np.matmul(x, W), x @ D), (x @ W, x @ D), (np.dot(W, X[:, 0]), D @ X[:, 0]),
                      (np.dot(W.T, x.T), D.T @ x.T)]:
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    Q = blocksparse.quantize(W)
    np.testing.assert_array_equal(np.dot(Q, X), Q @ X)
    np.testing.assert_array_equal(np.dot(W, 2.0).toarray(), 2 * D)
    np.testing.assert_array_equal(np.multiply(W, 3).toarray(), 3 * D)
    np.testing.assert_array_equal(np.negative(W).toarray(), -D)
    np.testing.assert_array_equal((F32(2) * W).toarray(), 2 * D)
    assert np.shape(W) == (8, 6) and np.ndim(W) == 2 and np.transpose(W) is W.T
    np.testing.assert_array_equal(np.sum(W, axis=0), D.sum(axis=0))


def test_np_dot_does_not_build_object_arrays():
    """np.dot(W, X) used to multiply W by every element of X (22 GB seen): a subprocess
    with a 1 GB address-space limit must finish at once."""
    code = """
    import resource, numpy as np, blocksparse as b
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    W = b.BlockSparseMatrix(np.eye(512, dtype=np.float32))
    X = np.ones((512, 512), np.float32)
    print(np.dot(W, X).dtype, np.dot(X, W).shape)
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["float32", "(512,", "512)"]


REFUSED = [
    ("asarray", lambda W: np.asarray(W), r"not converted to an ndarray implicitly.*toarray\(\)"),
    ("array", lambda W: np.array([W, W]), r"not converted to an ndarray implicitly"),
    ("eq", lambda W: W == W.copy(), r"does not support elementwise comparison \(==\)"),
    ("ne", lambda W: W != W.copy(), r"elementwise comparison \(!=\)"),
    ("lt scalar", lambda W: W < 0, r"elementwise comparison \(<\)"),
    ("eq ndarray", lambda W: W == W.toarray(), r"elementwise comparison"),
    ("ndarray eq", lambda W: W.toarray() == W, r"numpy.equal is not supported"),
    ("eq scipy", lambda W: W == W.to_scipy(), r"elementwise comparison"),
    ("add ufunc", lambda W: np.add(W, 1), r"numpy.add is not supported for BlockSparseMatrix"),
    ("ndarray plus", lambda W: W.toarray() + W, r"numpy.add is not supported"),
    ("plus ndarray", lambda W: W + W.toarray(), r"numpy.add is not supported"),
    ("isfinite", lambda W: np.isfinite(W), r"numpy.isfinite is not supported.*toarray\(\)"),
    ("reduce", lambda W: np.add.reduce(W), r"numpy.add.reduce is not supported"),
    ("matmul out", lambda W: np.matmul(W, np.ones((6, 1), F32), out=np.empty((8, 1), F32)),
     r"numpy.matmul with out= is not supported"),
    ("concatenate", lambda W: np.concatenate([W, W]), r"numpy.concatenate is not supported"),
    ("mean", lambda W: np.mean(W), r"numpy.mean is not supported"),
    # issue 13: S @ W is SciPy's product now; S.multiply(W) still cannot take W
    ("scipy multiply", lambda W: sp.csr_array(np.ones((8, 6))).multiply(W),
     r"W.multiply\(S\) for the elementwise product"),
    ("Q asarray", lambda W: np.asarray(blocksparse.quantize(W)), r"dequantize\(\).toarray\(\)"),
    ("Q eq", lambda W: blocksparse.quantize(W) == blocksparse.quantize(W),
     r"QuantizedMatrix does not support elementwise comparison"),
    ("x @ Q", lambda W: np.ones((2, 6), F32) @ blocksparse.quantize(W),
     r"numpy.matmul with these operands is not supported for QuantizedMatrix"),
]


@pytest.mark.parametrize("call,match", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_with_a_clear_type_error(W, call, match):
    with pytest.raises(TypeError, match=match):
        call(W)


def test_identity_semantics_stay_for_non_arrays(W):
    V = W.copy()
    assert (W == None) is False and (W != "x") is True  # noqa: E711
    assert W in [W] and [W, V].index(W) == 0  # identity first, as for ndarrays
    assert len({W, V, W}) == 2 and {W: 1}[W] == 1


# ---- SciPy input ---------------------------------------------------------------------------

def _crash_free(code):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"crashed ({res.returncode}):\n{res.stderr}"
    return res.stdout


def test_reporters_csr_segfault_is_a_value_error():
    out = _crash_free("""
    import numpy as np, scipy.sparse as sp, blocksparse as b
    S = sp.csr_array((np.ones(1, np.float32), [10**7], [0, 1, 1, 1, 1]), shape=(4, 4))
    try:
        b.BlockSparseMatrix(S, blocksize=(4, 1))
    except ValueError as exc:
        print(exc)
    """)
    assert "the input's indices must lie in [0, 4), got values in [10000000, 10000000]" in out


def _csr(data, indices, indptr, shape):
    """A CSR array whose arrays are set after construction (scipy checks nothing then)."""
    S = sp.csr_array((np.ones(1), [0], [0] + [1] * shape[0]), shape=shape)
    S.data, S.indices, S.indptr = np.asarray(data), np.asarray(indices), np.asarray(indptr)
    return S


def _bsr_bad_index():
    S = sp.bsr_array((np.ones((1, 2, 2)), [0], [0, 1, 1]), shape=(4, 4))
    S.indices = np.array([2**30], dtype=S.indices.dtype)
    return S


BAD_SCIPY = [
    ("csr index past the end", lambda: _csr([1.0], [10**7], [0, 1, 1, 1, 1], (4, 4)),
     ValueError, r"indices must lie in \[0, 4\)"),
    ("csr negative index", lambda: _csr([1.0], [-1], [0, 1, 1, 1, 1], (4, 4)),
     ValueError, r"indices must lie in \[0, 4\)"),
    ("csr indptr decreasing", lambda: _csr([1.0, 1.0], [0, 1], [0, 2, 1, 2, 2], (4, 4)),
     ValueError, r"indptr must start at 0 and be non-decreasing"),
    ("csr indptr short", lambda: _csr([1.0], [0], [0, 1], (4, 4)),
     ValueError, r"indptr must have 5 entries"),
    ("csr indptr beyond data", lambda: _csr([1.0], [0], [0, 1, 5, 5, 5], (4, 4)),
     ValueError, r"indptr ends at 5, but indices and data hold 1 and 1"),
    ("csr float indices", lambda: _csr([1.0], [0.0], [0, 1, 1, 1, 1], (4, 4)),
     TypeError, r"indices must have an integer dtype"),
    ("csr uint64 huge indptr", lambda: _csr([1.0], [0], np.array([0, 2**63 + 5, 1, 1, 1],
                                                                  np.uint64), (4, 4)),
     ValueError, r"indptr has values beyond int64"),
    ("csc index past the end", lambda: sp.csc_array(_csr([1.0], [9], [0, 1, 1, 1, 1],
                                                         (4, 4)).T),
     ValueError, r"indices must lie in \[0, 4\)"),
    ("bsr block index 2**30", _bsr_bad_index, ValueError, r"indices must lie in \[0, 2\)"),
    ("coo row out of range", lambda: _coo([5], [0], (4, 4)), ValueError,
     r"row indices must lie in \[0, 4\)"),
    ("coo col negative", lambda: _coo([0], [-3], (4, 4)), ValueError,
     r"column indices must lie in \[0, 4\)"),
    ("coo shape not backed", lambda: sp.coo_array((np.ones(1), ([0], [0])), shape=(10**12, 4)),
     ValueError, r"shape \(1000000000000, 4\) needs 250000000001 block-row offsets but the "
                 r"input stores only 3 values"),
    ("dia shape not backed", lambda: sp.dia_array((np.ones((1, 4)), [0]), shape=(10**10, 4)),
     ValueError, r"not backed by data"),
]


def _coo(rows, cols, shape):
    S = sp.coo_array((np.ones(1), ([0], [0])), shape=shape)
    S.coords = (np.asarray(rows), np.asarray(cols))
    return S


@pytest.mark.parametrize("make,err,match", [c[1:] for c in BAD_SCIPY],
                         ids=[c[0] for c in BAD_SCIPY])
def test_bad_scipy_input_refused_before_conversion(make, err, match):
    S = make()
    with pytest.raises(err, match=match):
        BlockSparseMatrix(S, blocksize=(4, 1))


def test_bad_scipy_input_never_crashes_in_a_subprocess():
    """The same cases through every entry point (constructor, prune, quantize), in a
    subprocess: a segfault would fail here rather than kill the test run."""
    out = _crash_free("""
    import numpy as np, scipy.sparse as sp, blocksparse as b
    import tests.test_faults_numpy as t
    n = 0
    for name, make, err, _ in t.BAD_SCIPY:
        for call in (lambda S: b.BlockSparseMatrix(S, blocksize=(4, 1)),
                     lambda S: b.prune(S, 0.5, blocksize=(4, 1)),
                     lambda S: b.quantize(S, blocksize=(4, 1))):
            try:
                call(make())
            except (ValueError, TypeError):
                n += 1
    print(n)
    """)
    assert int(out) == 3 * len(BAD_SCIPY)


def test_unbacked_rows_allowance():
    """Up to UNBACKED_ROWS empty block rows beyond the stored values are fine."""
    S = sp.coo_array((np.ones(1), ([0], [0])), shape=(4 * UNBACKED_ROWS, 4))
    assert BlockSparseMatrix(S, blocksize=(4, 1)).nnzb == 1
    wide = sp.coo_array((np.ones(1), ([0], [10**11])), shape=(4, 10**12))  # columns: free
    W = BlockSparseMatrix(wide, blocksize=(4, 1))
    assert W.nnzb == 1 and int(W.indices[0]) == 10**11


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "dia", "lil", "dok"])
@pytest.mark.parametrize("blocksize", [(1, 1), (2, 3), (4, 1)])
def test_every_format_converts_like_scipy(fmt, blocksize):
    gen = np.random.default_rng(5)
    D = gen.standard_normal((8, 12)).astype(F32)
    D[gen.random(D.shape) < 0.7] = 0
    S = sp.csr_array(D).asformat(fmt) if fmt != "bsr" else sp.bsr_array(D, blocksize=(2, 2))
    W = BlockSparseMatrix(S, blocksize=blocksize)
    ref = sp.bsr_array(S.tocsr(), blocksize=blocksize)  # scipy's conversion, on valid input
    ref.sum_duplicates()
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    np.testing.assert_array_equal(W.indptr, ref.indptr)
    np.testing.assert_array_equal(W.indices, ref.indices)
    W.check_format(full_check=True)


def test_duplicates_summed_and_int8_range_checked():
    S = sp.coo_array((np.array([100, 100, 3], np.int64), ([3, 3, 0], [1, 1, 2])), shape=(4, 4))
    with pytest.raises(ValueError, match="int8 cannot represent"):
        BlockSparseMatrix(S, dtype=np.int8)  # 200 would wrap in int8
    W = BlockSparseMatrix(S, dtype=np.float32, blocksize=(2, 2))
    assert W.toarray()[3, 1] == 200 and W.toarray()[0, 2] == 3
    B = sp.bsr_array((np.ones((2, 2, 2)), np.array([1, 1]), np.array([0, 2, 2])), shape=(4, 4))
    np.testing.assert_array_equal(BlockSparseMatrix(B).toarray()[:2, 2:], 2 * np.ones((2, 2)))


def test_input_arrays_are_not_modified():
    S = sp.csr_array((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3, 3])),
                     shape=(2, 4))
    before = (S.data.copy(), S.indices.copy(), S.indptr.copy(), S.indices.dtype)
    BlockSparseMatrix(S, blocksize=(1, 2))
    np.testing.assert_array_equal(S.data, before[0])
    np.testing.assert_array_equal(S.indices, before[1])
    np.testing.assert_array_equal(S.indptr, before[2])
    assert S.indices.dtype == before[3]
