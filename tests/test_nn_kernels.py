"""The encoder's C kernels (bsk_nn.h) against NumPy float64 twins.

Attention, fused residual + LayerNorm (+ quantization), bias + activation
and per-token quantization, on every ISA variant of this machine and with 1
and 2 threads (the ``isa`` and ``num_threads`` fixtures of conftest.py),
through the public (tokens, features) functions and the (features, tokens)
inner paths the encoder uses.
"""
import math

import numpy as np
import pytest
from scipy.special import erf

import blocksparse
from blocksparse import _config, _kernels
from blocksparse.nn import attention, gelu, layer_norm, quantize_rows

F32_MIN = np.finfo(np.float32).min


@pytest.fixture(autouse=True)
def split_small_inputs():
    """Small inputs normally stay on one thread; split them anyway, so that
    the 2-thread runs of the num_threads fixture really divide the work."""
    saved = _kernels.nn_set_min_work_per_thread(0)
    try:
        yield
    finally:
        _kernels.nn_set_min_work_per_thread(saved)


# ---- float64 twins ----------------------------------------------------------------

def attention_twin(qkv, batch, heads, mask=None):
    """softmax(Q K^T / sqrt(d) + additive mask) V per head, float64.

    The additive mask is float32's finfo.min, applied in float32 as
    transformers does, so a sequence with every key masked gets uniform
    weights (all scores round to finfo.min).
    """
    rows, width = qkv.shape
    H = width // 3
    S, d = rows // batch, H // heads
    x = qkv.astype(np.float64).reshape(batch, S, 3, heads, d)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)[:, None, None, :]
        s = np.where(keep, s, -np.inf)
        dead = ~keep.any(axis=-1, keepdims=True)            # every key masked
        s = np.where(dead, 0.0, s)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(rows, H)


def layer_norm_twin(x, gamma, beta, eps, residual=None):
    t = x.astype(np.float64) + (0 if residual is None else residual.astype(np.float64))
    mu = t.mean(axis=1, keepdims=True)
    var = ((t - mu) ** 2).mean(axis=1, keepdims=True)
    return (t - mu) / np.sqrt(var + eps) * gamma + beta


def gelu_twin(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def qkv_input(rng, batch, seq, heads, d, scale=1.0):
    return (rng.standard_normal((batch * seq, 3 * heads * d)) * scale).astype(np.float32)


# ---- attention ----------------------------------------------------------------------

@pytest.mark.parametrize("batch,seq,heads,d", [
    (1, 128, 12, 64),   # BERT-Base shape
    (2, 37, 4, 32),     # seq not a multiple of the register block, MiniLM head size
    (3, 5, 2, 24),      # head size not a multiple of 16
    (1, 1, 1, 16),      # one token
    (2, 17, 3, 8),      # small head, seq just past 16
])
def test_attention_matches_float64(isa, num_threads, rng, batch, seq, heads, d):
    qkv = qkv_input(rng, batch, seq, heads, d, scale=2.0)
    got = attention(qkv, heads, batch_size=batch)
    assert got.dtype == np.float32 and got.shape == (batch * seq, heads * d)
    np.testing.assert_allclose(got, attention_twin(qkv, batch, heads), rtol=1e-4, atol=1e-5)


def test_attention_mask_unequal_lengths(isa, num_threads, rng):
    batch, seq, heads, d = 4, 40, 4, 32
    qkv = qkv_input(rng, batch, seq, heads, d)
    lengths = [40, 17, 1, 33]
    mask = np.zeros((batch, seq), dtype=np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    got = attention(qkv, heads, mask, batch_size=batch)
    np.testing.assert_allclose(got, attention_twin(qkv, batch, heads, mask), rtol=1e-4,
                               atol=1e-5)
    # a sequence in a padded batch gives what it gives alone, on its real tokens
    for b, n in enumerate(lengths):
        rows = qkv.reshape(batch, seq, -1)[b, :n]
        alone = attention(rows, heads)
        np.testing.assert_allclose(got.reshape(batch, seq, -1)[b, :n], alone, rtol=1e-5,
                                   atol=1e-6)


def test_attention_masked_keys_have_no_influence(isa, rng):
    batch, seq, heads, d = 2, 24, 2, 16
    qkv = qkv_input(rng, batch, seq, heads, d)
    mask = rng.random((batch, seq)) < 0.6           # holes anywhere, not only a tail
    mask[:, 0] = True
    got = attention(qkv, heads, mask, batch_size=batch)
    np.testing.assert_allclose(got, attention_twin(qkv, batch, heads, mask), rtol=1e-4,
                               atol=1e-5)
    # garbage (even huge values) in the masked keys and values changes nothing
    poisoned = qkv.reshape(batch, seq, 3, -1).copy()
    poisoned[:, :, 1:][~mask] = 1e30
    again = attention(poisoned.reshape(batch * seq, -1), heads, mask, batch_size=batch)
    np.testing.assert_array_equal(again, got)


def test_attention_fully_masked_sequence_is_uniform(isa, rng):
    batch, seq, heads, d = 2, 9, 2, 16
    qkv = qkv_input(rng, batch, seq, heads, d)
    mask = np.ones((batch, seq), dtype=bool)
    mask[1] = False
    got = attention(qkv, heads, mask, batch_size=batch).reshape(batch, seq, -1)
    values = qkv.reshape(batch, seq, 3, -1)[1, :, 2].astype(np.float64)
    np.testing.assert_allclose(got[1], np.broadcast_to(values.mean(0), (seq, heads * d)),
                               rtol=1e-5, atol=1e-6)


def test_attention_same_result_any_thread_count(rng):
    qkv = qkv_input(rng, 3, 50, 6, 32)
    mask = np.ones((3, 50), dtype=bool)
    mask[1, 30:] = False
    outs = []
    for n in (1, 2, 3, 7):
        with blocksparse.isa_context(blocksparse.get_isa()):
            saved = blocksparse.get_num_threads()
            blocksparse.set_num_threads(n)
            try:
                outs.append(attention(qkv, 6, mask, batch_size=3))
            finally:
                blocksparse.set_num_threads(saved)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_attention_fused_quantization_equals_separate(isa, num_threads, rng):
    from blocksparse.nn import _ops
    batch, seq, heads, d = 2, 21, 3, 32
    qkv = qkv_input(rng, batch, seq, heads, d)
    out = np.empty((heads * d, batch * seq), np.float32)
    y, qa = _ops._attention(np.ascontiguousarray(qkv.T), batch, seq, heads, None, out, True)
    np.testing.assert_allclose(y.T, attention_twin(qkv, batch, heads), rtol=1e-4, atol=1e-5)
    xq, s, z = blocksparse.quantize_activations(y.T)
    np.testing.assert_array_equal(qa.q.T, xq, strict=False)
    np.testing.assert_array_equal(qa.scale, s, strict=True)
    np.testing.assert_array_equal(qa.zero, z, strict=True)


def test_attention_does_not_modify_inputs(rng):
    qkv = qkv_input(rng, 2, 10, 2, 16)
    mask = np.array([[1] * 10, [1] * 4 + [0] * 6], dtype=np.uint8)
    q0, m0 = qkv.copy(), mask.copy()
    attention(qkv, 2, mask, batch_size=2)
    np.testing.assert_array_equal(qkv, q0)
    np.testing.assert_array_equal(mask, m0)


def test_attention_bad_arguments(rng):
    qkv = qkv_input(rng, 2, 4, 2, 16)
    with pytest.raises(ValueError, match="num_heads must be a positive divisor"):
        attention(qkv, 5)
    with pytest.raises(ValueError, match="batch_size must be a positive divisor"):
        attention(qkv, 2, batch_size=3)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 4\)"):
        attention(qkv, 2, np.ones((2, 5)), batch_size=2)
    with pytest.raises(ValueError, match="qkv must have 3 \\* hidden columns"):
        attention(qkv[:, :-1], 2)
    with pytest.raises(TypeError, match="qkv must be a float array"):
        attention(qkv.astype(np.int32), 2)
    with pytest.raises(TypeError, match="attention_mask must be numeric"):
        attention(qkv, 2, np.full((2, 4), "a"), batch_size=2)


def test_attention_kernel_checks_buffers(rng):
    """The Cython layer refuses what would let C write out of bounds."""
    qkv = np.ascontiguousarray(qkv_input(rng, 1, 4, 2, 16).T)      # (96, 4)
    isa = _config._active_isa()
    out = np.empty((32, 4), np.float32)
    with pytest.raises(ValueError, match="qkv must have shape"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out[:16], None, None, None, 1)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _kernels.attention(isa, np.asfortranarray(qkv), 1, 4, 2, None, 0.25, out, None, None,
                           None, 1)
    with pytest.raises(ValueError, match="mask must have shape"):
        _kernels.attention(isa, qkv, 1, 4, 2, np.ones((1, 3), np.uint8), 0.25, out, None,
                           None, None, 1)
    overlapping = qkv.reshape(-1)[:128].reshape(32, 4)   # contiguous view into qkv
    with pytest.raises(ValueError, match="out must not overlap qkv"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, overlapping, None, None, None, 1)
    with pytest.raises(ValueError, match="q_scale must be"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out, np.empty((32, 4), np.uint8),
                           np.empty(3, np.float32), np.empty(4, np.int32), 1)
    with pytest.raises(ValueError, match="heads must be positive and divide"):
        _kernels.attention(isa, qkv, 1, 4, 3, None, 0.25, out, None, None, None, 1)


# ---- LayerNorm ------------------------------------------------------------------------

@pytest.mark.parametrize("cols", [1, 7, 16, 384, 770])
def test_layer_norm_fused_residual(isa, num_threads, rng, cols):
    x = (rng.standard_normal((33, cols)) * 3 + 1).astype(np.float32)
    r = rng.standard_normal((33, cols)).astype(np.float32)
    g = rng.standard_normal(cols).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    x0, r0 = x.copy(), r.copy()
    got = layer_norm(x, g, b, 1e-12, residual=r)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(r, r0)
    want = layer_norm_twin(x, g, b, 1e-12, r)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())
    np.testing.assert_allclose(layer_norm(x, g, b, 1e-5), layer_norm_twin(x, g, b, 1e-5),
                               rtol=1e-4, atol=2e-5 * np.abs(want).max())


def test_layer_norm_large_mean_no_cancellation(isa):
    # a naive E[x^2] - E[x]^2 variance loses everything here
    x = (1e4 + np.arange(64, dtype=np.float32) * 1e-2)[None, :].repeat(3, axis=0)
    got = layer_norm(x, np.ones(64), np.zeros(64), 0.0)
    np.testing.assert_allclose(got, layer_norm_twin(x, 1.0, 0.0, 0.0), atol=2e-3)


def test_layer_norm_in_place(isa, rng):
    x = rng.standard_normal((5, 40)).astype(np.float32)
    r = rng.standard_normal((5, 40)).astype(np.float32)
    g, b = np.ones(40), np.zeros(40)
    want = layer_norm(x, g, b, residual=r)
    x2 = x.copy()
    assert layer_norm(x2, g, b, residual=r, out=x2) is x2
    np.testing.assert_array_equal(x2, want)
    r2 = r.copy()
    layer_norm(x, g, b, residual=r2, out=r2)
    np.testing.assert_array_equal(r2, want)


@pytest.mark.parametrize("tokens", [1, 16, 20, 37])
def test_layer_norm_fused_quantization(isa, num_threads, rng, tokens):
    """The (features, tokens) inner path: LayerNorm + per-token uint8 codes."""
    from blocksparse.nn import _ops
    F = 300
    x = rng.standard_normal((F, tokens)).astype(np.float32)
    r = rng.standard_normal((F, tokens)).astype(np.float32)
    g = rng.standard_normal(F).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    y, qa = _ops._layer_norm(x, r, g, b, 1e-12, np.empty_like(x), True)
    np.testing.assert_allclose(y.T, layer_norm_twin(x.T, g, b, 1e-12, r.T), rtol=1e-4,
                               atol=1e-4)
    xq, s, z = blocksparse.quantize_activations(y.T)
    np.testing.assert_array_equal(qa.q.T, xq)
    np.testing.assert_array_equal(qa.scale, s, strict=True)
    np.testing.assert_array_equal(qa.zero, z, strict=True)
    # with per-feature factors the codes are those of y * q_mul
    mul = rng.uniform(0.1, 3, F).astype(np.float32)
    y2, qa2 = _ops._layer_norm(x, r, g, b, 1e-12, np.empty_like(x), True, mul)
    np.testing.assert_array_equal(y2, y)
    xq2, s2, z2 = blocksparse.quantize_activations((y * mul[:, None]).T)
    np.testing.assert_array_equal(qa2.q.T, xq2)
    np.testing.assert_array_equal(qa2.scale, s2, strict=True)
    # tokens-major input (the embeddings' path) gives the same
    y3, qa3 = _ops._layer_norm(np.ascontiguousarray((x + r).T), None, g, b, 1e-12,
                               np.empty_like(x), True, mul, x_tokens=True)
    np.testing.assert_allclose(y3, y, rtol=1e-6, atol=1e-6)


def test_layer_norm_bad_arguments(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        layer_norm(x, np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"residual must have shape \(3, 4\)"):
        layer_norm(x, np.ones(4), np.zeros(4), residual=np.ones((3, 5)))
    with pytest.raises(ValueError, match="eps must be finite and non-negative"):
        layer_norm(x, np.ones(4), np.zeros(4), eps=-1.0)
    with pytest.raises(ValueError, match="x must be 2-D"):
        layer_norm(x[0], np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="out must be a writable C-contiguous float32"):
        layer_norm(x, np.ones(4), np.zeros(4), out=np.empty((3, 4)))
    with pytest.raises(ValueError, match="at least one feature"):
        layer_norm(np.ones((3, 0)), np.ones(0), np.ones(0))


@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 9), (8, 8), (16, 24), (33, 17),
                                        (128, 256), (5, 0), (0, 3)])
def test_transpose_exact(isa, num_threads, rng, rows, cols):
    """The model's output transpose: 8 x 8 shuffled blocks and the scalar tails
    move every value unchanged (NaN payloads, -0.0 and infinities included)."""
    from blocksparse.nn import _ops
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, F32_MIN], np.float32)
    x.reshape(-1)[:special.size] = special[:x.size]
    out = np.full((cols, rows), 7.0, np.float32)
    assert _ops._transpose(x, out) is out
    np.testing.assert_array_equal(out.view(np.uint32), np.ascontiguousarray(x.T).view(np.uint32))


def test_transpose_bad_arguments(rng):
    isa = _config._active_isa()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"out must have shape \(6, 4\)"):
        _kernels.transpose(isa, x, np.empty((4, 6), np.float32), 1)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _kernels.transpose(isa, x.astype(np.float64), np.empty((6, 4), np.float32), 1)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _kernels.transpose(isa, x[:, ::2], np.empty((3, 4), np.float32), 1)
    sq = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="out must not overlap x"):
        _kernels.transpose(isa, sq, sq, 1)


# ---- bias + activation, quantization -------------------------------------------------------

def test_gelu_matches_erf_form(isa, num_threads):
    x = np.linspace(-12, 12, 4001, dtype=np.float32).reshape(1, -1)
    got = gelu(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, gelu_twin(x), rtol=0, atol=3e-6 * 12)
    np.testing.assert_allclose(gelu(x.astype(np.float64)), gelu_twin(x), rtol=1e-15)
    assert gelu(np.float32(1.0)).shape == ()
    with pytest.raises(TypeError, match="x must be a float array"):
        gelu(np.arange(3))


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_bias_act(isa, num_threads, rng, activation):
    """y (M, N) = act(y + bias[:, None]): one bias per feature row."""
    from blocksparse.nn import _ops
    y = rng.standard_normal((35, 9)).astype(np.float32) * 3
    bias = rng.standard_normal(35).astype(np.float32)
    want = y.astype(np.float64) + bias[:, None]
    want = {None: want, "relu": np.maximum(want, 0), "gelu": gelu_twin(want)}[activation]
    got = _ops._bias_act(y.copy(), bias, activation)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cols", [1, 15, 16, 63, 64, 65, 3072])
def test_quantize_rows_bit_identical_to_quantize_activations(isa, num_threads, rng, cols):
    x = (rng.standard_normal((17, cols)) * rng.uniform(0.01, 10, (17, 1))).astype(np.float32)
    x[3] = 0.0                       # an all-zero row: scale 1, zero point 0
    x[4] = np.abs(x[4])              # non-negative row
    q, scale, zero = quantize_rows(x)
    xq, s, z = blocksparse.quantize_activations(x)
    np.testing.assert_array_equal(q, xq, strict=True)
    np.testing.assert_array_equal(scale, s, strict=True)
    np.testing.assert_array_equal(zero, z, strict=True)
    assert scale[3] == 1.0 and zero[3] == 0
    from blocksparse.nn import _ops
    qa = _ops._quantize_tokens(np.ascontiguousarray(x.T))
    np.testing.assert_allclose(qa.dequantize(), x.T, atol=float(scale.max()) * 0.5001)


@pytest.mark.parametrize("features,tokens", [(2, 1), (3072, 128), (768, 37), (5, 200)])
def test_quantize_tokens_with_factors_same_bits_on_any_split(isa, num_threads, rng, features,
                                                             tokens):
    """The row split (large arrays on several threads) and the token split give
    the codes of quantize_activations of x * factor, per token."""
    x = (rng.standard_normal((features, tokens)) * rng.uniform(0.01, 10, (1, tokens)))
    x = x.astype(np.float32)
    x[:, 0] = 0.0                                  # a token of zeros: scale 1, zero 0
    mul = rng.uniform(0.5, 2.0, features).astype(np.float32)
    from blocksparse.nn import _ops
    qa = _ops._quantize_tokens(x, mul)
    xq, s, z = blocksparse.quantize_activations(np.ascontiguousarray((x * mul[:, None]).T))
    np.testing.assert_array_equal(qa.q, xq.T, strict=False)
    np.testing.assert_array_equal(qa.scale, s, strict=True)
    np.testing.assert_array_equal(qa.zero, z, strict=True)


def test_quantize_rows_empty():
    q, s, z = quantize_rows(np.zeros((0, 5), np.float32))
    assert q.shape == (0, 5) and s.shape == (0,)
    q, s, z = quantize_rows(np.zeros((2, 0), np.float32))
    assert q.shape == (2, 0) and s.tolist() == [1.0, 1.0]


def test_kernels_refuse_unusable_isa(monkeypatch, rng):
    """A variant this CPU lacks is a clean error, never a crash."""
    missing = [i for i in range(len(_config.ISA_NAMES)) if not _config._usable(i)]
    if not missing:
        pytest.skip("every ISA variant is usable here")
    x = rng.standard_normal((4, 2)).astype(np.float32)
    with pytest.raises(NotImplementedError, match="not supported"):
        _kernels.add_layernorm(missing[0], x, False, None, np.ones(4, np.float32),
                               np.zeros(4, np.float32), 1e-5, np.empty_like(x), None, None,
                               None, None, 1)


def test_token_kernels_same_result_any_thread_count(rng):
    from blocksparse.nn import _ops
    F, N = 96, 53                      # a partial 16-token block at the end
    x = rng.standard_normal((F, N)).astype(np.float32)
    r = rng.standard_normal((F, N)).astype(np.float32)
    g, b = np.ones(F, np.float32), np.zeros(F, np.float32)
    outs = []
    saved = blocksparse.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            blocksparse.set_num_threads(n)
            y, qa = _ops._layer_norm(x, r, g, b, 1e-12, np.empty_like(x), True)
            qb = _ops._quantize_tokens(x)
            outs.append((y, qa.q, qa.scale, qb.q, qb.zero))
    finally:
        blocksparse.set_num_threads(saved)
    for o in outs[1:]:
        for got, want in zip(o, outs[0]):
            np.testing.assert_array_equal(got, want)
