"""Quantization: quantize, quantize_activations, calibrate, linear and Q @ X.

Two references for the float outputs (STYLE.md section 5):
- a float64 product of the *dequantized* operands: the only error is the
  float32 epilogue, so the tolerance is a few 1e-6 of max |y|;
- the unquantized float64 product, within the per-element bound of the
  linear() docstring (reference.quantization_bound).
The quantization formulas themselves are compared exactly with their float32
NumPy twins.
"""
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import BlockSparseMatrix, QuantizedMatrix
from blocksparse._packed import Epilogue, QuantizedActivations, matmul
import reference as ref
from strategies import bcsr_matrices, draw_values, per_variant_settings

fixture_settings = per_variant_settings()

Q_BLOCKSIZES = [(4, 1), (1, 4), (4, 1), (1, 4), (4, 4), (1, 1), (3, 2)]
GELU_LIPSCHITZ = 1.13  # max |GELU'(y)| = 1.1289...


@st.composite
def linear_cases(draw):
    """(W float32 BlockSparseMatrix, x (N, K) float32, bias or None)."""
    W = draw(bcsr_matrices(np.float32, blocksizes=Q_BLOCKSIZES, min_block_rows=1,
                           max_block_rows=6, max_block_cols=24))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    N = draw(st.sampled_from([1, 2, 15, 16, 17, 33, 64, 65]))
    style = draw(st.sampled_from(["uniform", "mixed", "extremes", "small", "zeros"]))
    x = draw_values(gen, (N, W.shape[1]), np.float32, style)
    if draw(st.booleans()):
        x = np.abs(x)  # post-ReLU activations: zero point 0
    bias = draw(st.one_of(st.none(), st.just("random")))
    if bias is not None:
        bias = gen.standard_normal(W.shape[0]).astype(np.float32)
    return W, x, bias


def assert_close_to_dequantized(y, y_ref, y_pre, bias, what=""):
    """Tolerance: a few float32 roundings of max |y| (plus |bias|)."""
    scale = max(float(np.abs(y_pre).max(initial=0)),
                float(np.abs(bias).max(initial=0)) if bias is not None else 0.0)
    atol = 4e-6 * scale + 1e-30
    err = np.abs(y.astype(np.float64) - y_ref)
    assert np.all(err <= atol + 1e-6 * np.abs(y_ref)), \
        f"{what}: max error {err.max()} > {atol} (max |y| {scale})"


# ---- quantize --------------------------------------------------------------------

@given(bcsr_matrices(np.float32, blocksizes=Q_BLOCKSIZES))
def test_quantize_matches_formula(W):
    snap = W.data.copy()
    Q = blocksparse.quantize(W)
    np.testing.assert_array_equal(W.data, snap, strict=True)
    q_ref, s_ref = ref.quantize_weights(W.toarray())
    assert isinstance(Q, QuantizedMatrix)
    assert Q.shape == W.shape and Q.blocksize == W.blocksize and Q.nnzb == W.nnzb
    assert Q.dtype == np.int8 and Q.weight.dtype == np.int8
    np.testing.assert_array_equal(Q.scale, s_ref, strict=True)
    np.testing.assert_array_equal(Q.weight.toarray(), q_ref, strict=True)
    # the same structure; -128 never produced (symmetric)
    np.testing.assert_array_equal(Q.weight.indices, W.indices)
    assert Q.weight.nnz == 0 or Q.weight.data.min() >= -127
    assert not Q.scale.flags.writeable


@given(bcsr_matrices(np.float32, blocksizes=Q_BLOCKSIZES))
def test_dequantize_within_half_step(W):
    Q = blocksparse.quantize(W)
    Dq = Q.dequantize()
    assert Dq.dtype == np.float32 and Dq.blocksize == W.blocksize
    D = W.toarray().astype(np.float64)
    err = np.abs(Dq.toarray().astype(np.float64) - D)
    half = Q.scale.astype(np.float64)[:, None] / 2
    assert np.all(err <= half * (1 + 1e-5) + 1e-30)
    # row maxima are represented exactly up to float32 rounding of the scale
    np.testing.assert_array_equal(Dq.toarray(),
                                  (Q.weight.toarray() * Q.scale[:, None]).astype(np.float32))


def test_quantize_input_forms_and_example():
    W = np.array([[0.5, -1.0, 0, 0], [0, 0, 2.0, 0.25]] * 2, dtype=np.float32)
    Q = blocksparse.quantize(W, blocksize=(1, 2))
    assert Q.weight.toarray()[0].tolist() == [64, -127, 0, 0]
    assert Q.blocksize == (1, 2)
    B = BlockSparseMatrix(W, blocksize=(2, 2))
    assert blocksparse.quantize(B).blocksize == (2, 2)
    assert blocksparse.quantize(B, blocksize=(1, 4)).blocksize == (1, 4)
    np.testing.assert_array_equal(blocksparse.quantize(W.astype(np.float64), (1, 2)).scale,
                                  Q.scale)
    Z = blocksparse.quantize(np.zeros((4, 4), np.float32))
    np.testing.assert_array_equal(Z.scale, np.ones(4, np.float32))
    assert "QuantizedMatrix of shape (4, 4), int8, blocksize (4, 1)" in repr(Z)


def test_quantized_matrix_pickles(rng):
    Q = blocksparse.quantize(rng.standard_normal((8, 8)).astype(np.float32))
    P = pickle.loads(pickle.dumps(Q))
    np.testing.assert_array_equal(P.scale, Q.scale, strict=True)
    np.testing.assert_array_equal(P.weight.toarray(), Q.weight.toarray(), strict=True)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(blocksparse.linear(x, P), blocksparse.linear(x, Q))


# ---- activations ---------------------------------------------------------------------

@st.composite
def activations(draw):
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    N = draw(st.sampled_from([0, 1, 2, 7, 16, 33]))
    K = draw(st.sampled_from([0, 1, 3, 15, 16, 17, 64, 100]))
    style = draw(st.sampled_from(["uniform", "mixed", "extremes", "small", "zeros", "ones"]))
    x = draw_values(gen, (N, K), np.float32, style)
    if draw(st.booleans()):
        x = np.abs(x)
    if draw(st.booleans()):
        x = -np.abs(x)
    return x


@given(activations(), st.booleans(), st.booleans())
def test_quantize_activations_dynamic_exact(x, per_token, as_float64):
    xin = x.astype(np.float64) if as_float64 else x
    before = xin.copy()
    q, s, z = blocksparse.quantize_activations(xin, per_token=per_token)
    q_ref, s_ref, z_ref = ref.quantize_activations(x, per_token=per_token)
    np.testing.assert_array_equal(xin, before, strict=True)
    np.testing.assert_array_equal(s, s_ref.astype(np.float32), strict=True)
    np.testing.assert_array_equal(z, z_ref.astype(np.int32), strict=True)
    np.testing.assert_array_equal(q, q_ref, strict=True)
    assert s.shape == ((x.shape[0],) if per_token else ())
    # the range [min(x, 0), max(x, 0)] maps onto [0, 255] up to rounding
    if x.size and np.any(x != 0):
        assert q.max() >= 254 or q.min() <= 1


@given(activations(), st.floats(1e-4, 10.0), st.integers(0, 255))
def test_quantize_activations_static_exact(x, scale, zero):
    q, s, z = blocksparse.quantize_activations(x, scale=scale, zero_point=zero)
    q_ref, _, _ = ref.quantize_activations(x, scale=np.float32(scale), zero_point=zero)
    np.testing.assert_array_equal(q, q_ref, strict=True)
    assert float(s) == float(np.float32(scale)) and int(z) == zero


def test_quantize_activations_rounds_half_to_even():
    x = np.array([[0.5, 1.5, 2.5, -0.5, 254.5, 300.0, -3.0]], np.float32)
    q, _, _ = blocksparse.quantize_activations(x, scale=1.0, zero_point=0)
    assert q.tolist() == [[0, 2, 2, 0, 254, 255, 0]]
    q, _, _ = blocksparse.quantize_activations(x[:, :4], scale=1.0, zero_point=10)
    assert q.tolist() == [[10, 12, 12, 10]]


@given(st.lists(activations(), min_size=1, max_size=3))
def test_calibrate_matches_formula(samples):
    if not any(a.size for a in samples):
        with pytest.raises(ValueError, match="samples hold no values"):
            blocksparse.calibrate(samples)
        return
    s, z = blocksparse.calibrate(samples)
    assert isinstance(s, float) and isinstance(z, int)
    assert (s, z) == ref.calibrate(samples)
    assert s > 0 and 0 <= z <= 255
    # quantizing the samples with these parameters never clips beyond half a step
    for a in samples:
        if a.size:
            q, _, _ = blocksparse.quantize_activations(a, scale=s, zero_point=z)
            back = (q.astype(np.float64) - z) * s
            assert np.all(np.abs(back - a) <= 0.5 * s * (1 + 1e-3) + 1e-6 * np.abs(a))


# ---- linear ----------------------------------------------------------------------------

@fixture_settings
@given(case=linear_cases(), act=st.sampled_from([None, "relu", "gelu"]),
       per_token=st.booleans())
def test_linear_dynamic(isa, num_threads, case, act, per_token):
    W, x, bias = case
    Q = blocksparse.quantize(W)
    saved = (x.copy(), None if bias is None else bias.copy())
    y = blocksparse.linear(x, Q, bias, activation=act, per_token=per_token)
    np.testing.assert_array_equal(x, saved[0], strict=True)
    if bias is not None:
        np.testing.assert_array_equal(bias, saved[1], strict=True)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], W.shape[0])

    # 1. against the dequantized operands, in float64
    xq, s, z = ref.quantize_activations(x, per_token=per_token)
    Wq, sw = ref.quantize_weights(W.toarray())
    y_ref, y_pre = ref.linear_dequantized(Wq, sw, xq, s, z, bias, act)
    assert_close_to_dequantized(y, y_ref, y_pre, bias, "dequantized reference")
    # entries below the tolerance may legitimately round to 0 (GELU of -6 is 1e-9)
    scale = max(float(np.abs(y_pre).max(initial=0)),
                float(np.abs(bias).max(initial=0)) if bias is not None else 0.0)
    ref.assert_not_vacuous(y, np.where(np.abs(y_ref) > 1e-4 * scale, y_ref, 0))

    # 2. against the unquantized float product, within the documented bound
    y_float = x.astype(np.float64) @ W.toarray().astype(np.float64).T
    if bias is not None:
        y_float = y_float + bias
    bound = ref.quantization_bound(x, W.toarray(), sw, s)
    lip = GELU_LIPSCHITZ if act == "gelu" else 1.0
    slack = 4e-6 * max(float(np.abs(y_pre).max(initial=0)), 1.0)
    err = np.abs(y.astype(np.float64) - ref.activate(y_float, act))
    assert np.all(err <= lip * bound * (1 + 1e-3) + slack), float((err - lip * bound).max())


@fixture_settings
@given(case=linear_cases(), act=st.sampled_from([None, "relu", "gelu"]),
       out_scale=st.sampled_from([0.01, 0.1, 1.0]), out_zero=st.sampled_from([0, 128, 255]))
def test_linear_uint8_output(isa, case, act, out_scale, out_zero):
    W, x, bias = case
    Q = blocksparse.quantize(W)
    yf = blocksparse.linear(x, Q, bias, activation=act)
    yq = blocksparse.linear(x, Q, bias, activation=act, out_dtype="uint8",
                            out_scale=out_scale, out_zero_point=out_zero)
    assert yq.dtype == np.uint8 and yq.shape == yf.shape
    # exactly the float32 output requantized (same epilogue up to the store)
    np.testing.assert_array_equal(yq, ref.requantize(yf, out_scale, out_zero), strict=True)
    # and within one step of the float64 reference
    xq, s, z = ref.quantize_activations(x)
    Wq, sw = ref.quantize_weights(W.toarray())
    y_ref, _ = ref.linear_dequantized(Wq, sw, xq, s, z, bias, act)
    q64 = np.clip(np.rint(y_ref / out_scale) + out_zero, 0, 255)
    assert np.all(np.abs(yq.astype(np.int64) - q64) <= 1)


@fixture_settings
@given(case=linear_cases(), act=st.sampled_from([None, "relu", "gelu"]))
def test_linear_dynamic_is_quantize_then_product(isa, num_threads, case, act):
    """linear on float x quantizes inside its one kernel call (the (4, 1)
    kernels as they pack each tile of tokens): exactly the bits of
    quantize_activations followed by the product, for both output kinds."""
    W, x, bias = case
    Q = blocksparse.quantize(W)
    q, s, z = blocksparse.quantize_activations(x)
    xa = QuantizedActivations(q, s, z)
    b32 = None if bias is None else bias.astype(np.float32)
    for kind, out_scale, out_zero in (("float32", 1.0, 0), ("uint8", 0.037, 9)):
        want = np.empty((x.shape[0], W.shape[0]), kind)
        matmul(Q.packed, xa, want, layout="tokens",
               epilogue=Epilogue(act, b32, out_scale, out_zero))
        extra = {} if kind == "float32" else dict(out_dtype="uint8", out_scale=out_scale,
                                                   out_zero_point=out_zero)
        got = blocksparse.linear(x, Q, bias, activation=act, **extra)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), strict=True)


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_linear_refuses_nonfinite_tokens_anywhere(isa, num_threads, rng, blocksize, bad):
    W = blocksparse.prune(rng.standard_normal((24, 40)).astype(np.float32), 0.5,
                          blocksize=blocksize)
    Q = blocksparse.quantize(W)
    for N in (1, 31, 33, 70, 129):
        for pos in {0, N // 2, N - 1}:
            x = rng.standard_normal((N, 40)).astype(np.float32)
            x[pos, (7 * pos) % 40] = bad
            with pytest.raises(ValueError, match="NaN or Inf"):
                blocksparse.linear(x, Q)
    # float64 beyond float32 becomes inf: refused the same way
    with pytest.raises(ValueError, match="NaN or Inf"):
        blocksparse.linear(np.full((3, 40), 1e39), Q)


def test_linear_nan_bias_is_refused_on_both_paths(rng):
    """A NaN bias makes the output non-finite: refused whether x is quantized
    inside the kernel call (float x) or given as uint8."""
    Q = blocksparse.quantize(blocksparse.prune(rng.standard_normal((8, 16)).astype(np.float32),
                                               0.5, blocksize=(4, 1)))
    x = rng.standard_normal((3, 16)).astype(np.float32)
    bias = np.ones(8, np.float32)
    bias[2] = np.nan
    xq, s, z = blocksparse.quantize_activations(x)
    for call in (lambda: blocksparse.linear(x, Q, bias),
                 lambda: blocksparse.linear(xq, Q, bias, x_scale=s, x_zero_point=z)):
        with pytest.raises(ValueError, match="overflows float32"):
            call()


@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (2, 2)])
def test_linear_static_quantization_via_calibrate(isa, num_threads, rng, blocksize):
    W = blocksparse.prune(rng.standard_normal((32, 64)).astype(np.float32), 0.8,
                          blocksize=blocksize)
    Q = blocksparse.quantize(W)
    calib = [rng.standard_normal((10, 64)).astype(np.float32) * 2 for _ in range(3)]
    s, z = blocksparse.calibrate(calib)
    x = calib[1][:7]
    bias = rng.standard_normal(32).astype(np.float32)
    y = blocksparse.linear(x, Q, bias, x_scale=s, x_zero_point=z)
    xq, _, _ = ref.quantize_activations(x, scale=s, zero_point=z)
    y_ref, y_pre = ref.linear_dequantized(Q.weight.toarray(), Q.scale, xq, s, z, bias)
    assert_close_to_dequantized(y, y_ref, y_pre, bias, "static")
    # already-quantized uint8 activations with the same parameters: same bits
    xq_pkg, _, _ = blocksparse.quantize_activations(x, scale=s, zero_point=z)
    np.testing.assert_array_equal(xq_pkg, xq, strict=True)
    y_u8 = blocksparse.linear(xq_pkg, Q, bias, x_scale=s, x_zero_point=z)
    np.testing.assert_array_equal(y_u8, y, strict=True)
    bound = ref.quantization_bound(x, W.toarray(), Q.scale, s)
    y_float = x.astype(np.float64) @ W.toarray().T.astype(np.float64) + bias
    assert np.all(np.abs(y - y_float) <= bound * (1 + 1e-3) + 1e-5)


@pytest.mark.parametrize("kind,sentinel", [("float32", np.nan), ("float32", -7.0),
                                           ("uint8", 0xAB), ("uint8", 0)])
def test_linear_out_fully_overwritten(isa, num_threads, rng, kind, sentinel):
    W = blocksparse.prune(rng.standard_normal((24, 40)).astype(np.float32), 0.5,
                          blocksize=(4, 1))
    W = BlockSparseMatrix(np.vstack([W.toarray()[:20], np.zeros((4, 40), np.float32)]),
                          blocksize=(4, 1))  # last strip empty: still written
    Q = blocksparse.quantize(W)
    x = rng.standard_normal((33, 40)).astype(np.float32)
    kw = dict(activation="relu", bias=rng.standard_normal(24).astype(np.float32))
    if kind == "uint8":
        kw.update(out_dtype="uint8", out_scale=0.02, out_zero_point=100)
    expected = blocksparse.linear(x, Q, **kw)
    out = np.full((33, 24), sentinel, dtype=kind)
    res = blocksparse.linear(x, Q, out=out, **kw)
    assert res is out
    np.testing.assert_array_equal(out, expected, strict=True)
    assert not np.any(np.isnan(out.astype(np.float64)))


def test_linear_zero_sizes(rng):
    Q = blocksparse.quantize(rng.standard_normal((8, 12)).astype(np.float32))
    y = blocksparse.linear(np.zeros((0, 12), np.float32), Q)
    assert y.shape == (0, 8) and y.dtype == np.float32
    Q0 = blocksparse.quantize(np.zeros((0, 12), np.float32), blocksize=(1, 4))
    assert blocksparse.linear(np.ones((3, 12), np.float32), Q0).shape == (3, 0)
    QK = blocksparse.quantize(np.zeros((8, 0), np.float32))
    y = blocksparse.linear(np.ones((3, 0), np.float32), QK, bias=np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(y, np.tile(np.arange(8, dtype=np.float32), (3, 1)))


# ---- Q @ X ------------------------------------------------------------------------------

@fixture_settings
@given(case=linear_cases())
def test_quantized_matmul(isa, case):
    W, x, _ = case
    Q = blocksparse.quantize(W)
    X = np.ascontiguousarray(x.T)  # (K, N)
    before = X.copy()
    Y = Q @ X
    np.testing.assert_array_equal(X, before, strict=True)
    assert Y.dtype == np.float32 and Y.shape == (W.shape[0], X.shape[1])
    xq, s, z = ref.quantize_activations(X, per_token=False)  # per tensor over (K, N)
    y_ref, y_pre = ref.linear_dequantized(Q.weight.toarray(), Q.scale,
                                          np.ascontiguousarray(xq.T), s, z)
    assert_close_to_dequantized(Y, y_ref.T, y_pre.T, None, "Q @ X")
    # 1-D operand: a matrix-vector product
    y1 = Q @ X[:, 0]
    assert y1.shape == (W.shape[0],)
    xq1, s1, z1 = ref.quantize_activations(X[:, :1], per_token=False)
    y1_ref, y1_pre = ref.linear_dequantized(Q.weight.toarray(), Q.scale,
                                            np.ascontiguousarray(xq1.T), s1, z1)
    assert_close_to_dequantized(y1, y1_ref[0], y1_pre[0], None, "Q @ x")


def test_quantized_matmul_refuses_integers(rng):
    Q = blocksparse.quantize(rng.standard_normal((4, 8)).astype(np.float32))
    with pytest.raises(TypeError, match="X must be float for a quantized product"):
        Q @ np.ones((8, 2), np.uint8)
    with pytest.raises(ValueError, match="X has 7 rows but the matrix has 8 columns"):
        Q @ np.ones((7, 2), np.float32)


def test_linear_uint8_input_with_per_token_parameters(rng):
    """uint8 x with one (scale, zero point) per token equals dequantize-then-float."""
    W = blocksparse.prune(rng.standard_normal((16, 32)).astype(np.float32), 0.5, (4, 1))
    Q = blocksparse.quantize(W)
    x = rng.standard_normal((9, 32)).astype(np.float32)
    xq, s, z = blocksparse.quantize_activations(x, per_token=True)
    y = blocksparse.linear(xq, Q, x_scale=s, x_zero_point=z)
    np.testing.assert_array_equal(y, blocksparse.linear(x, Q))
    with pytest.raises(ValueError, match="x_scale must be a scalar or have shape"):
        blocksparse.linear(xq, Q, x_scale=s[:3], x_zero_point=z)
