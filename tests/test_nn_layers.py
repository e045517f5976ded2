"""blocksparse.nn layers and BertModel against NumPy float64 twins.

Float layers (dense and block-sparse) are checked with float32 tolerances;
INT8 layers against the float64 twin run on the same (dequantized)
weights, where only the per-token activation rounding differs, with a
relative error bound, and against the original weights by cosine.
"""
import math

import numpy as np
import pytest
from scipy.special import erf

import blocksparse
from blocksparse.nn import (BertEncoder, BertLayer, BertModel, LayerNorm, Linear,
                            MultiHeadSelfAttention, mean_pooling)

CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
           vocab_size=300, max_position_embeddings=40, type_vocab_size=2)


# ---- float64 twins ------------------------------------------------------------------

def effective_weight(lin):
    """The float64 (M, K) matrix the Linear layer multiplies by."""
    if lin.kind == "dense":
        return lin.weight.astype(np.float64)
    if lin.kind == "sparse":
        return lin.weight.toarray().astype(np.float64)
    w = lin.weight.dequantize().toarray().astype(np.float64)
    if lin.input_scale is not None:
        w = w * lin.input_scale.astype(np.float64)[None, :]
    return w


def linear_twin(lin, x):
    y = np.asarray(x, np.float64) @ effective_weight(lin).T
    return y if lin.bias is None else y + lin.bias


def ln_twin(ln, t):
    mu = t.mean(-1, keepdims=True)
    var = ((t - mu) ** 2).mean(-1, keepdims=True)
    return (t - mu) / np.sqrt(var + ln.eps) * ln.weight + ln.bias


def gelu_twin(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention_twin(att, x, mask):
    B, S, H = x.shape
    h, d = att.num_heads, H // att.num_heads
    qkv = linear_twin(att.qkv, x.reshape(B * S, H)).reshape(B, S, 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        s = np.where(np.asarray(mask, bool)[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(B * S, H)
    return linear_twin(att.out, ctx).reshape(B, S, H)


def layer_twin(layer, x, mask=None):
    x = np.asarray(x, np.float64)
    B, S, H = x.shape
    h1 = ln_twin(layer.ln1, attention_twin(layer.attention, x, mask) + x)
    act = gelu_twin if layer.activation == "gelu" else (lambda t: np.maximum(t, 0))
    inter = act(linear_twin(layer.ffn1, h1.reshape(B * S, H)))
    return ln_twin(layer.ln2, linear_twin(layer.ffn2, inter).reshape(B, S, H) + h1)


def model_twin(model, ids, mask=None, token_type_ids=None):
    emb = model.embeddings
    B, S = ids.shape
    t = emb.word[ids].astype(np.float64) + emb.position[:S]
    if emb.token_type is not None:
        t = t + emb.token_type[np.zeros_like(ids) if token_type_ids is None else token_type_ids]
    x = ln_twin(emb.ln, t)
    for layer in model.encoder:
        x = layer_twin(layer, x, mask)
    return x


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def random_layer(rng, H=64, I=128, heads=4, **opts):
    def w(*shape):
        return rng.standard_normal(shape) * 0.1

    att = MultiHeadSelfAttention.from_weights((w(H, H), w(H)), (w(H, H), w(H)), (w(H, H), w(H)),
                                              (w(H, H), w(H)), heads, **opts)
    return BertLayer(att, LayerNorm(1 + w(H), w(H)), Linear.from_dense(w(I, H), w(I), **opts),
                     Linear.from_dense(w(H, I), w(H), **opts), LayerNorm(1 + w(H), w(H)))


# ---- Linear ---------------------------------------------------------------------------

@pytest.mark.parametrize("opts,kind", [
    (dict(), "dense"),
    (dict(sparsity=0.7), "sparse"),
    (dict(sparsity=0.7, blocksize=(1, 4)), "sparse"),
    (dict(dtype="int8"), "int8"),
    (dict(sparsity=0.8, dtype="int8"), "int8"),
    (dict(sparsity=0.5, dtype="int8", blocksize=(1, 4), balanced=True), "int8"),
])
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_linear_kinds(rng, isa, opts, kind, activation):
    W = rng.standard_normal((48, 32)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    lin = Linear.from_dense(W, b, **opts)
    assert lin.kind == kind and (lin.in_features, lin.out_features) == (32, 48)
    y = lin(x, activation=activation)
    assert y.dtype == np.float32 and y.shape == (2, 5, 48)
    act = {None: lambda t: t, "relu": lambda t: np.maximum(t, 0), "gelu": gelu_twin}[activation]
    want = act(linear_twin(lin, x.reshape(10, 32))).reshape(2, 5, 48)
    if kind == "int8":
        # only the activation rounding differs from the dequantized twin
        assert rel_err(y, want) < 2e-2
        ref = Linear.from_dense(W, b, **{**opts, "dtype": "float32"})   # same pruning
        assert cosine(y, act(linear_twin(ref, x.reshape(10, 32)))) > 0.999
    else:
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    # the inner path ((features, tokens) arrays) gives the same
    inner = lin._forward(np.ascontiguousarray(x.reshape(10, 32).T), None, activation)
    np.testing.assert_allclose(inner.T.reshape(y.shape), y, rtol=1e-6, atol=1e-6)


def test_linear_from_objects(rng):
    W = rng.standard_normal((8, 12)).astype(np.float32)
    sp = blocksparse.prune(W, 0.5, blocksize=(4, 1))
    assert Linear(sp).kind == "sparse"
    assert Linear(blocksparse.quantize(sp)).kind == "int8"
    assert Linear(W.astype(np.float64)).weight.dtype == np.float32
    with pytest.raises(TypeError, match="integer BlockSparseMatrix has no scales"):
        Linear(blocksparse.BlockSparseMatrix(np.ones((4, 4), np.int8), blocksize=(4, 1)))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        Linear(W, np.ones(7))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        Linear(W[0])
    with pytest.raises(TypeError, match="weight must be a float array"):
        Linear(W.astype(np.int32))
    with pytest.raises(ValueError, match="weight has NaN or Inf"):
        Linear(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="input_scale is only for INT8"):
        Linear(W, input_scale=np.ones(12))
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'int8'"):
        Linear.from_dense(W, dtype="float16")
    lin = Linear(W)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 12\)"):
        lin(np.ones((3, 11)))
    with pytest.raises(ValueError, match="activation must be None, 'relu' or 'gelu'"):
        lin(np.ones((3, 12)), activation="tanh")
    assert "Linear 12 -> 8, dense" in repr(lin)


def test_linear_to_int8_smoothing_is_exact_change_of_basis(rng):
    W = rng.standard_normal((16, 32)).astype(np.float32)
    x = rng.standard_normal((6, 32)).astype(np.float32)
    x[:, 3] *= 40                                  # an outlier feature
    amax = np.abs(x).max(0)
    for w in (W, blocksparse.prune(W, 0.5, blocksize=(4, 1))):
        lin = Linear(w, np.ones(16))
        q = lin.to_int8(input_absmax=amax, smoothing=0.5)
        assert q.kind == "int8" and q.input_scale is not None
        # dequantized weights times the input factors give back W (up to rounding)
        eff = effective_weight(q)
        dense = w if isinstance(w, np.ndarray) else w.toarray()
        step = np.abs(q.weight.scale)[:, None] * q.input_scale[None, :]
        assert np.all(np.abs(eff - dense) <= 0.5001 * step + 1e-7)
        plain = lin.to_int8()
        exact = x.astype(np.float64) @ dense.T + 1
        assert rel_err(q(x), exact) < rel_err(plain(x), exact)
    with pytest.raises(ValueError, match="smoothing needs input_absmax"):
        Linear(W).to_int8(smoothing=0.5)
    with pytest.raises(ValueError, match="already INT8"):
        q.to_int8()


# ---- LayerNorm, attention, layers ------------------------------------------------------

def test_layernorm_class(rng):
    ln = LayerNorm(rng.standard_normal(10), rng.standard_normal(10), eps=1e-5)
    x = rng.standard_normal((2, 3, 10))
    r = rng.standard_normal((2, 3, 10))
    np.testing.assert_allclose(ln(x, residual=r), ln_twin(ln, x + r), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ln(x), ln_twin(ln, x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 10\)"):
        ln(np.ones((2, 9)))
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        ln(x, residual=r[0])
    with pytest.raises(ValueError, match="weight must be a non-empty 1-D array"):
        LayerNorm(np.ones((2, 2)), np.ones(2))


@pytest.mark.parametrize("opts", [dict(), dict(sparsity=0.6), dict(sparsity=0.6, dtype="int8")])
def test_attention_layer(rng, opts):
    layer = random_layer(rng, **opts)
    att = layer.attention
    x = rng.standard_normal((3, 11, 64)).astype(np.float32)
    mask = np.ones((3, 11), np.int64)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    got = att(x, mask)
    want = attention_twin(att, x, mask)
    if opts.get("dtype") == "int8":
        assert rel_err(got, want) < 2e-2
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opts", [dict(), dict(sparsity=0.8), dict(dtype="int8"),
                                  dict(sparsity=0.9, dtype="int8", blocksize=(1, 4))])
def test_bert_layer_and_encoder(rng, num_threads, opts):
    layers = [random_layer(rng, **opts) for _ in range(2)]
    x = rng.standard_normal((2, 9, 64)).astype(np.float32)
    mask = np.array([[1] * 9, [1] * 5 + [0] * 4])
    got = layers[0](x, mask)
    want = layer_twin(layers[0], x, mask)
    enc = BertEncoder(layers)
    got2 = enc(x, mask)
    want2 = layer_twin(layers[1], want, mask)
    if opts.get("dtype") == "int8":
        assert rel_err(got, want) < 2e-2 and rel_err(got2, want2) < 3e-2
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(got2, want2, rtol=1e-4, atol=3e-4)


def test_layer_construction_errors(rng):
    layer = random_layer(rng)
    att = layer.attention
    with pytest.raises(ValueError, match="num_heads must be a positive divisor"):
        MultiHeadSelfAttention(att.qkv, att.out, 5)
    with pytest.raises(ValueError, match="qkv must map 64 -> 192"):
        MultiHeadSelfAttention(att.out, att.out, 4)
    with pytest.raises(ValueError, match="ffn1 must map 64 -> I"):
        BertLayer(att, layer.ln1, layer.ffn2, layer.ffn2, layer.ln2)
    with pytest.raises(ValueError, match="activation must be 'gelu' or 'relu'"):
        BertLayer(att, layer.ln1, layer.ffn1, layer.ffn2, layer.ln2, "tanh")
    with pytest.raises(TypeError, match="layers must be BertLayer"):
        BertEncoder([att])
    with pytest.raises(ValueError, match="give biases for all of q, k, v or for none"):
        MultiHeadSelfAttention.from_weights((np.eye(4), None), (np.eye(4), np.ones(4)),
                                            (np.eye(4), None), (np.eye(4), None), 1)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, seq, 64\)"):
        layer(np.ones((2, 3, 63)))


def test_mean_pooling(rng):
    h = rng.standard_normal((3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    got = mean_pooling(h, mask)
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got[0], h[0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], h[1, :2].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0)          # no tokens: zeros, not NaN
    np.testing.assert_allclose(mean_pooling(h), h.mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(3, 5\)"):
        mean_pooling(h, mask[:, :4])
    with pytest.raises(ValueError, match="hidden must have shape"):
        mean_pooling(h[0], None)


# ---- BertModel -----------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [dict(), dict(sparsity=0.8), dict(dtype="int8"),
                                  dict(sparsity=0.8, dtype="int8")])
def test_model_from_config_matches_twin(rng, opts):
    model = BertModel.from_config(CFG, seed=1, **opts)
    ids = rng.integers(0, 300, size=(3, 13))
    mask = np.ones((3, 13), np.int64)
    mask[1, 6:] = 0
    tt = np.zeros((3, 13), np.int64)
    tt[:, 7:] = 1
    got = model(ids, mask, tt)
    assert got.dtype == np.float32 and got.shape == (3, 13, 64)
    want = model_twin(model, ids, mask, tt)
    if opts.get("dtype") == "int8":
        assert rel_err(got, want) < 3e-2
        ref = BertModel.from_config(CFG, seed=1, sparsity=opts.get("sparsity"))
        emb = mean_pooling(got, mask)
        emb32 = mean_pooling(ref(ids, mask, tt), mask)
        assert all(cosine(a, b) > 0.999 for a, b in zip(emb, emb32))
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-4)


def test_model_batch_of_unequal_lengths(rng):
    model = BertModel.from_config(CFG, seed=2, sparsity=0.5, dtype="int8")
    lengths = [13, 4, 9]
    ids = rng.integers(1, 300, size=(3, 13))
    mask = (np.arange(13)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    batch = model(ids, mask)
    for b, n in enumerate(lengths):
        alone = model(ids[b:b + 1, :n])
        # same tokens, same weights: the padding changes nothing (masked keys are
        # skipped, every per-token computation stays in its own vector lane), so
        # the rows come out bit-identical; the tolerance only allows float32 rounding
        np.testing.assert_allclose(batch[b, :n], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("two_pass", [0, 8])
def test_model_chunks_change_no_bit(rng, monkeypatch, two_pass):
    """An INT8 batch runs the encoder in chunks of whole sequences; the chunking
    (here 1, 2, 3 and 7 sequences per chunk, and the whole batch) changes no bit
    of the last hidden state nor of a task head's input."""
    from blocksparse.nn import bert
    model = BertModel.from_config(CFG, seed=3, sparsity=0.8, dtype="int8", attention="int8")
    model.two_pass_max_tokens = two_pass
    B, S = 7, 13
    ids = rng.integers(1, 300, size=(B, S))
    mask = (np.arange(S)[None, :] < rng.integers(1, S + 1, size=B)[:, None]).astype(np.int64)
    tt = rng.integers(0, 2, size=(B, S))
    widest = 4 * CFG["intermediate_size"] * S    # bytes of one sequence's FFN1 output
    outs = {}
    for per in (1, 2, 3, 7, 100):
        monkeypatch.setattr(bert, "_CHUNK_BYTES", per * widest)
        assert len(model._sequence_chunks(B, S)) == -(-B // per)
        outs[per] = (model(ids, mask, tt), model._encode(ids, mask, tt)[0])
    for per, (hidden, columns) in outs.items():
        np.testing.assert_array_equal(hidden, outs[100][0], err_msg=f"{per} per chunk")
        np.testing.assert_array_equal(columns, outs[100][1], err_msg=f"{per} per chunk")
        np.testing.assert_array_equal(columns.T.reshape(B, S, -1), hidden)


def test_model_input_validation():
    model = BertModel.from_config(CFG, seed=0)
    assert model(np.array([1, 2, 3])).shape == (1, 3, 64)
    assert model(np.zeros((2, 0), np.int64)).shape == (2, 0, 64)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size = 300\)"):
        model(np.array([[1, 300]]))
    with pytest.raises(ValueError, match=r"input_ids must lie in"):
        model(np.array([[-1, 3]]))
    with pytest.raises(TypeError, match="input_ids must be an integer array"):
        model(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="at most max_position_embeddings = 40"):
        model(np.ones((1, 41), np.int64))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(1, 3\)"):
        model(np.array([[1, 2, 3]]), np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        model(np.array([[1, 2, 3]]), token_type_ids=np.array([[0, 2, 0]]))
    with pytest.raises(ValueError, match="token_type_ids must have the shape of input_ids"):
        model(np.array([[1, 2, 3]]), token_type_ids=np.array([[0, 1]]))
    with pytest.raises(ValueError, match="sparsity must be None or a number in"):
        BertModel.from_config(CFG, sparsity=1.5)
    with pytest.raises(ValueError, match="has no pooler"):
        model.pool(np.zeros((1, 2, 64)))


def test_model_inputs_not_modified(rng):
    model = BertModel.from_config(CFG, seed=0, dtype="int8")
    ids = rng.integers(0, 300, size=(2, 7))
    mask = np.ones((2, 7), np.uint8)
    ids0, mask0 = ids.copy(), mask.copy()
    model(ids, mask)
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(mask, mask0)


def test_model_pooler_and_encode(rng):
    model = BertModel.from_config(CFG, seed=0, add_pooling_layer=True)
    ids = rng.integers(0, 300, size=(2, 5))
    hidden = model(ids)
    pooled = model.pool(hidden)
    np.testing.assert_allclose(pooled, np.tanh(linear_twin(model.pooler, hidden[:, 0])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(ids), hidden.mean(1), rtol=1e-5, atol=1e-6)


def test_model_distilbert_config_and_relu():
    cfg = dict(model_type="distilbert", dim=32, n_layers=1, n_heads=2, hidden_dim=64,
               vocab_size=50, max_position_embeddings=16, activation="relu")
    model = BertModel.from_config(cfg, dtype="int8", sparsity=0.5)
    assert model.embeddings.token_type is None
    assert model.encoder.layers[0].activation == "relu"
    ids = np.array([[1, 2, 3, 4]])
    got = model(ids)
    want = model_twin(model, ids)
    assert rel_err(got, want) < 3e-2
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 1\)"):
        model(ids, token_type_ids=np.ones_like(ids))


def test_model_smoothing_from_config(rng):
    ids = rng.integers(0, 300, size=(2, 9))
    plain = BertModel.from_config(CFG, seed=3, dtype="int8")
    smooth = BertModel.from_config(CFG, seed=3, dtype="int8", smoothing=0.5,
                                   calibration=(ids, np.ones_like(ids)))
    assert smooth.smoothing == 0.5
    assert smooth.encoder.layers[0].attention.qkv.input_scale is not None
    ref = BertModel.from_config(CFG, seed=3)(ids)
    assert rel_err(smooth(ids), ref) < 3e-2 and rel_err(plain(ids), ref) < 3e-2
    with pytest.raises(ValueError, match="smoothing must be None or a number in"):
        BertModel.from_config(CFG, dtype="int8", smoothing=2.0)
    with pytest.raises(ValueError, match="calibration must be input_ids or"):
        BertModel.from_config(CFG, dtype="int8", smoothing=0.5, calibration=(ids,))
