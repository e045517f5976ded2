"""The INT8 encoder layer as one C call (bsk_encoder_layer_q8_run) against the
piece-by-piece path it replaces: the same bits on every ISA variant, thread
count, batch shape and mask; which layers take it; its argument checks."""
import numpy as np
import pytest

import blocksparse
from blocksparse import _kernels
from blocksparse.nn import BertModel, Linear, _ops, layers

CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
           vocab_size=300, max_position_embeddings=160, type_vocab_size=2)

# (batch, seq): one sequence split over threads by query blocks (1 x 130 leaves
# a short last block on every variant), several split by sequences, ragged
# lengths, and a batch whose last chunk holds one sequence
SHAPES = [(1, 1), (1, 17), (1, 130), (2, 5), (3, 37), (5, 64)]


def _model(kind, **extra):
    opts = {"sparse41": dict(sparsity=0.8, blocksize=(4, 1)),
            "sparse14": dict(sparsity=0.5, blocksize=(1, 4)),
            "dense": dict(sparsity=None)}[kind]
    return BertModel.from_config(CFG, seed=5, dtype="int8", attention="int8", **opts, **extra)


def _inputs(rng, B, S):
    ids = rng.integers(1, 300, size=(B, S))
    mask = (np.arange(S)[None, :] < rng.integers(1, S + 1, size=B)[:, None]).astype(np.int64)
    if B > 2:
        mask[2] = 0                       # attends to no key: uniform attention
    return ids, mask


def _both_paths(model, monkeypatch, *args):
    """(piece by piece, one call per layer, how many layers took the one call)."""
    calls = []
    real = _ops._encoder_layer_q8
    monkeypatch.setattr(_ops, "_encoder_layer_q8", lambda *a: calls.append(1) or real(*a))
    with monkeypatch.context() as m:
        m.setattr(layers.BertLayer, "_one_call_linears", lambda self: None)
        pieces = model(*args)
    assert not calls
    return pieces, model(*args), len(calls)


@pytest.mark.parametrize("isa", blocksparse.available_isas())
@pytest.mark.parametrize("kind", ["sparse41", "sparse14", "dense"])
def test_one_call_same_bits(rng, monkeypatch, isa, kind):
    model = _model(kind)
    with blocksparse.isa_context(isa):
        for threads in (1, 2, 3):
            blocksparse.set_num_threads(threads)
            for B, S in SHAPES:
                ids, mask = _inputs(rng, B, S)
                pieces, one, n = _both_paths(model, monkeypatch, ids, mask)
                assert n >= len(model.encoder.layers)
                np.testing.assert_array_equal(one, pieces,
                                              err_msg=f"{isa}, {threads} threads, {B} x {S}")
    blocksparse.set_num_threads(None)


def test_one_call_with_smoothing_factors(rng, monkeypatch):
    """Per-feature factors before every quantization: the Q/K/V and FFN1 inputs'
    from smoothing, the output projection's and FFN2's set by hand."""
    model = _model("sparse41", smoothing=0.5)
    for layer in model.encoder.layers:
        for name in ("out", "ffn2"):
            owner = layer.attention if name == "out" else layer
            lin = getattr(owner, name)
            scale = rng.uniform(0.5, 2.0, lin.in_features).astype(np.float32)
            setattr(owner, name, Linear(lin.weight, lin.bias, input_scale=scale))
        assert all(lin.input_scale is not None for lin in layer.linears)
    for threads in (1, 2):
        blocksparse.set_num_threads(threads)
        for B, S in [(1, 130), (3, 37)]:
            ids, mask = _inputs(rng, B, S)
            pieces, one, n = _both_paths(model, monkeypatch, ids, mask)
            assert n >= 2
            np.testing.assert_array_equal(one, pieces)
    blocksparse.set_num_threads(None)


def test_which_layers_take_one_call():
    layer = _model("sparse41").encoder.layers[0]
    assert layer._one_call_linears() is not None
    layer.attention.precision = "float32"
    assert layer._one_call_linears() is None         # float attention: the pieces
    layer.attention.precision = "int8"
    layer._fused = None                                # an activation not fused (gelu_new)
    assert layer._one_call_linears() is None
    assert _model("sparse41", float_features=4).encoder.layers[0]._one_call_linears() is None
    assert BertModel.from_config(CFG, dtype="float32").encoder.layers[0]._one_call_linears() \
        is None


def test_one_call_argument_checks(rng):
    model = _model("sparse41")
    layer = model.encoder.layers[0]
    lins = layer._one_call_linears()
    H, N = 64, 10
    x = rng.standard_normal((H, N)).astype(np.float32)
    xq = _ops._quantize_tokens(x)
    args = dict(weights=tuple(lin.weight.packed for lin in lins),
                biases=tuple(lin.bias for lin in lins), activation="gelu",
                ln1=(layer.ln1.weight, layer.ln1.bias, 1e-12),
                ln2=(layer.ln2.weight, layer.ln2.bias, 1e-12), muls=(None,) * 4, X=x, xq=xq,
                mask=None, batch=2, seq=5, heads=4, scale=0.25,
                Y=np.empty((H, N), np.float32), yq=None, num_threads=2)

    def call(**change):
        a = dict(args, **change)
        return _kernels.encoder_layer_q8(blocksparse._config._active_isa(), *a.values())

    call()
    with pytest.raises(ValueError, match=r"out must have shape \(64, 10\)"):
        call(Y=np.empty((H, N + 1), np.float32))
    with pytest.raises(ValueError, match="out must not overlap x"):
        call(Y=x)
    w = args["weights"]
    with pytest.raises(ValueError, match="ffn1 must have shape"):
        call(weights=(w[0], w[1], w[3], w[2]))
    with pytest.raises(ValueError, match="heads must be positive and divide"):
        call(heads=5)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\)"):
        call(mask=np.ones((2, 4), np.uint8))
    with pytest.raises(ValueError, match="qkv bias must be a contiguous"):
        call(biases=(np.zeros(3, np.float32),) + args["biases"][1:])
    with pytest.raises(TypeError, match="qkv must be a packed weight"):
        call(weights=(None,) + args["weights"][1:])
