"""Finite input gives finite output or a named ValueError (issue 11, classes 6 and 7).

- activations near the float32 limit quantize with a finite scale (per token,
  per tensor, calibrate); a product that really overflows is refused by name;
- tiny weights (|W| <= 1e-44) quantize instead of failing about a scale the
  user never gave; weights beyond float32 are refused by name;
- attention masks hold 0 and 1 only; empty sequences pool to zeros.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse

F32 = np.float32
BIG = float(np.finfo(F32).max)


@pytest.mark.parametrize("x", [[[-2e38, 2e38]], [[-BIG, BIG, 0.0]], [[BIG, -BIG], [1.0, -1.0]],
                               [[-3e38, 1e-45, 3e38, 5.0]]])
@pytest.mark.parametrize("per_token", [True, False])
def test_activation_scales_stay_finite_near_the_float32_limit(isa, x, per_token):
    x = np.array(x, F32)
    q, s, z = blocksparse.quantize_activations(x, per_token=per_token)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    # dequantized values are within a step of the input (half for rint, half for the
    # zero point's rounding at the clipped end of the range)
    s2 = np.broadcast_to(np.reshape(s, (-1, 1)), x.shape).astype(np.float64)
    z2 = np.broadcast_to(np.reshape(z, (-1, 1)), x.shape)
    back = (q.astype(np.float64) - z2) * s2
    assert np.all(np.abs(back - x) <= s2 * (1 + 1e-6))
    # and a row with a normal range keeps the float32 formula (bit for bit)
    if per_token and x.shape[0] > 1:
        np.testing.assert_array_equal(s[1:], blocksparse.quantize_activations(x[1:])[1])


def test_calibrate_never_returns_inf():
    s, z = blocksparse.calibrate(np.array([[-2e38, 2e38]], F32))
    assert np.isfinite(s) and s > 0 and 0 <= z <= 255
    q, _, _ = blocksparse.quantize_activations(np.array([[-2e38, 2e38]], F32), s, z)
    assert q.tolist() == [[0, 254]]
    with pytest.raises(ValueError, match=r"samples have values beyond the float32 range"):
        blocksparse.calibrate(np.array([1e300]))


@pytest.mark.parametrize("per_token", [True, False])
def test_linear_refuses_a_float32_overflow_by_name(isa, per_token):
    Q = blocksparse.quantize(np.ones((4, 8), F32))
    x = np.full((2, 8), 2e38, F32)
    with pytest.raises(ValueError, match=r"the product overflows float32: x \(activation scale"):
        blocksparse.linear(x, Q, per_token=per_token)
    with pytest.raises(ValueError, match=r"the product overflows float32"):
        Q @ x.T
    with pytest.raises(ValueError, match=r"the product overflows float32"):
        blocksparse.linear(np.ones((1, 8), F32) * 1e38, Q, bias=np.full(4, 3e38, F32))
    # the same magnitudes with tiny weights are fine: finite, and right
    Qs = blocksparse.quantize(np.full((4, 8), 1e-30, F32))
    y = blocksparse.linear(x, Qs, per_token=per_token)
    np.testing.assert_allclose(y, np.full((2, 4), 8 * 2e38 * 1e-30), rtol=1e-2)
    # uint8 output saturates instead (always finite)
    u = blocksparse.linear(x, Q, out_dtype="uint8", out_scale=1.0, out_zero_point=0)
    assert u.tolist() == [[255] * 4] * 2


@given(st.floats(-BIG, BIG, width=32), st.floats(-BIG, BIG, width=32),
       st.floats(2.0 ** -20, 2.0 ** 20, width=32))
def test_linear_output_finite_or_refused(a, b, w):
    """Hypothesis over the whole float32 range: never a silent NaN or Inf."""
    Q = blocksparse.quantize(np.array([[w, -w], [w, w], [0, w], [w, 0]], F32))
    x = np.array([[a, b]], F32)
    try:
        y = blocksparse.linear(x, Q)
    except ValueError as exc:
        assert "overflows float32" in str(exc)
    else:
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("value", [1e-44, 1e-45, -1e-44, 3e-43, 1e-40])
def test_tiny_weights_quantize(value):
    W = np.zeros((4, 4), F32)
    W[0, 1], W[3, 2] = value, 1.0
    Q = blocksparse.quantize(W, blocksize=(1, 1))
    assert np.all(np.isfinite(Q.scale)) and np.all(Q.scale > 0)
    D = Q.dequantize().toarray()
    assert abs(D[0, 1] - F32(value)) <= Q.scale[0] and D[3, 2] == 1.0
    y = blocksparse.linear(np.ones((2, 4), F32), Q)
    assert np.all(np.isfinite(y))


def test_weights_beyond_float32_are_refused_by_name():
    with pytest.raises(ValueError, match=r"W has values beyond the float32 range"):
        blocksparse.quantize(np.full((4, 2), 1e39))
    Q = blocksparse.quantize(np.full((4, 2), BIG, F32))  # at the limit: fine
    assert np.all(np.isfinite(Q.dequantize().toarray()))


# ---- masks and empty input --------------------------------------------------------------------

nn = pytest.importorskip("blocksparse.nn")
CFG = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
           vocab_size=50)


@pytest.fixture(scope="module", params=["float32", "int8"])
def model(request):
    return nn.BertModel.from_config(CFG, dtype=request.param)


IDS = np.array([[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("bad", [2, -1, np.nan, 0.5, np.inf])
def test_mask_values_other_than_0_1_are_refused(model, bad):
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float64)
    mask[0, 1] = bad
    for call in (lambda: model(IDS, mask), lambda: model.encode(IDS, mask),
                 lambda: nn.mean_pooling(np.ones((2, 3, 4)), mask),
                 lambda: nn.attention(np.ones((6, 3 * 32), F32), 4, mask, batch_size=2)):
        with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and "
                                             r"1 \(token\)"):
            call()


@pytest.mark.parametrize("mask", [np.array([[1, 1, 0], [1, 1, 1]]),
                                  np.array([[True, True, False], [True, True, True]]),
                                  np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], F32),
                                  np.array([[1, 1, 0], [1, 1, 1]], np.uint8)])
def test_every_0_1_mask_type_gives_the_same_embedding(model, mask):
    ref = model.encode(IDS, np.array([[1, 1, 0], [1, 1, 1]]))
    np.testing.assert_array_equal(model.encode(IDS, mask), ref)


def test_empty_and_all_padding_sequences_pool_to_zeros(model):
    H = CFG["hidden_size"]
    for mask in (None, np.zeros((2, 0))):
        emb = model.encode(np.zeros((2, 0), int), mask)
        assert emb.shape == (2, H) and not np.any(emb)
    emb = model.encode(IDS, np.array([[0, 0, 0], [1, 1, 1]]))
    assert not np.any(emb[0]) and np.all(np.isfinite(emb[1])) and np.any(emb[1])
    assert nn.mean_pooling(np.ones((3, 0, 4))).tolist() == [[0.0] * 4] * 3
