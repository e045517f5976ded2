"""Bad-input catalogue (issue 6 item 1): every case raises a clear error that
names the argument, or is handled as documented; nothing crashes.

The first table holds the refusals as (id, call, error type, message regex).
Below it: inputs that are *handled* (byte-swapped, strided, read-only), each
asserted to give the right answer, and the cases that need set-up (files,
monkeypatched limits, ISA availability).
"""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import blocksparse
from blocksparse import BlockSparseMatrix, _config, _kernels
from blocksparse._kernels import MAX_K_INT8
from reference import int_matmul_i32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

F32 = np.float32
W8 = BlockSparseMatrix(np.eye(8, dtype=F32), blocksize=(4, 1))
I8 = BlockSparseMatrix(np.eye(8, dtype=np.int8), blocksize=(4, 1))
Q8 = blocksparse.quantize(W8)
X8 = np.ones((2, 8), F32)
ONE = np.ones((1, 1, 1), F32)


def triple(data=ONE, indices=(0,), indptr=(0, 1), shape=(1, 2), **kw):
    return BlockSparseMatrix((np.asarray(data), np.asarray(indices), np.asarray(indptr)),
                             shape=shape, **kw)


CASES = [
    # ---- dtypes of dense input and storage ----
    ("dense float16", lambda: BlockSparseMatrix(np.ones((4, 4), np.float16)), TypeError,
     r"input's dtype float16 is not supported"),
    ("dense int64", lambda: BlockSparseMatrix(np.ones((4, 4), np.int64)), TypeError,
     r"input's dtype int64 is not supported"),
    ("dense bool", lambda: BlockSparseMatrix(np.ones((4, 4), bool)), TypeError,
     r"input's dtype bool is not supported"),
    ("dense object", lambda: BlockSparseMatrix(np.ones((4, 4), object)), TypeError,
     r"object array"),
    ("dense complex", lambda: BlockSparseMatrix(np.ones((4, 4), np.complex64)), TypeError,
     r"input's dtype complex64 is not supported"),
    ("dtype= int32", lambda: BlockSparseMatrix(np.ones((4, 4), F32), dtype=np.int32),
     TypeError, r"dtype int32 is not supported"),
    ("dtype= nonsense", lambda: BlockSparseMatrix(np.ones((4, 4), F32), dtype="nonsense"),
     TypeError, r"dtype 'nonsense' is not a NumPy dtype"),
    ("int8 out of range", lambda: BlockSparseMatrix(np.full((4, 4), 300.0), dtype=np.int8),
     ValueError, r"the input has values that int8 cannot represent"),
    ("int8 fractional", lambda: BlockSparseMatrix(np.full((4, 4), 1.5), dtype=np.int8),
     ValueError, r"int8 cannot represent exactly"),
    ("int8 NaN", lambda: BlockSparseMatrix(np.full((4, 4), np.nan), dtype=np.int8),
     ValueError, r"the input has values that int8 cannot represent"),
    ("astype int16", lambda: W8.astype(np.int16), TypeError, r"dtype int16 is not supported"),
    ("astype int8 of fractions", lambda: (W8 * 0.5).astype(np.int8), ValueError,
     r"data has values that int8 cannot represent exactly"),
    # ---- ndim and shapes ----
    ("dense 3-D", lambda: BlockSparseMatrix(np.ones((4, 4, 4), F32)), ValueError,
     r"dense input must be 2-D, got 3-D"),
    ("dense 1-D", lambda: BlockSparseMatrix(np.ones(4, F32)), ValueError,
     r"dense input must be 2-D, got 1-D"),
    ("blocksize not dividing", lambda: BlockSparseMatrix(np.ones((6, 4), F32), blocksize=(4, 1)),
     ValueError, r"blocksize \(4, 1\) does not divide the shape \(6, 4\)"),
    ("blocksize not dividing K", lambda: BlockSparseMatrix(np.ones((4, 6), F32),
                                                           blocksize=(1, 4)),
     ValueError, r"blocksize \(1, 4\) does not divide the shape \(4, 6\)"),
    ("blocksize zero", lambda: BlockSparseMatrix(np.ones((4, 4), F32), blocksize=(0, 1)),
     ValueError, r"blocksize must be a pair of positive integers"),
    ("blocksize negative", lambda: BlockSparseMatrix((4, 4), blocksize=(-2, 1)),
     ValueError, r"blocksize must be a pair of positive integers"),
    ("blocksize float", lambda: BlockSparseMatrix(np.ones((4, 4), F32), blocksize=(2.0, 1)),
     TypeError, r"blocksize must be a pair of positive integers"),
    ("blocksize length 3", lambda: BlockSparseMatrix(np.ones((4, 4), F32), blocksize=(2, 1, 1)),
     TypeError, r"blocksize must be a pair"),
    ("empty shape negative", lambda: BlockSparseMatrix((-1, 4)), ValueError,
     r"shape must be a pair of non-negative integers"),
    ("from_scipy of ndarray", lambda: BlockSparseMatrix.from_scipy(np.eye(2)), TypeError,
     r"S must be a scipy.sparse matrix or array"),
    # ---- the (data, indices, indptr) form ----
    ("triple without shape", lambda: BlockSparseMatrix((ONE, [0], [0, 1])), ValueError,
     r"shape is required"),
    ("tuple of length 2", lambda: BlockSparseMatrix((ONE, [0])), TypeError,
     r"tuple form is \(data, indices, indptr\); got a tuple of length 2"),
    ("data 2-D", lambda: triple(data=np.ones((1, 1), F32), shape=(1, 1)), ValueError,
     r"data must have shape \(nnzb, R, C\), got 2-D"),
    ("data object", lambda: triple(data=np.ones((1, 1, 1), object)), TypeError,
     r"data must be a numeric array"),
    ("data blocks vs blocksize", lambda: triple(data=np.ones((1, 2, 1), F32), shape=(2, 2),
                                                blocksize=(1, 2)),
     ValueError, r"data blocks have shape \(2, 1\) but blocksize is \(1, 2\)"),
    ("shape negative", lambda: triple(shape=(-1, 2)), ValueError,
     r"shape must be a pair of non-negative integers"),
    ("shape not a pair", lambda: triple(shape="ab"), TypeError,
     r"shape must be a pair of non-negative integers"),
    ("indptr decreasing", lambda: triple(data=np.ones((2, 1, 1), F32), indices=[0, 0],
                                         indptr=[0, 2, 1, 2], shape=(3, 1)),
     ValueError, r"indptr must be non-decreasing"),
    ("indptr wrong length", lambda: triple(indptr=[0, 1, 1]), ValueError,
     r"indptr must have length M/R \+ 1 = 2, got 3"),
    ("indptr not ending at nnzb", lambda: triple(indptr=[0, 2]), ValueError,
     r"indptr must run from 0 to nnzb = 1"),
    ("indptr not starting at 0", lambda: triple(indptr=[1, 1]), ValueError,
     r"indptr must run from 0 to nnzb"),
    ("indptr float", lambda: triple(indptr=np.array([0.0, 1.0])), TypeError,
     r"indptr must have an integer dtype, got float64"),
    ("indices out of range", lambda: triple(indices=[5]), ValueError,
     r"indices must lie in \[0, K/C\) = \[0, 2\)"),
    ("indices negative", lambda: triple(indices=[-1]), ValueError,
     r"indices has values outside"),
    ("indices beyond int64 range", lambda: triple(indices=np.array([2**40])), ValueError,
     r"indices has values outside"),
    ("indices unsorted", lambda: triple(data=np.ones((2, 1, 1), F32), indices=[1, 0],
                                        indptr=[0, 2]),
     ValueError, r"indices must be sorted within each block row"),
    ("indices duplicated", lambda: triple(data=np.ones((2, 1, 1), F32), indices=[1, 1],
                                          indptr=[0, 2]),
     ValueError, r"indices has duplicate blocks within a block row"),
    ("indices wrong length", lambda: triple(indices=[0, 1]), ValueError,
     r"indices has 2 entries but data holds 1 blocks"),
    ("indices float", lambda: triple(indices=np.array([0.0])), TypeError,
     r"indices must have an integer dtype, got float64"),
    ("indices 2-D", lambda: triple(indices=[[0]]), ValueError, r"indices must be 1-D"),
    # ---- products ----
    # issue 13: stacks (..., K, N) multiply; their rows must still match
    ("X 3-D rows mismatch", lambda: W8 @ np.ones((2, 7, 2), F32), ValueError,
     r"X has 7 rows but the matrix has 8 columns"),
    ("X 0-D", lambda: W8 @ np.float32(1), ValueError,
     r"X must have at least one dimension, got a 0-D array"),
    ("X rows mismatch", lambda: W8 @ np.ones((7, 2), F32), ValueError,
     r"X has 7 rows but the matrix has 8 columns"),
    ("X @ W mismatch", lambda: np.ones((2, 7), F32) @ W8, ValueError,
     r"X has 7 columns but 8 are needed"),
    ("x @ W.T mismatch", lambda: np.ones((2, 7), F32) @ W8.T, ValueError,
     r"X has 7 columns but 8 are needed"),
    ("X complex", lambda: W8 @ np.ones((8, 2), np.complex64), TypeError,
     r"X has unsupported dtype complex64"),
    ("X object", lambda: W8 @ np.ones((8, 2), object), TypeError,
     r"X must be a numeric array"),
    ("X strings", lambda: W8 @ np.full((8, 2), "a"), TypeError, r"X has unsupported dtype"),
    ("int8 W @ int16 X", lambda: I8 @ np.ones((8, 2), np.int16), TypeError,
     r"int8 matrices multiply uint8 or int8 operands exactly.*got int16"),
    ("int8 W @ int64 X", lambda: I8 @ np.ones((8, 2), np.int64), TypeError,
     r"int8 matrices multiply uint8 or int8.*got int64"),
    ("int8 W @ bool X", lambda: I8 @ np.ones((8, 2), bool), TypeError,
     r"int8 matrices multiply uint8 or int8.*got bool"),
    # issue 13: sparse @ sparse is SciPy's product; SciPy's own refusals come through
    ("sparse @ sparse shapes", lambda: W8 @ sp.csr_array(np.ones((7, 2))), ValueError,
     r"dimension mismatch"),
    # ---- other methods ----
    ("sum axis 2", lambda: W8.sum(axis=2), ValueError, r"axis 2 is out of bounds"),
    ("transpose axes", lambda: W8.transpose(axes=(0, 1)), ValueError,
     r"axes must be None or \(1, 0\)"),
    ("toarray out dtype", lambda: W8.toarray(out=np.zeros((8, 8))), ValueError,
     r"out must be a C-contiguous float32 array of shape \(8, 8\)"),
    ("toarray out Fortran", lambda: W8.toarray(out=np.zeros((8, 8), F32, order="F")),
     ValueError, r"out must be a C-contiguous"),
    ("elementwise with array", lambda: W8 / np.ones(8), TypeError,
     r"division is supported with scalars only"),
    ("len", lambda: len(W8), TypeError, r"length is ambiguous"),
    # ---- prune ----
    ("prune NaN", lambda: blocksparse.prune(np.full((4, 4), np.nan), 0.5), ValueError,
     r"A has NaN or Inf"),
    ("prune Inf", lambda: blocksparse.prune(np.full((4, 4), np.inf), 0.5), ValueError,
     r"A has NaN or Inf"),
    ("prune 3-D", lambda: blocksparse.prune(np.ones((4, 4, 4)), 0.5), ValueError,
     r"A must be 2-D"),
    ("prune strings", lambda: blocksparse.prune(np.full((4, 4), "a"), 0.5), TypeError,
     r"A must be numeric"),
    ("prune sparsity > 1", lambda: blocksparse.prune(np.ones((4, 4)), 1.5), ValueError,
     r"sparsity must lie in \[0, 1\]"),
    ("prune sparsity bool", lambda: blocksparse.prune(np.ones((4, 4)), True), TypeError,
     r"sparsity must be a number"),
    ("prune blocksize", lambda: blocksparse.prune(np.ones((4, 6)), 0.5, blocksize=(1, 4)),
     ValueError, r"blocksize \(1, 4\) does not divide the shape"),
    # ---- quantize ----
    ("quantize NaN", lambda: blocksparse.quantize(np.full((4, 4), np.nan, F32)), ValueError,
     r"W has NaN or Inf"),
    ("quantize Inf", lambda: blocksparse.quantize(np.full((4, 4), -np.inf, F32)), ValueError,
     r"W has NaN or Inf"),
    ("quantize int8", lambda: blocksparse.quantize(I8), TypeError,
     r"quantize needs float weights, got int8"),
    ("QuantizedMatrix zero scale",
     lambda: blocksparse.QuantizedMatrix(Q8.weight, np.zeros(8, F32)), ValueError,
     r"scale must be finite and positive"),
    ("QuantizedMatrix NaN scale",
     lambda: blocksparse.QuantizedMatrix(Q8.weight, np.full(8, np.nan, F32)), ValueError,
     r"scale must be finite and positive"),
    ("QuantizedMatrix scale shape",
     lambda: blocksparse.QuantizedMatrix(Q8.weight, np.ones(7, F32)), ValueError,
     r"scale must have shape \(8,\), got \(7,\)"),
    ("QuantizedMatrix float weight",
     lambda: blocksparse.QuantizedMatrix(W8, np.ones(8, F32)), TypeError,
     r"weight must be an int8 BlockSparseMatrix"),
    # ---- quantize_activations / calibrate ----
    ("activations NaN", lambda: blocksparse.quantize_activations(np.array([[np.nan]], F32)),
     ValueError, r"x has NaN or Inf"),
    ("activations Inf", lambda: blocksparse.quantize_activations(np.array([[1, np.inf]], F32)),
     ValueError, r"x has NaN or Inf"),
    ("activations beyond float32", lambda: blocksparse.quantize_activations(np.array([[1e300]])),
     ValueError, r"x has NaN or Inf values \(or values beyond float32\)"),
    ("activations int", lambda: blocksparse.quantize_activations(np.ones((2, 2), np.int32)),
     TypeError, r"x must be float32 or float64, got int32"),
    ("activations 1-D", lambda: blocksparse.quantize_activations(np.ones(2, F32)), ValueError,
     r"x must be 2-D \(N, K\)"),
    ("scale zero", lambda: blocksparse.quantize_activations(X8, scale=0.0, zero_point=0),
     ValueError, r"scale must be finite and positive"),
    ("scale negative", lambda: blocksparse.quantize_activations(X8, scale=-1.0, zero_point=0),
     ValueError, r"scale must be finite and positive"),
    ("scale NaN", lambda: blocksparse.quantize_activations(X8, scale=np.nan, zero_point=0),
     ValueError, r"scale must be finite and positive"),
    ("scale Inf", lambda: blocksparse.quantize_activations(X8, scale=np.inf, zero_point=0),
     ValueError, r"scale must be finite and positive"),
    ("scale underflows float32",
     lambda: blocksparse.quantize_activations(X8, scale=1e-50, zero_point=0), ValueError,
     r"scale must be finite and positive in float32"),
    ("scale overflows float32",
     lambda: blocksparse.quantize_activations(X8, scale=1e40, zero_point=0), ValueError,
     r"scale must be finite and positive in float32"),
    ("scale string", lambda: blocksparse.quantize_activations(X8, scale="a", zero_point=0),
     TypeError, r"scale must be a positive number"),
    ("scale vector", lambda: blocksparse.quantize_activations(X8, scale=[1.0, 2.0],
                                                              zero_point=0),
     ValueError, r"a static scale must be a scalar"),
    ("zero point 256", lambda: blocksparse.quantize_activations(X8, scale=1.0, zero_point=256),
     ValueError, r"zero_point must lie in \[0, 255\], got 256"),
    ("zero point -1", lambda: blocksparse.quantize_activations(X8, scale=1.0, zero_point=-1),
     ValueError, r"zero_point must lie in \[0, 255\], got -1"),
    ("zero point fractional",
     lambda: blocksparse.quantize_activations(X8, scale=1.0, zero_point=1.5), TypeError,
     r"zero_point must be an integer"),
    ("zero point NaN",
     lambda: blocksparse.quantize_activations(X8, scale=1.0, zero_point=np.nan), TypeError,
     r"zero_point must be an integer"),
    ("scale without zero point", lambda: blocksparse.quantize_activations(X8, scale=1.0),
     ValueError, r"give both scale and zero_point"),
    ("calibrate NaN", lambda: blocksparse.calibrate([np.array([1.0, np.nan])]), ValueError,
     r"samples have NaN or Inf"),
    ("calibrate nothing", lambda: blocksparse.calibrate([np.zeros(0)]), ValueError,
     r"samples hold no values"),
    # ---- linear ----
    # issue 13: a float BlockSparseMatrix is a float Linear layer; int8 values have no scales
    ("linear unquantized W", lambda: blocksparse.linear(X8, I8), TypeError,
     r"Wq must be a QuantizedMatrix .* got an int8 BlockSparseMatrix"),
    ("linear float W with INT8 options", lambda: blocksparse.linear(X8, W8, x_scale=1.0),
     ValueError, r"x_scale: for INT8 weights"),
    ("linear float W int x", lambda: blocksparse.linear(np.ones((2, 8), np.int32), W8),
     TypeError, r"x must be float for a float weight, got int32"),
    ("Wq.T @ Y", lambda: Q8.T @ X8.T, TypeError, r"Wq.T @ Y is not supported"),
    ("linear NaN x", lambda: blocksparse.linear(np.full((2, 8), np.nan, F32), Q8), ValueError,
     r"x has NaN or Inf"),
    ("linear Inf x", lambda: blocksparse.linear(np.full((2, 8), np.inf, F32), Q8), ValueError,
     r"x has NaN or Inf"),
    ("linear activation", lambda: blocksparse.linear(X8, Q8, activation="tanh"), ValueError,
     r"activation must be one of None, 'relu', 'gelu', got 'tanh'"),
    # issue 13: x of shape (..., K), 1-D and 3-D included; the features must match
    ("linear x 0-D", lambda: blocksparse.linear(np.float32(1), Q8), ValueError,
     r"x must have at least one dimension"),
    ("linear x 3-D K mismatch", lambda: blocksparse.linear(np.ones((2, 2, 7), F32), Q8),
     ValueError, r"x has 7 features but the weights have K = 8"),
    ("linear K mismatch", lambda: blocksparse.linear(np.ones((2, 7), F32), Q8), ValueError,
     r"x has 7 features but the weights have K = 8"),
    ("linear x int8", lambda: blocksparse.linear(np.ones((2, 8), np.int8), Q8), TypeError,
     r"x must be float or uint8, got int8"),
    ("linear x bool", lambda: blocksparse.linear(np.ones((2, 8), bool), Q8), TypeError,
     r"x must be float or uint8, got bool"),
    ("linear uint8 x without scale", lambda: blocksparse.linear(np.ones((2, 8), np.uint8), Q8),
     ValueError, r"uint8 x needs x_scale and x_zero_point"),
    ("linear x_scale negative", lambda: blocksparse.linear(X8, Q8, x_scale=-1.0,
                                                           x_zero_point=0),
     ValueError, r"x_scale must be finite and positive"),
    ("linear x_scale NaN, uint8 x",
     lambda: blocksparse.linear(np.ones((2, 8), np.uint8), Q8, x_scale=np.nan, x_zero_point=0),
     ValueError, r"x_scale must be finite and positive"),
    ("linear x_zero_point 300", lambda: blocksparse.linear(X8, Q8, x_scale=1.0,
                                                           x_zero_point=300),
     ValueError, r"x_zero_point must lie in \[0, 255\]"),
    ("linear bias shape", lambda: blocksparse.linear(X8, Q8, bias=np.ones(7)), ValueError,
     r"bias must have shape \(8,\), got \(7,\)"),
    ("linear bias strings", lambda: blocksparse.linear(X8, Q8, bias=np.full(8, "a")),
     TypeError, r"bias must be numeric"),
    ("linear out_dtype int8", lambda: blocksparse.linear(X8, Q8, out_dtype="int8"), ValueError,
     r"out_dtype must be float32 or uint8, got 'int8'"),
    ("linear out_dtype nonsense", lambda: blocksparse.linear(X8, Q8, out_dtype="nonsense"),
     ValueError, r"out_dtype must be float32 or uint8, got 'nonsense'"),
    ("linear uint8 without out_scale", lambda: blocksparse.linear(X8, Q8, out_dtype="uint8"),
     ValueError, r"uint8 output needs out_scale and out_zero_point"),
    ("linear out_scale with float output", lambda: blocksparse.linear(X8, Q8, out_scale=1.0),
     ValueError, r"out_scale and out_zero_point are for out_dtype='uint8'"),
    ("linear out_scale zero", lambda: blocksparse.linear(X8, Q8, out_dtype="uint8",
                                                         out_scale=0.0, out_zero_point=0),
     ValueError, r"out_scale must be finite and positive"),
    ("linear out_scale underflow", lambda: blocksparse.linear(X8, Q8, out_dtype="uint8",
                                                              out_scale=1e-50, out_zero_point=0),
     ValueError, r"out_scale must be finite and positive in float32"),
    ("linear out_zero_point 300", lambda: blocksparse.linear(X8, Q8, out_dtype="uint8",
                                                             out_scale=1.0, out_zero_point=300),
     ValueError, r"out_zero_point must lie in \[0, 255\]"),
    ("linear out wrong dtype", lambda: blocksparse.linear(X8, Q8, out=np.zeros((2, 8))),
     ValueError, r"out must be a writable C-contiguous float32 array of shape \(2, 8\)"),
    ("linear out wrong shape", lambda: blocksparse.linear(X8, Q8, out=np.zeros((8, 2), F32)),
     ValueError, r"out must be a writable C-contiguous float32 array of shape \(2, 8\)"),
    ("linear out non-contiguous",
     lambda: blocksparse.linear(X8, Q8, out=np.zeros((2, 16), F32)[:, ::2]), ValueError,
     r"out must be a writable C-contiguous"),
    ("linear out list", lambda: blocksparse.linear(X8, Q8, out=[[0.0] * 8] * 2), ValueError,
     r"out must be a writable C-contiguous"),
    ("linear out float32 for uint8",
     lambda: blocksparse.linear(X8, Q8, out=np.zeros((2, 8), F32), out_dtype="uint8",
                                out_scale=1.0, out_zero_point=0),
     ValueError, r"out must be a writable C-contiguous uint8 array"),
    # ---- Q @ X ----
    ("Q @ uint8", lambda: Q8 @ np.ones((8, 2), np.uint8), TypeError,
     r"X must be float for a quantized product"),
    ("Q @ wrong rows", lambda: Q8 @ np.ones((7, 2), F32), ValueError,
     r"X has 7 rows but the matrix has 8 columns"),
    ("Q @ NaN", lambda: Q8 @ np.full((8, 2), np.nan, F32), ValueError, r"x has NaN or Inf"),
    # ---- configuration ----
    ("set_isa unknown", lambda: blocksparse.set_isa("sse9"), ValueError,
     r"name='sse9' is not an ISA variant; expected one of scalar"),
    ("set_isa not a string", lambda: blocksparse.set_isa(3), TypeError,
     r"name must be a string naming an ISA"),
    ("set_max_isa unknown", lambda: blocksparse.set_max_isa("amx9"), ValueError,
     r"name='amx9' is not an ISA variant"),
    ("isa_context unknown", lambda: blocksparse.isa_context("neon").__enter__(), ValueError,
     r"name='neon' is not an ISA variant"),
    ("threads zero", lambda: blocksparse.set_num_threads(0), ValueError,
     r"n must be a positive number of threads, got 0"),
    ("threads negative", lambda: blocksparse.set_num_threads(-2), ValueError,
     r"n must be a positive number of threads"),
    ("threads float", lambda: blocksparse.set_num_threads(1.5), TypeError,
     r"n must be an integer, got float"),
    ("threads bool", lambda: blocksparse.set_num_threads(True), TypeError,
     r"n must be an integer, got bool"),
    # ---- files ----
    ("save non-matrix", lambda: blocksparse.save_npz(io.BytesIO(), np.eye(2)), TypeError,
     r"matrix must be a BlockSparseMatrix"),
    ("load garbage bytes", lambda: blocksparse.load_npz(io.BytesIO(b"not a zip file")),
     ValueError, r"pickle"),
    ("load empty file", lambda: blocksparse.load_npz(io.BytesIO(b"")), ValueError,
     r"cannot read the sparse matrix file"),
]


@pytest.mark.parametrize("call,err,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(call, err, match):
    state = (blocksparse.get_num_threads(), _config._State.forced, _config._State.cap)
    with pytest.raises(err, match=match):
        call()
    # a refused call changes nothing
    assert state == (blocksparse.get_num_threads(), _config._State.forced, _config._State.cap)


def test_catalogue_size():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


# ---- linear out= overlapping or read-only ------------------------------------------------

def test_linear_out_overlapping_x():
    buf = np.ones((2, 8), F32)
    with pytest.raises(ValueError, match="out must not overlap x or bias"):
        blocksparse.linear(buf, Q8, out=buf)
    np.testing.assert_array_equal(buf, np.ones((2, 8), F32))


def test_linear_out_overlapping_bias():
    out = np.zeros((1, 8), F32)
    with pytest.raises(ValueError, match="out must not overlap x or bias"):
        blocksparse.linear(np.ones((1, 8), F32), Q8, bias=out[0], out=out)


def test_linear_out_read_only():
    out = np.zeros((2, 8), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be a writable"):
        blocksparse.linear(X8, Q8, out=out)
    np.testing.assert_array_equal(out, 0)


def test_toarray_out_read_only():
    out = np.zeros((8, 8), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        W8.toarray(out=out)


# ---- K beyond exact int32 accumulation -----------------------------------------------------

def big_k_matrix(K, blocksize=(4, 1)):
    """One stored block in a (4, K) int8 matrix."""
    R, C = blocksize
    data = np.full((1, R, C), -128, np.int8)
    return BlockSparseMatrix((data, [0], [0, 1] + [1] * (4 // R - 1)), shape=(4, K),
                             blocksize=blocksize)


def test_k_beyond_int32_refused():
    K = MAX_K_INT8 + 1  # 65794: K * 255 * 128 no longer fits int32
    W = big_k_matrix(K)
    X = np.zeros((K, 1), np.uint8)
    with pytest.raises(ValueError, match=r"K = 65794 is too large for exact int32"):
        W @ X
    with pytest.raises(ValueError, match=r"K = 65794 is too large for exact int32"):
        X.T @ W.T
    with pytest.raises(ValueError, match=r"K = 65794 is too large"):
        blocksparse.quantize(W.astype(F32))
    with pytest.raises(ValueError, match=r"K = 65794 is too large"):
        blocksparse.QuantizedMatrix(W, np.ones(4, F32))
    # the float path has no such limit
    np.testing.assert_array_equal(W.astype(F32) @ np.ones((K, 1), F32), [[-128.0]] * 4)


def test_c_kernel_refuses_large_k_too(monkeypatch):
    """With the Python check lifted, the C kernel's own guard still refuses."""
    monkeypatch.setattr(_kernels, "MAX_K_INT8", 10**7)
    K = MAX_K_INT8 + 3  # (1, 4) needs K % 4 == 0
    W = big_k_matrix(K, blocksize=(1, 4))
    with pytest.raises(OverflowError, match=r"bsk_qspmm.*int32 accumulation range exceeded"):
        W @ np.zeros((K, 2), np.uint8)


# ---- ISA availability ---------------------------------------------------------------------

@pytest.mark.thread_unsafe
def test_forced_isa_the_cpu_lacks(monkeypatch):
    """Simulate a CPU with the scalar variant only (all are present on CI hardware)."""
    monkeypatch.setattr(_kernels, "isa_detected", lambda i: i == 0)
    assert blocksparse.available_isas() == ["scalar"]
    with pytest.raises(RuntimeError, match=r"ISA variant 'avx2' is not available here; "
                                           r"available: scalar"):
        blocksparse.set_isa("avx2")
    with pytest.raises(RuntimeError, match=r"'avx512_vnni' is not available here"):
        with blocksparse.isa_context("avx512_vnni"):
            pass
    # as if BLOCKSPARSE_ISA=avx2 had been set on such a CPU: clear error at the call
    monkeypatch.setattr(_config._State, "forced", 1)
    monkeypatch.setattr(_config._State, "forced_from", "BLOCKSPARSE_ISA")
    with pytest.raises(RuntimeError, match=r"BLOCKSPARSE_ISA='avx2': the avx2 variant is not "
                                           r"supported by this CPU; available: scalar"):
        W8 @ np.ones((8, 2), F32)
    with pytest.raises(RuntimeError, match=r"BLOCKSPARSE_ISA='avx2'"):
        blocksparse.get_isa()
    assert "error: BLOCKSPARSE_ISA='avx2'" in _config.config()["isa_in_use"]


# ---- files ------------------------------------------------------------------------------------

def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def flip(raw, offset):
    return raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1:]


def good_file(compressed=False):
    buf = io.BytesIO()
    blocksparse.save_npz(buf, BlockSparseMatrix(np.eye(8, dtype=F32), blocksize=(2, 2)),
                         compressed=compressed)
    return buf.getvalue()


BSR = dict(data=np.ones((1, 1, 1), F32), indices=np.array([0]), indptr=np.array([0, 1]),
           shape=np.array([1, 2]), format=np.array(b"bsr"))

FILE_CASES = [
    ("truncated", lambda: good_file()[: len(good_file()) // 2], r"cannot read the sparse"),
    ("flipped payload byte", lambda: flip(good_file(), good_file().find(b"\x93NUMPY") + 130),
     r"cannot read the sparse matrix file: Bad CRC-32 for file 'data.npy'"),
    ("no format entry", lambda: npz_bytes(data=np.ones(2)), r"does not hold a sparse matrix"),
    ("bsr without indptr", lambda: npz_bytes(**{k: v for k, v in BSR.items() if k != "indptr"}),
     r"the BSR file has no 'indptr' entry"),
    ("object array", lambda: npz_bytes(**dict(BSR, data=np.array([None, 1], object))),
     r"allow_pickle=False"),
    ("indices out of range", lambda: npz_bytes(**dict(BSR, indices=np.array([9]))),
     r"indices must lie in"),
    ("indptr decreasing", lambda: npz_bytes(**dict(BSR, data=np.ones((2, 1, 1), F32),
                                                   indices=np.array([0, 1]),
                                                   indptr=np.array([0, 2, 1, 2]),
                                                   shape=np.array([3, 2]))),
     r"indptr must be non-decreasing"),
    ("csr indices out of range",
     lambda: npz_bytes(data=np.ones(2), indices=np.array([0, 10**8]), indptr=np.array([0, 2, 2]),
                       shape=np.array([2, 4]), format=np.array(b"csr")),
     r"cannot read the 'csr' sparse matrix file"),
    ("unknown format", lambda: npz_bytes(data=np.ones(2), shape=np.array([1, 2]),
                                         format=np.array(b"xyz")),
     r"cannot read the 'xyz' sparse matrix file"),
]


@pytest.mark.parametrize("make,match", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_files(make, match, tmp_path):
    raw = make()
    with pytest.raises(ValueError, match=match):
        blocksparse.load_npz(io.BytesIO(raw))
    path = tmp_path / "bad.npz"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        blocksparse.load_npz(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_flipped_bytes_never_load_a_wrong_matrix(compressed):
    """Mini fuzz: flip every 5th byte of a good file; each load either raises
    ValueError or gives back exactly the saved matrix."""
    raw = good_file(compressed)
    expected = np.eye(8, dtype=F32)
    refused = 0
    for offset in range(0, len(raw), 5):
        try:
            W = blocksparse.load_npz(io.BytesIO(flip(raw, offset)))
        except ValueError:
            refused += 1
            continue
        np.testing.assert_array_equal(W.toarray(), expected, strict=True, err_msg=str(offset))
    assert refused > len(raw) // 10


def test_corrupt_csr_file_does_not_crash(tmp_path):
    """A CSR file with wild indices once crashed the interpreter (scipy's BSR
    conversion wrote out of bounds): run it in a child process to be safe."""
    path = tmp_path / "wild.npz"
    path.write_bytes(npz_bytes(data=np.ones(3), indices=np.array([0, -5, 2]),
                               indptr=np.array([0, 2, 3, 3, 3]), shape=np.array([4, 8]),
                               format=np.array(b"csr")))
    code = (f"import blocksparse\ntry:\n    blocksparse.load_npz({str(path)!r})\n"
            f"except ValueError as e:\n    print('ValueError', e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"child died with {r.returncode}: {r.stderr}"
    assert "ValueError cannot read the 'csr' sparse matrix file" in r.stdout


# ---- inputs that are handled, not refused (asserted to be right) --------------------------------

def test_byteswapped_inputs_are_handled(rng):
    D = rng.standard_normal((8, 12)).astype(F32)
    D[:4, :6] = 0
    ref = BlockSparseMatrix(D, blocksize=(4, 2))
    # dense input
    W = BlockSparseMatrix(D.astype(">f4"), blocksize=(4, 2))
    assert W.dtype == np.dtype("=f4")
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    # triple with big-endian data and indices
    W = BlockSparseMatrix((ref.data.astype(">f4"), ref.indices.astype(">i4"),
                           ref.indptr.astype(">i8")), shape=ref.shape)
    np.testing.assert_array_equal(W.toarray(), D, strict=True)
    assert W.data.dtype.isnative
    # operands
    X = rng.standard_normal((12, 5)).astype(F32)
    np.testing.assert_allclose(W @ X.astype(">f4"), D @ X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(X.T.astype(">f4") @ W.T, X.T @ D.T, rtol=1e-5, atol=1e-5)
    # quantized paths: the same bits as native input
    Q = blocksparse.quantize(W)
    x = X.T.copy()
    np.testing.assert_array_equal(blocksparse.linear(x.astype(">f4"), Q), blocksparse.linear(x, Q))
    np.testing.assert_array_equal(
        blocksparse.linear(x, Q, bias=np.ones(8, ">f4")), blocksparse.linear(x, Q, np.ones(8, F32)))
    np.testing.assert_array_equal(blocksparse.quantize_activations(x.astype(">f4"))[0],
                                  blocksparse.quantize_activations(x)[0])
    np.testing.assert_array_equal(Q @ X.astype(">f4"), Q @ X)
    np.testing.assert_array_equal(blocksparse.quantize(D.astype(">f4"), (4, 2)).scale, Q.scale)


def test_int8_byteswap_is_meaningless_but_uint16_refused():
    X = np.ones((8, 2), np.dtype(">u2"))
    with pytest.raises(TypeError, match=r"got >u2|got uint16"):
        I8 @ X


def test_strided_and_read_only_quantized_inputs(rng):
    """Non-contiguous, negative-stride and read-only x: the same answer as a copy."""
    D = rng.standard_normal((8, 16)).astype(F32)
    Q = blocksparse.quantize(D, blocksize=(1, 4))
    base = rng.standard_normal((12, 40)).astype(F32)
    ro = base[:5, :16].copy()
    ro.flags.writeable = False
    bias = rng.standard_normal(16).astype(F32)[::2]  # strided bias
    for x in (base[::2, :16], base[::-2, 3:19], base[:5, ::-1][:, :16], ro,
              np.asfortranarray(base[:5, :16])):
        before = x.copy()
        c = np.ascontiguousarray(x)
        np.testing.assert_array_equal(blocksparse.linear(x, Q, bias),
                                      blocksparse.linear(c, Q, bias))
        np.testing.assert_array_equal(blocksparse.quantize_activations(x)[0],
                                      blocksparse.quantize_activations(c)[0])
        np.testing.assert_array_equal(Q @ x.T, Q @ c.T)
        np.testing.assert_array_equal(x, before)
    xq = rng.integers(0, 256, (6, 32)).astype(np.uint8)[:, ::2]
    np.testing.assert_array_equal(
        blocksparse.linear(xq, Q, x_scale=0.1, x_zero_point=3),
        blocksparse.linear(np.ascontiguousarray(xq), Q, x_scale=0.1, x_zero_point=3))


def test_zero_size_dimensions_are_handled():
    E = BlockSparseMatrix((0, 0), blocksize=(1, 1), dtype=F32)
    assert (E @ np.ones((0, 3), F32)).shape == (0, 3)
    assert (np.ones((3, 0), F32) @ E).shape == (3, 0)
    assert E.sum() == 0 and E.sum(axis=0).shape == (0,)
    assert E.T.shape == (0, 0)
    assert blocksparse.prune(np.zeros((0, 4)), 0.5).nnzb == 0
    q, s, z = blocksparse.quantize_activations(np.zeros((3, 0), F32))
    np.testing.assert_array_equal(s, np.ones(3, F32), strict=True)
    np.testing.assert_array_equal(z, np.zeros(3, np.int32), strict=True)
    q, s, z = blocksparse.quantize_activations(np.zeros((0, 4), F32), per_token=False)
    assert q.shape == (0, 4) and float(s) == 1.0 and int(z) == 0


def test_index_int64_path(monkeypatch, rng):
    """Lowering the int32 limit forces int64 indices; every path still agrees."""
    from blocksparse import _matrix
    D = rng.integers(-128, 128, (16, 24)).astype(np.int8)
    X = rng.integers(0, 256, (24, 5)).astype(np.uint8)
    monkeypatch.setattr(_matrix, "_INT32_MAX", 2)
    W = BlockSparseMatrix(D, blocksize=(4, 1))
    assert W.indptr.dtype == np.int64 and W.indices.dtype == np.int64
    W.check_format(full_check=True)
    np.testing.assert_array_equal(W @ X, int_matmul_i32(D, X), strict=True)
    np.testing.assert_array_equal(X.T @ W.T, int_matmul_i32(X.T, D.T), strict=True)
    Wf = W.astype(F32)
    np.testing.assert_allclose(Wf @ X.astype(F32), D.astype(np.float64) @ X, rtol=1e-6)
    assert W.T.indptr.dtype == np.int64
    V = BlockSparseMatrix(W.to_scipy())
    np.testing.assert_array_equal(V.toarray(), D)
