"""INT8 attention (bsk_attention_q8) on every ISA variant of this machine.

The kernel's trace (``_ops._attention_traced``) exposes its intermediate
results, so each part is checked on its own:

* integer parts, exactly, against NumPy int64: the key-code sums, the
  int32 scores ``sum_c (q - q_zero) k`` over the attended keys, the P V
  accumulators of both byte planes of the 16-bit probability codes and the
  codes' sums;
* the codes and scales of Q, K and V, exactly, against a NumPy float32
  emulation of their formulas (IEEE float32 operations, round half to even);
* float parts against float64 of the same quantized algorithm, with the
  tolerances stated at each check: the probability codes within about half a
  code of ``65535 exp(s - max)`` computed in float64 from the traced
  integers, the output within 1e-6 (relative) of
  ``(256 pv_hi + pv_lo) * v_scale / p_sum``;
* the whole result against float64 attention of the unquantized inputs;
* the same bits on every ISA and thread count.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import blocksparse
from blocksparse import _kernels
from blocksparse.nn import BertModel, MultiHeadSelfAttention, attention, _ops
from strategies import per_variant_settings

fixture_settings = per_variant_settings()
F32 = np.float32


@pytest.fixture(autouse=True)
def split_small_inputs():
    saved = _kernels.nn_set_min_work_per_thread(0)
    try:
        yield
    finally:
        _kernels.nn_set_min_work_per_thread(saved)


# ---- inputs ---------------------------------------------------------------------------

MASKS = ["tail", "none", "holes", "dead", "left", "ones", "one_key"]
VALUES = ["normal", "offset", "peaked", "extremes", "zeros", "tiny"]


def make_qkv(gen, batch, seq, heads, d, style):
    """(3 * hidden, batch * seq) float32, features x tokens."""
    shape = (3 * heads * d, batch * seq)
    x = gen.standard_normal(shape)
    if style == "offset":             # queries far from 0: a large zero point
        x[:heads * d] += 3.0
    elif style == "peaked":           # large scores: nearly one-hot softmax
        x *= 6.0
    elif style == "extremes":
        x = gen.choice(np.array([-100.0, 100.0, 0.0, 1.0, -1.0]), size=shape)
    elif style == "zeros":
        x[gen.random(shape[0]) < 0.5] = 0.0   # whole feature rows of zeros
        x[:, gen.random(shape[1]) < 0.3] = 0.0  # whole tokens of zeros (scale 1)
    elif style == "tiny":
        x *= 1e-6
    return np.ascontiguousarray(x, dtype=F32)


def make_mask(gen, batch, seq, style):
    if style == "none":
        return None
    m = np.ones((batch, seq), np.uint8)
    for b in range(batch):
        if style == "tail":
            m[b, gen.integers(1, seq + 1):] = 0
        elif style == "left":
            m[b, :gen.integers(0, seq)] = 0
        elif style == "holes":
            m[b] = gen.random(seq) < 0.6
            m[b, gen.integers(0, seq)] = 1
        elif style == "one_key":
            m[b] = 0
            m[b, gen.integers(0, seq)] = 1
    if style == "dead":               # one sequence attends to no key: uniform
        m[gen.integers(0, batch)] = 0
    return m


@st.composite
def attention_cases(draw):
    batch = draw(st.integers(1, 3))
    seq = draw(st.sampled_from([17, 1, 5, 16, 33, 64, 65, 70]))
    heads = draw(st.integers(1, 3))
    d = draw(st.sampled_from([16, 1, 3, 8, 24, 32, 64]))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qkv = make_qkv(gen, batch, seq, heads, d, draw(st.sampled_from(VALUES)))
    mask = make_mask(gen, batch, seq, draw(st.sampled_from(MASKS)))
    return qkv, batch, seq, heads, d, mask


# ---- references ---------------------------------------------------------------------------

def natural(trace, batch, seq, heads, d):
    """The trace in plain layouts: codes (heads, d, N), params (heads, N), ..."""
    N = batch * seq
    Np, G = -(-N // 16) * 16, -(-d // 4)

    def unvnni(a):
        return a.reshape(heads, G, Np, 4).transpose(0, 1, 3, 2).reshape(heads, 4 * G, Np)

    t = {"q": unvnni(trace["q"]), "k": unvnni(trace["k"])}
    assert not t["q"][:, d:].any() and not t["k"][:, d:].any()   # padding features are 0
    t["q"], t["k"] = t["q"][:, :d, :N], t["k"][:, :d, :N]
    t["v"] = trace["v"].reshape(heads * d, Np)[:, :N]
    for name in ("q_scale", "q_zero", "k_scale", "k_sum"):
        t[name] = trace[name].reshape(heads, Np)[:, :N]
    t["v_scale"] = trace["v_scale"].reshape(batch, heads * d)
    t["scores"] = trace["scores"].reshape(batch, heads, seq, seq)
    t["p"] = trace["p"].reshape(batch, heads, seq, seq)
    t["pv_hi"] = trace["pv_hi"].reshape(heads * d, N)
    t["pv_lo"] = trace["pv_lo"].reshape(heads * d, N)
    t["p_sum"] = trace["p_sum"].reshape(heads, N)
    return t


def attended(mask, batch, seq):
    """(keep (batch, seq) bool, uniform (batch,) bool): the keys attended to."""
    if mask is None:
        return np.ones((batch, seq), bool), np.zeros(batch, bool)
    keep = mask.astype(bool)
    uniform = ~keep.any(axis=1)
    keep[uniform] = True
    return keep, uniform


def s8_codes(x, s):
    """int8 codes of float32 x with scales s (broadcast), as the kernel rounds them."""
    v = x * (F32(1) / s)
    return np.clip(np.rint(np.clip(v, -512, 512)), -127, 127).astype(np.int64)


def s8_scale(amax):
    s = (amax / F32(127)).astype(F32)
    return np.where(s > 0, s, F32(1)).astype(F32)


def expected_quantization(qkv, batch, seq, heads, d, keep):
    """Q, K, V codes and scales by the kernel's formulas, in NumPy float32."""
    H, N = heads * d, batch * seq
    x = qkv.reshape(3, heads, d, N)
    out = {}
    # Q: the per-token activation parameters (bit-identical to quantize_activations)
    q_scale, q_zero, q = [], [], []
    for h in range(heads):
        codes, s, z = blocksparse.quantize_activations(np.ascontiguousarray(x[0, h].T))
        q_scale.append(s)
        q_zero.append(z)
        v = x[0, h] * (F32(1) / s)
        q.append(np.clip(np.rint(np.clip(v, -512, 512)) + z, 0, 255).astype(np.int64))
    out["q_scale"], out["q_zero"], out["q"] = np.array(q_scale), np.array(q_zero), np.array(q)
    k_scale = s8_scale(np.abs(x[1]).max(axis=1))                 # (heads, N)
    out["k_scale"] = k_scale
    out["k"] = s8_codes(x[1], k_scale[:, None, :])
    v = qkv[2 * H:].reshape(H, batch, seq)
    amax = np.where(keep[None], np.abs(v), F32(0)).max(axis=2)  # (H, batch)
    v_scale = s8_scale(amax)
    out["v_scale"] = v_scale.T
    out["v"] = s8_codes(v, v_scale[:, :, None]).reshape(H, N)
    return out


def attention_twin(qkv, batch, seq, heads, d, mask):
    """softmax(Q K^T / sqrt(d)) V in float64, unquantized (tests/test_nn_kernels.py's)."""
    keep, uniform = attended(mask, batch, seq)
    x = qkv.astype(np.float64).reshape(3, heads, d, batch, seq).transpose(0, 3, 1, 4, 2)
    q, k, v = x                                         # (batch, heads, seq, d)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    s = np.where(keep[:, None, None, :], s, -np.inf)
    s[uniform] = 0.0
    p = np.exp(s - s.max(-1, keepdims=True))
    y = (p / p.sum(-1, keepdims=True)) @ v             # (batch, heads, seq, d)
    return y.transpose(1, 3, 0, 2).reshape(heads * d, batch * seq)


def check_case(qkv, batch, seq, heads, d, mask):
    """Run the traced kernel and check every part; returns its output."""
    H, N = heads * d, batch * seq
    y, raw = _ops._attention_traced(qkv, batch, seq, heads, mask)
    t = natural(raw, batch, seq, heads, d)
    keep, uniform = attended(mask, batch, seq)

    # codes and scales: exactly the float32 formulas
    want = expected_quantization(qkv, batch, seq, heads, d, keep)
    for name in ("q_scale", "q_zero", "k_scale", "v_scale"):
        np.testing.assert_array_equal(t[name], want[name], err_msg=name)
    for name in ("q", "k", "v"):
        np.testing.assert_array_equal(t[name].astype(np.int64), want[name], err_msg=name)

    # integer parts: exact, int64
    q = t["q"].astype(np.int64) - t["q_zero"][:, None, :]        # (heads, d, N)
    k = t["k"].astype(np.int64)
    np.testing.assert_array_equal(t["k_sum"], k.sum(axis=1))
    qs = q.reshape(heads, d, batch, seq).transpose(2, 0, 3, 1)   # (batch, heads, seq, d)
    ks = k.reshape(heads, d, batch, seq).transpose(2, 0, 1, 3)   # (batch, heads, d, seq)
    ints = qs @ ks                                               # (batch, heads, seq, seq)
    computed = keep & ~uniform[:, None]
    np.testing.assert_array_equal(t["scores"], np.where(computed[:, None, None, :], ints, 0))
    p = t["p"].astype(np.int64)
    assert not p[~keep[:, None, None, :].repeat(heads, 1).repeat(seq, 2)].any()
    np.testing.assert_array_equal(t["p_sum"], p.sum(axis=3).transpose(1, 0, 2).reshape(heads, N))
    v = t["v"].astype(np.int64).reshape(heads, d, batch, seq).transpose(2, 0, 1, 3)
    for name, plane in (("pv_hi", p >> 8), ("pv_lo", p & 255)):
        pv = (v @ plane.transpose(0, 1, 3, 2)).transpose(1, 2, 0, 3).reshape(H, N)
        np.testing.assert_array_equal(t[name], pv, err_msg=name)

    # probability codes: 65535 at each query's maximum, else rint(65535 exp(s - max))
    # of the float64 scores from the traced integers, within half a code (the
    # rounding) + 0.02 (the 2^x polynomial: 0.012) + the float32 error of the scores
    # themselves (four roundings of s, one of s - max: 6e-7 (|s| + |max|) relative)
    scale = 1.0 / math.sqrt(d)
    qsc = t["q_scale"].astype(np.float64).reshape(heads, batch, seq).transpose(1, 0, 2)
    ksc = t["k_scale"].astype(np.float64).reshape(heads, batch, seq).transpose(1, 0, 2)
    s = ints * qsc[..., :, None] * ksc[..., None, :] * scale
    s = np.where(keep[:, None, None, :], s, -np.inf)
    s[uniform] = 0.0
    top = s.max(axis=-1, keepdims=True)
    ideal = 65535.0 * np.exp(s - top)
    assert np.all(p.max(axis=-1) == 65535)
    with np.errstate(invalid="ignore"):
        slack = np.where(ideal > 0, ideal * 6e-7 * (np.abs(s) + np.abs(top)), 0.0)
    assert np.all(np.abs(p - ideal) <= 0.5 + 0.02 + slack)

    # the output from the traced integers: y = (256 hi + lo) * v_scale / p_sum, within 1e-6
    vs = t["v_scale"].astype(np.float64).T.reshape(H, batch, 1)
    pv = 256.0 * t["pv_hi"] + t["pv_lo"]
    ref = (pv.reshape(H, batch, seq) * vs /
           t["p_sum"].repeat(d, axis=0).reshape(H, batch, seq)).reshape(H, N)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-30)
    return y


# ---- the integer parts, the codes and the float parts -------------------------------------

@fixture_settings
@given(case=attention_cases())
def test_parts_against_int64_and_float64(isa, num_threads, case):
    check_case(*case)


@pytest.mark.parametrize("batch,seq,heads,d", [(1, 128, 12, 64), (2, 130, 2, 64)])
def test_bert_shapes(isa, num_threads, batch, seq, heads, d):
    gen = np.random.default_rng(seq)
    qkv = make_qkv(gen, batch, seq, heads, d, "normal")
    mask = make_mask(gen, batch, seq, "tail")
    y = check_case(qkv, batch, seq, heads, d, mask)
    # against unquantized float64 attention: 1.5 % relative (Frobenius) on N(0, 1)
    # inputs, whose scores are far more peaked than a trained model's
    ref = attention_twin(qkv, batch, seq, heads, d, mask)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.015


def test_extreme_codes_exact(isa):
    """Full-range codes everywhere: int32 sums at their largest for these sizes."""
    batch, seq, heads, d = 1, 66, 1, 64
    qkv = np.empty((3 * d, seq), F32)
    qkv[:d] = np.where(np.arange(seq) % 2, 100.0, -100.0)[None, :]    # codes 0 and 255
    qkv[:d, 0] = 5.0
    qkv[d:] = -50.0                                                  # codes -127
    qkv[d:, ::3] = 50.0
    qkv[2 * d:, 1::2] = 50.0                                         # values +-127
    check_case(qkv, batch, seq, heads, d, None)


# ---- the same bits everywhere; masks ---------------------------------------------------------

def test_same_bits_every_isa_and_thread_count():
    gen = np.random.default_rng(3)
    batch, seq, heads, d = 3, 45, 4, 24
    qkv = make_qkv(gen, batch, seq, heads, d, "offset")
    mask = make_mask(gen, batch, seq, "holes")
    outs = []
    saved = blocksparse.get_num_threads()
    try:
        for isa in blocksparse.available_isas():
            with blocksparse.isa_context(isa):
                for n in (1, 2, 3, 7):
                    blocksparse.set_num_threads(n)
                    y = np.empty((heads * d, batch * seq), F32)
                    yq = _ops._attention(qkv, batch, seq, heads, mask, y, True, int8=True)
                    outs.append((isa, n, y, yq[1]))
    finally:
        blocksparse.set_num_threads(saved)
    for isa, n, y, qa in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][2], err_msg=f"{isa}, {n} threads")
        np.testing.assert_array_equal(qa.q, outs[0][3].q)
        np.testing.assert_array_equal(qa.scale, outs[0][3].scale)


def test_padding_changes_nothing(isa, num_threads):
    """A sequence in a padded batch gives, bit for bit, what it gives alone."""
    gen = np.random.default_rng(5)
    batch, seq, heads, d = 3, 40, 2, 32
    qkv = make_qkv(gen, batch, seq, heads, d, "normal")
    tokens = qkv.T.reshape(batch, seq, -1)
    lengths = [40, 17, 1]
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.uint8)
    got = attention(qkv.T, heads, mask, batch_size=batch, precision="int8")
    for b, n in enumerate(lengths):
        alone = attention(tokens[b, :n], heads, precision="int8")
        np.testing.assert_array_equal(got.reshape(batch, seq, -1)[b, :n], alone)


def test_masked_keys_have_no_influence(isa):
    gen = np.random.default_rng(6)
    batch, seq, heads, d = 2, 24, 2, 16
    qkv = make_qkv(gen, batch, seq, heads, d, "normal")
    mask = make_mask(gen, batch, seq, "holes")
    got = attention(qkv.T, heads, mask, batch_size=batch, precision="int8")
    poisoned = qkv.reshape(3, heads * d, batch, seq).copy()
    poisoned[1:][:, :, ~mask.astype(bool)] = 1e30       # keys and values of masked tokens
    again = attention(poisoned.reshape(3 * heads * d, -1).T, heads, mask, batch_size=batch,
                      precision="int8")
    np.testing.assert_array_equal(again, got)


def test_fully_masked_sequence_is_uniform(isa):
    gen = np.random.default_rng(7)
    batch, seq, heads, d = 2, 9, 2, 16
    qkv = make_qkv(gen, batch, seq, heads, d, "normal")
    mask = np.ones((batch, seq), bool)
    mask[1] = False
    got = attention(qkv.T, heads, mask, batch_size=batch, precision="int8")
    values = qkv[2 * heads * d:].reshape(heads * d, batch, seq)[:, 1].astype(np.float64)
    # every weight is 1/seq: the mean of the value codes, each within half a step
    step = np.abs(values).max(axis=1) / 127
    err = np.abs(got.reshape(batch, seq, -1)[1] - values.mean(axis=1))
    assert np.all(err <= 0.5 * step + 1e-6)


def test_fused_quantization_equals_separate(isa, num_threads):
    gen = np.random.default_rng(8)
    batch, seq, heads, d = 2, 21, 3, 32
    qkv = make_qkv(gen, batch, seq, heads, d, "normal")
    y, qa = _ops._attention(qkv, batch, seq, heads, None, np.empty((heads * d, batch * seq), F32),
                            True, int8=True)
    xq, s, z = blocksparse.quantize_activations(y.T)
    np.testing.assert_array_equal(qa.q.T, xq, strict=False)
    np.testing.assert_array_equal(qa.scale, s, strict=True)
    np.testing.assert_array_equal(qa.zero, z, strict=True)


# ---- API --------------------------------------------------------------------------------------

def test_public_function_and_errors(rng):
    qkv = rng.standard_normal((10, 3 * 32)).astype(F32)
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2])
    y8 = attention(qkv, 2, mask, batch_size=2, precision="int8")
    y32 = attention(qkv, 2, mask, batch_size=2)
    assert y8.dtype == F32 and y8.shape == y32.shape == (10, 32)
    assert np.linalg.norm(y8 - y32) / np.linalg.norm(y32) < 0.02
    inner = np.empty((32, 10), F32)
    _ops._attention(np.ascontiguousarray(qkv.T), 2, 5, 2, mask.astype(np.uint8), inner, False,
                    int8=True)
    np.testing.assert_array_equal(inner.T, y8)
    with pytest.raises(ValueError, match="precision must be 'float32' or 'int8'"):
        attention(qkv, 2, precision="int4")


def test_kernel_checks_trace_and_limits(rng):
    isa = blocksparse._config._active_isa()
    qkv = np.ascontiguousarray(rng.standard_normal((96, 4)).astype(F32))
    out = np.empty((32, 4), F32)
    sizes = _kernels.attention_trace_sizes(1, 4, 2, 16)
    with pytest.raises(ValueError, match=r"trace\['pv_hi'\] must be"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out, None, None, None, 1, True,
                           {"pv_hi": np.zeros(sizes["pv_hi"][1] - 1, np.int32)})
    with pytest.raises(ValueError, match=r"trace\['p'\] must be"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out, None, None, None, 1, True,
                           {"p": np.zeros(sizes["p"][1], np.uint8)})
    with pytest.raises(ValueError, match="unknown trace arrays"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out, None, None, None, 1, True,
                           {"nope": np.zeros(1)})
    with pytest.raises(ValueError, match="for the int8 attention only"):
        _kernels.attention(isa, qkv, 1, 4, 2, None, 0.25, out, None, None, None, 1, False, {})
    long = np.zeros((3, _kernels.MAX_ATTENTION_SEQ + 1), F32)     # one head of size 1
    with pytest.raises(OverflowError, match="bsk_attention_q8"):
        _kernels.attention(isa, long, 1, long.shape[1], 1, None, 1.0,
                           np.empty((1, long.shape[1]), F32), None, None, None, 1, True)


CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
           vocab_size=300, max_position_embeddings=40, type_vocab_size=2)


def test_model_option_default_and_checkpoint(rng, tmp_path):
    ids = rng.integers(0, 300, size=(2, 11))
    mask = np.ones((2, 11), np.int64)
    mask[1, 6:] = 0
    # float32 attention by default (INT8 attention is opt-in: see docs/nn.rst)
    assert BertModel.from_config(CFG, seed=1, dtype="int8").attention == "float32"
    m8 = BertModel.from_config(CFG, seed=1, dtype="int8", attention="int8")
    m32 = BertModel.from_config(CFG, seed=1)
    assert m8.attention == "int8" and m32.attention == "float32"
    assert "int8 attention" in repr(m8)
    assert all(layer.attention.precision == "int8" for layer in m8.encoder)
    a = m8(ids, mask)
    m8f = BertModel.from_config(CFG, seed=1, dtype="int8", attention="float32")
    b = m8f(ids, mask)
    assert not np.array_equal(a, b)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-2
    m8f.attention = "int8"                                 # the setter switches every layer
    np.testing.assert_array_equal(m8f(ids, mask), a)
    with pytest.raises(ValueError, match="attention must be 'float32' or 'int8'"):
        m8f.attention = "fp16"
    with pytest.raises(ValueError, match="attention must be 'float32' or 'int8'"):
        BertModel.from_config(CFG, attention="int4")
    # saved with the model, overridable on loading
    m8.save_pretrained(tmp_path)
    again = BertModel.from_pretrained(tmp_path)
    assert again.attention == "int8"
    np.testing.assert_array_equal(again(ids, mask), a)
    assert BertModel.from_pretrained(tmp_path, attention="float32").attention == "float32"
    m8.attention = "float32"
    m8.save_pretrained(tmp_path)
    assert BertModel.from_pretrained(tmp_path).attention == "float32"
    # the layer
    att = m32.encoder.layers[0].attention
    assert isinstance(att, MultiHeadSelfAttention) and att.precision == "float32"
    with pytest.raises(ValueError, match="precision must be 'float32' or 'int8'"):
        MultiHeadSelfAttention(att.qkv, att.out, 4, precision="int4")


def test_float_model_with_int8_attention_stays_close(rng):
    """The attention's quantization alone, on a float32 model of random weights."""
    ids = rng.integers(0, 300, size=(3, 37))
    ref = BertModel.from_config(CFG, seed=2)(ids)
    got = BertModel.from_config(CFG, seed=2, attention="int8")(ids)
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.9999
