"""INT8 Linear layers with a float part, the second pass over the rounding residual,
and how BertModel builds and uses them (calibration, per-sequence choice, checkpoints).

References are built from the package's exact pieces (blocksparse.linear on the
quantized input, a float product for the float part) or NumPy float64, so a
wrong split, a lost term or a pass applied to the wrong tokens shows up.
"""
import json

import numpy as np
import pytest

import blocksparse
from blocksparse.nn import BertModel, Linear
from blocksparse.nn._checkpoint import special_token_ids

CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
           vocab_size=300, max_position_embeddings=40, type_vocab_size=2)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def outlier_input(rng, n=24, k=48):
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[:, 5] += 30                          # "massive" features, as BERT's [CLS]/[SEP] carry
    x[::3, 17] = 25
    return x


@pytest.fixture
def layer(rng):
    W = (rng.standard_normal((32, 48)) * 0.05).astype(np.float32)
    W[3, 7] = 2.0                          # an outlier weight sets row 3's scale
    return Linear(W, rng.standard_normal(32).astype(np.float32))


def int8_reference(q, x, activation=None):
    """blocksparse.linear on x * factors, plus the float part in float64, then bias + act."""
    factors = np.ones(q.in_features, np.float32) if q.input_scale is None \
        else q.input_scale.copy()
    if q.float_features is not None:
        factors[q.float_features] = 0
    y = blocksparse.linear(x * factors, q.weight).astype(np.float64)
    if q.float_weight is not None:
        y += x.astype(np.float64) @ q.float_weight.toarray().astype(np.float64).T
    y += q.bias
    if activation == "gelu":
        y = blocksparse.nn.gelu(y)
    return y


# ---- Linear.to_int8 with a float part --------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_to_int8_splits_the_weight_exactly(layer, rng, sparse):
    if sparse:
        layer = Linear(blocksparse.prune(layer.weight, 0.5, blocksize=(4, 1)), layer.bias)
    x = outlier_input(rng)
    amax = np.abs(x).max(0)
    q = layer.to_int8(input_absmax=amax, float_features=2, float_weights=0.05)
    assert q.kind == "int8" and list(q.float_features) == [5, 17]
    dense = layer.weight if not sparse else layer.weight.toarray()
    F = q.float_weight.toarray()
    W8 = q.weight.dequantize().toarray()
    # the float part holds the two feature columns and round(0.05 * 48) = 2 weights per row
    np.testing.assert_array_equal(F[:, [5, 17]], dense[:, [5, 17]])
    assert np.all(W8[:, [5, 17]] == 0)
    rest = np.delete(F, [5, 17], axis=1)
    assert np.all((rest != 0).sum(1) <= 2) and F[3, 7] == 2.0
    # together they give back the float weight, up to INT8 rounding of the rest
    step = q.weight.scale[:, None]
    assert np.all(np.abs(W8 + F - dense) <= 0.5001 * step + 1e-7)
    if sparse:   # pruned weights stay pruned in both parts
        assert np.all((F != 0) <= (dense != 0))
        assert q.weight.weight.nnzb <= layer.weight.nnzb
    # the product is the split computed in pieces; the outliers no longer cost accuracy
    np.testing.assert_allclose(q(x), int8_reference(q, x), rtol=1e-5, atol=1e-4)
    exact = x.astype(np.float64) @ dense.T.astype(np.float64) + layer.bias
    assert rel_err(q(x), exact) < 0.5 * rel_err(layer.to_int8()(x), exact)


def test_float_features_are_quantized_as_zero(layer, rng):
    x = outlier_input(rng)
    q = layer.to_int8(input_absmax=np.abs(x).max(0), float_features=2)
    spec = q.input_spec
    assert spec.quantized and spec.scale[5] == 0 and spec.scale[17] == 0
    assert np.all(np.delete(spec.scale, [5, 17]) == 1)
    codes, scale, zero = blocksparse.quantize_activations(x * spec.scale, per_token=True)
    assert np.all(codes[:, [5, 17]] == zero[:, None])          # exactly 0 after dequantizing
    # without the outliers the per-token steps shrink
    _, plain_scale, _ = blocksparse.quantize_activations(x, per_token=True)
    assert np.all(scale < 0.5 * plain_scale)


def test_float_part_with_smoothing_and_gelu(layer, rng, isa):
    x = outlier_input(rng)
    q = layer.to_int8(input_absmax=np.abs(x).max(0), smoothing=0.5, float_features=1,
                      float_weights=0.02)
    assert q.input_scale is not None and q.input_scale[5] == 1   # float features not smoothed
    for act in (None, "gelu"):
        np.testing.assert_allclose(q(x, activation=act), int8_reference(q, x, act),
                                   rtol=1e-5, atol=1e-4)
        # the encoder's path (features x tokens) gives the same numbers
        y = q._forward(np.ascontiguousarray(x.T), None, act).T
        np.testing.assert_allclose(y, q(x, activation=act), rtol=1e-6, atol=1e-6)


def test_linear_float_part_arguments(layer, rng):
    q = layer.to_int8()
    W8, F = q.weight, np.zeros((32, 48), np.float32)
    F[0, 1] = 1.0
    lin = Linear(W8, layer.bias, float_weight=F, float_features=[1, 1])
    assert list(lin.float_features) == [1] and lin.float_weight.blocksize == (1, 1)
    assert "float part of 1 weights" in repr(lin)
    import scipy.sparse as sp
    assert Linear(W8, float_weight=sp.csr_array(F)).float_weight.nnz == 1
    with pytest.raises(ValueError, match="float_features needs float_weight"):
        Linear(W8, float_features=[1])
    with pytest.raises(ValueError, match="float_weight is only for INT8"):
        Linear(layer.weight, float_weight=F)
    with pytest.raises(ValueError, match=r"float_weight must have shape \(32, 48\)"):
        Linear(W8, float_weight=F[:, :3])
    with pytest.raises(TypeError, match="float_weight must hold floats"):
        Linear(W8, float_weight=F.astype(np.int32))
    with pytest.raises(ValueError, match="float_weight has NaN or Inf"):
        Linear(W8, float_weight=np.where(F > 0, np.inf, 0).astype(np.float32))
    with pytest.raises(ValueError, match=r"float_features must lie in \[0, 48\)"):
        Linear(W8, float_weight=F, float_features=[48])
    with pytest.raises(TypeError, match="float_features must be a 1-D integer array"):
        Linear(W8, float_weight=F, float_features=[0.5])
    with pytest.raises(ValueError, match="float_features needs input_absmax"):
        layer.to_int8(float_features=2)
    with pytest.raises(ValueError, match=r"float_features must be an integer in \[0, 48\]"):
        layer.to_int8(input_absmax=np.ones(48), float_features=49)
    with pytest.raises(ValueError, match=r"float_weights must lie in \[0, 1\)"):
        layer.to_int8(float_weights=1.0)
    with pytest.raises(ValueError, match=r"input_absmax must have shape \(48,\)"):
        layer.to_int8(input_absmax=np.ones(47), float_features=1)


# ---- the second pass over the rounding residual ----------------------------------------

@pytest.mark.parametrize("cols", [[1, 4, 5, 20], list(range(3, 20)), list(range(24))],
                         ids=["few tokens", "most tokens", "every token"])
def test_second_pass_adds_the_residual_product(layer, rng, isa, cols):
    x = outlier_input(rng)
    q = layer.to_int8(input_absmax=np.abs(x).max(0), float_features=2, float_weights=0.05)
    xt = np.ascontiguousarray(x.T)
    cols = np.array(cols)
    one = q._forward(xt, None).T
    two = q._forward(xt, None, refine=cols).T
    others = np.setdiff1d(np.arange(len(x)), cols)
    np.testing.assert_array_equal(two[others], one[others])     # other tokens untouched
    # reference: the residual of the first codes, quantized again, through the same weight
    factors = q.input_spec.scale
    xs = x * factors
    codes, scale, zero = blocksparse.quantize_activations(xs, per_token=True)
    resid = xs - (codes.astype(np.float32) - zero[:, None].astype(np.float32)) * scale[:, None]
    want = one[cols] + blocksparse.linear(resid[cols], q.weight)
    np.testing.assert_allclose(two[cols], want, rtol=1e-5, atol=1e-5)
    # against the dequantized weights the activation rounding all but disappears
    deq = xs.astype(np.float64) @ q.weight.dequantize().toarray().T.astype(np.float64) \
        + x.astype(np.float64) @ q.float_weight.toarray().T.astype(np.float64) + q.bias
    assert rel_err(two[cols], deq[cols]) < rel_err(one[cols], deq[cols]) / 20


def test_second_pass_before_the_activation(layer, rng):
    x = outlier_input(rng)
    q = layer.to_int8()                                  # no float part: only the pass
    xt = np.ascontiguousarray(x.T)
    cols = np.arange(len(x))
    pre = q._forward(xt, None, None, refine=cols)
    np.testing.assert_allclose(q._forward(xt, None, "gelu", refine=cols),
                               blocksparse.nn.gelu(pre), rtol=1e-6, atol=1e-6)


# ---- BertModel: calibration, the per-sequence choice, checkpoints ----------------------

@pytest.fixture(scope="module")
def models():
    opts = dict(dtype="int8", float_features=4, float_weights=0.02, smoothing=0.5)
    return BertModel.from_config(CFG, **opts), BertModel.from_config(CFG)


def test_model_builds_float_parts(models):
    q, _ = models
    assert q.float_features == 4 and q.float_weights == 0.02
    for layer in q.encoder:
        for lin in layer.linears:
            assert lin.float_features is not None and len(lin.float_features) == 4
            assert lin.float_weight.nnz >= 4 * lin.out_features
    plain = BertModel.from_config(CFG, dtype="int8")
    assert all(lin.float_weight is None for layer in plain.encoder for lin in layer.linears)
    with pytest.raises(ValueError, match=r"float_features must be an integer in \[0, 64\]"):
        BertModel.from_config(CFG, dtype="int8", float_features=65)
    with pytest.raises(ValueError, match=r"float_weights must be a number in \[0, 1\)"):
        BertModel.from_config(CFG, dtype="int8", float_weights=-0.1)
    # float32 models ignore the INT8 options
    assert BertModel.from_config(CFG, float_features=4).float_features == 0


@pytest.mark.thread_unsafe  # switches the shared model's second pass on and off
def test_short_sequences_get_the_second_pass_alone_or_batched(models, rng):
    q, f = models
    assert q.two_pass_max_tokens == 0                  # opt-in
    q.two_pass_max_tokens = 8
    try:
        check_second_pass_choice(q, f, rng)
    finally:
        q.two_pass_max_tokens = 0


def check_second_pass_choice(q, f, rng):
    short = rng.integers(5, 300, size=6)
    long_ = rng.integers(5, 300, size=20)
    ids = np.zeros((2, 20), np.int64)
    ids[0, :6], ids[1] = short, long_
    mask = np.zeros((2, 20), np.int64)
    mask[0, :6], mask[1] = 1, 1
    both = q(ids, mask)
    alone = q(short[None])
    np.testing.assert_allclose(both[0, :6], alone[0], atol=2e-6)
    q.two_pass_max_tokens = 0
    try:
        off_both, off_alone = q(ids, mask), q(short[None])
    finally:
        q.two_pass_max_tokens = 8
    np.testing.assert_array_equal(off_both[1], both[1])          # long: never refined
    assert not np.array_equal(off_alone, alone)                  # short: refined
    ref = f(short[None])[0].astype(np.float64)

    def err(h):
        return rel_err(h[0], ref)
    assert err(alone) < err(off_alone)
    f.two_pass_max_tokens = 8                        # float32 models ignore it
    try:
        assert np.array_equal(f(short[None]), ref[None].astype(np.float32))
    finally:
        f.two_pass_max_tokens = 0


def test_default_calibration_frames_random_ids(models):
    q, _ = models
    ids, mask = q._calibration_batch(None, ((7,), (8, 9)))
    lengths = mask.sum(1)
    # capped at max_position_embeddings, and room for one id between 3 special ones
    assert sorted(lengths) == sorted(max(min(n, 40), 4) for n in (64, 64, 40, 20, 10, 6, 4, 3))
    for row, n in zip(ids, lengths):
        assert row[0] == 7 and list(row[n - 2:n]) == [8, 9] and np.all(row[n:] == 0)
        assert np.all(row[1:n - 2] >= 300 // 20)
    # special ids outside the vocabulary are not used
    ids, mask = q._calibration_batch(None, ((1000,), ()))
    assert np.all(ids[mask.astype(bool)] >= 15)


def test_checkpoint_keeps_float_parts(models, tmp_path, rng):
    q, _ = models
    ids = rng.integers(0, 300, size=(3, 7))
    q.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["blocksparse"]
    assert meta["format_version"] == 3 and meta["float_features"] == 4
    again = BertModel.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(again(ids), q(ids))
    assert again.float_weights == 0.02 and again.two_pass_max_tokens == 0
    assert "two_pass_max_tokens" not in meta          # the default is not written
    plain = BertModel.from_config(CFG, dtype="int8")
    plain.two_pass_max_tokens = 3
    plain.save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())["blocksparse"]
    assert meta["format_version"] == 2 and meta["two_pass_max_tokens"] == 3
    assert BertModel.from_pretrained(tmp_path / "p").two_pass_max_tokens == 3
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["blocksparse"]["two_pass_max_tokens"] = -1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'two_pass_max_tokens' must be a non-negative"):
        BertModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("post, want", [
    ({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}},
                 {"SpecialToken": {"id": "[SEP]"}}],
      "special_tokens": {"[CLS]": {"ids": [101]}, "[SEP]": {"ids": [102]}}},
     ((101,), (102,))),
    ({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}, ((2,), (3,))),
    ({"type": "RobertaProcessing"}, ((), ())),
    ({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "?"}}]}, ((), ())),
    (None, ((), ())),
])
def test_special_token_ids(tmp_path, post, want):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"post_processor": post}))
    assert special_token_ids(tmp_path) == want


def test_special_token_ids_without_a_tokenizer(tmp_path):
    assert special_token_ids(tmp_path) == ((), ())
    (tmp_path / "tokenizer.json").write_text("not json")
    assert special_token_ids(tmp_path) == ((), ())
