"""from_pretrained on broken or unusual checkpoints, the activations, and RoBERTa positions.

Each case starts from a tiny transformers checkpoint of tests/data/models,
copied and changed: the error must name the architecture, the config key
or the tensor, and nothing is returned.
"""
import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy.special import erf

import blocksparse.nn as nn
from blocksparse.nn.activations import ACTIVATIONS, FFN_ACTIVATIONS, apply_activation

st = pytest.importorskip("safetensors.numpy")

ROOT = os.path.join(os.path.dirname(__file__), "data", "models")


def copy(name, tmp_path, config=None, tensors=None):
    """A copy of a reference checkpoint, config keys and tensors changed (None: removed)."""
    d = tmp_path / name
    shutil.copytree(os.path.join(ROOT, name), d)
    if config:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        (d / "config.json").write_text(json.dumps(cfg))
    if tensors:
        t = st.load_file(str(d / "model.safetensors"))
        t.update(tensors)
        st.save_file({k: v for k, v in t.items() if v is not None}, str(d / "model.safetensors"))
    return d


def ref_inputs(name):
    with np.load(os.path.join(ROOT, name, "reference.npz")) as f:
        return {k: f[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in f}


@pytest.mark.parametrize("change,message", [
    (dict(architectures=["BertForNextSentencePrediction"]),
     r"config key 'architectures' names 'BertForNextSentencePrediction', which "
     r"blocksparse.nn does not support; supported: BertForMaskedLM"),
    (dict(architectures="BertForSequenceClassification"),
     "config key 'architectures' must be a non-empty list"),
    (dict(architectures=["RobertaForSequenceClassification"]),
     "config key 'model_type' is 'bert' but RobertaForSequenceClassification is a 'roberta'"),
    (dict(id2label=None), "config has no key 'id2label' \\(nor 'num_labels'\\)"),
    (dict(id2label={"0": "a", "2": "b"}), "'id2label' must hold the ids 0 to 1"),
    (dict(id2label={"zero": "a"}), "'id2label' must map ids '0', '1', ... to label names"),
    (dict(num_labels=5), "'num_labels' = 5 does not match the 3 labels of 'id2label'"),
    (dict(problem_type="ranking"), "'problem_type' must be null or one of"),
    (dict(hidden_act="swish"), "config key 'hidden_act' must be one of"),
    (dict(is_decoder=True), "config key 'is_decoder' must be false"),
    (dict(model_type="camembert", architectures=None), "'model_type' must be one of 'bert'"),
])
def test_bad_config(tmp_path, change, message):
    d = copy("bert-seqcls", tmp_path, config=change)
    with pytest.raises(ValueError, match=message):
        nn.from_pretrained(d)


def test_labels_from_num_labels_alone(tmp_path):
    d = copy("bert-seqcls", tmp_path, config=dict(id2label=None, num_labels=3))
    assert nn.from_pretrained(d).id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_architecture_argument(tmp_path):
    path = os.path.join(ROOT, "bert-seqcls")
    with pytest.raises(ValueError, match="architecture names 'GPT2LMHeadModel', which"):
        nn.from_pretrained(path, architecture="GPT2LMHeadModel")
    with pytest.raises(TypeError, match="architecture must be a string"):
        nn.from_pretrained(path, architecture=3)
    # the encoder of a classifier: the head's tensors are then not used
    with pytest.raises(ValueError, match="checkpoint has tensors a BertModel does not use: "
                                         "'classifier.bias', 'classifier.weight'"):
        nn.from_pretrained(path, architecture="BertModel")
    base = nn.from_pretrained(path, architecture="BertModel", strict=False)
    assert type(base) is nn.BertModel and base.pooler is not None
    assert base.unused_tensors == ["classifier.bias", "classifier.weight"]
    cls = nn.from_pretrained(path)
    x = ref_inputs("bert-seqcls")
    np.testing.assert_array_equal(base(**x), cls.base(**x))
    with pytest.raises(ValueError, match="holds a BertForSequenceClassification, not a model "
                                         "for token classification"):
        nn.ModelForTokenClassification.from_pretrained(path)
    assert "BertForSequenceClassification" in nn.supported_architectures()


@pytest.mark.parametrize("name,tensors,message", [
    ("bert-seqcls", {"classifier.weight": None}, "missing the tensor 'classifier.weight'"),
    ("bert-seqcls", {"classifier.weight": np.zeros((4, 32), np.float32)},
     r"'classifier.weight' has shape \(4, 32\), expected \(3, 32\)"),
    ("bert-seqcls", {"bert.pooler.dense.weight": None, "bert.pooler.dense.bias": None},
     "missing the tensor 'bert.pooler.dense.weight' \\(the pooler"),
    ("bert-seqcls", {"bert.encoder.layer.1.output.dense.bias": np.zeros(31, np.float32)},
     r"'bert.encoder.layer.1.output.dense.bias' has shape \(31,\), expected \(32,\)"),
    ("bert-seqcls", {"extra.weight": np.zeros(3, np.float32)},
     "checkpoint has tensors a BertForSequenceClassification does not use: 'extra.weight' "
     "\\(pass strict=False"),
    ("bert-mlm", {"cls.predictions.bias": None}, "missing the tensor 'cls.predictions.bias'"),
    ("bert-mlm", {"cls.predictions.transform.LayerNorm.weight": np.ones(31, np.float32)},
     "'cls.predictions.transform.LayerNorm.weight' has shape"),
    ("roberta-qa", {"qa_outputs.bias": np.full(2, np.nan, np.float32)},
     "'qa_outputs.bias' has NaN or Inf values"),
    ("electra-qa", {"electra.embeddings_project.weight": None},
     "missing the tensor 'electra.embeddings_project.weight'"),
    ("distilbert-mlm", {"vocab_transform.weight": np.zeros((32, 32), np.int32)},
     "'vocab_transform.weight' has dtype int32, expected floating point"),
    # pre-LayerNorm families: their own LayerNorms, and no post-LayerNorm ones
    ("robertapreln-seqcls", {"roberta_prelayernorm.LayerNorm.weight": None},
     "missing the tensor 'roberta_prelayernorm.LayerNorm.weight'"),
    ("robertapreln-tokcls", {"roberta_prelayernorm.encoder.layer.1.intermediate.LayerNorm.bias":
                             np.zeros(31, np.float32)},
     r"'roberta_prelayernorm.encoder.layer.1.intermediate.LayerNorm.bias' has shape \(31,\)"),
    ("xlmrxl-qa", {"roberta.encoder.LayerNorm.bias": None},
     "missing the tensor 'roberta.encoder.LayerNorm.bias'"),
    ("xlmrxl-qa", {"roberta.encoder.layer.0.attention.self_attn_layer_norm.weight": None},
     "missing the tensor 'roberta.encoder.layer.0.attention.self_attn_layer_norm.weight'"),
    ("xlmrxl-mlm", {"roberta.embeddings.LayerNorm.weight": np.ones(32, np.float32)},
     "tensors its config.json has no place for: 'roberta.embeddings.LayerNorm.weight'"),
    # a tied decoder's stored copy is not read, but must still fit the config
    ("electra-generator", {"generator_lm_head.weight": np.zeros((3, 3), np.float32)},
     r"'generator_lm_head.weight' has shape \(3, 3\), expected \(160, 16\)"),
    ("bert-mlm", {"cls.predictions.decoder.weight": np.zeros((160, 31), np.float32)},
     r"'cls.predictions.decoder.weight' has shape \(160, 31\), expected \(160, 32\)"),
    ("bert-mlm", {"cls.predictions.decoder.bias": np.zeros(159, np.float32)},
     r"'cls.predictions.decoder.bias' has shape \(159,\), expected \(160,\)"),
    ("roberta-mlm", {"lm_head.decoder.bias": np.zeros(3, np.float32)},
     r"'lm_head.decoder.bias' has shape \(3,\), expected"),
])
def test_bad_tensors(tmp_path, name, tensors, message):
    d = copy(name, tmp_path, tensors=tensors)
    with pytest.raises(ValueError, match=message):
        nn.from_pretrained(d)


def test_extra_encoder_layer_is_refused_even_when_not_strict(tmp_path):
    extra = {k.replace("layer.1.", "layer.2."): v for k, v in
             st.load_file(os.path.join(ROOT, "bert-tokcls", "model.safetensors")).items()
             if "layer.1." in k}
    d = copy("bert-tokcls", tmp_path, tensors=extra)
    for strict in (True, False):
        with pytest.raises(ValueError, match="tensors its config.json has no place for: "
                                             "'bert.encoder.layer.2.*num_hidden_layers = 2"):
            nn.from_pretrained(d, strict=strict)
    with pytest.raises(ValueError, match="no place for"):   # the encoder class alone, too
        nn.BertModel.from_pretrained(d)


def test_tied_copies_stored_by_older_transformers_are_used(tmp_path):
    """Older checkpoints store the tied decoder weight and bias twice; both load, unused none."""
    path = os.path.join(ROOT, "bert-mlm")
    t = st.load_file(os.path.join(path, "model.safetensors"))
    d = copy("bert-mlm", tmp_path, tensors={
        "cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"],
        "cls.predictions.decoder.bias": t["cls.predictions.bias"]})
    m = nn.from_pretrained(d)
    assert m.unused_tensors == []
    x = ref_inputs("bert-mlm")
    np.testing.assert_array_equal(m(**x), nn.from_pretrained(path)(**x))


def test_bert_pretraining_heads_are_ignored_by_the_masked_lm(tmp_path):
    d = copy("bert-mlm", tmp_path, tensors={"cls.seq_relationship.weight":
                                            np.zeros((2, 32), np.float32)})
    assert nn.from_pretrained(d).unused_tensors == ["cls.seq_relationship.weight"]


def test_untied_decoder(tmp_path):
    path = os.path.join(ROOT, "roberta-mlm")
    tied = nn.from_pretrained(path)
    assert tied.head.out.weight is tied.base.embeddings.word   # shared, not copied
    word = st.load_file(os.path.join(path, "model.safetensors"))[
        "roberta.embeddings.word_embeddings.weight"]
    d = copy("roberta-mlm", tmp_path, config=dict(tie_word_embeddings=False))
    with pytest.raises(ValueError, match="missing the tensor 'lm_head.decoder.weight'"):
        nn.from_pretrained(d)
    d = copy("roberta-mlm", tmp_path / "b", config=dict(tie_word_embeddings=False),
             tensors={"lm_head.decoder.weight": word * 2})
    untied = nn.from_pretrained(d)
    x = ref_inputs("roberta-mlm")
    assert not untied.head.tied
    assert np.abs(untied(**x) - tied(**x)).max() > 0.1
    untied.save_pretrained(tmp_path / "own")
    np.testing.assert_array_equal(nn.from_pretrained(tmp_path / "own")(**x), untied(**x))


def test_bert_model_refuses_other_families():
    with pytest.raises(ValueError, match="'model_type' must be 'bert' or 'distilbert' .* "
                                         "blocksparse.nn.from_pretrained also loads 'roberta'"):
        nn.BertModel.from_pretrained(os.path.join(ROOT, "roberta-base"))
    with pytest.raises(ValueError, match="'model_type' must be one of 'roberta', "
                                         "'xlm-roberta', 'roberta-prelayernorm', "
                                         "'xlm-roberta-xl', got 'bert'"):
        nn.RobertaModel.from_pretrained(os.path.join(ROOT, "bert-base"))
    for name in ("xlmr-base", "robertapreln-base", "xlmrxl-base"):
        assert type(nn.RobertaModel.from_pretrained(os.path.join(ROOT, name))) is \
            nn.RobertaModel


def own_copy(model, tmp_path, change):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    change(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("change,message", [
    (lambda c: c["blocksparse"].update(architecture="BertForFun"),
     "'architecture' names 'BertForFun', which blocksparse.nn does not support"),
    (lambda c: c["blocksparse"].update(architecture="RobertaForSequenceClassification"),
     "is RobertaForSequenceClassification, a 'roberta' architecture, but 'model_type' is"),
    (lambda c: c["blocksparse"].update(architecture=7), "'architecture' names 7, which"),
    (lambda c: c["blocksparse"].update(architecture=[1]), "'architecture' names \\[1\\]"),
    (lambda c: c["blocksparse"]["linears"]["head.out"].update(kind="int8", blocksize=[4, 1]),
     "entry 'head.out' has unknown kind 'int8' \\(head layers are dense\\)"),
    (lambda c: c["blocksparse"]["linears"]["head.out"].update(shape=[2, 32]),
     r"entry 'head.out' has shape \[2, 32\], expected \[3, 32\]"),
    (lambda c: c["blocksparse"]["linears"].pop("pooler"),
     "'blocksparse.linears' has no entry 'pooler'"),
    (lambda c: c.pop("id2label"), "config has no key 'id2label'"),
])
def test_own_format_head_is_validated(tmp_path, change, message):
    m = nn.from_pretrained(os.path.join(ROOT, "bert-seqcls"), dtype="int8", sparsity=0.5)
    d = own_copy(m, tmp_path, change)
    with pytest.raises(ValueError, match=message):
        nn.from_pretrained(d)


def test_own_format_keeps_its_architecture(tmp_path):
    m = nn.from_pretrained(os.path.join(ROOT, "electra-qa"))
    m.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="saved by blocksparse as a ElectraForQuestionAnswering"):
        nn.from_pretrained(tmp_path, architecture="ElectraModel")
    with pytest.raises(ValueError, match="saved with dtype 'float32'"):
        nn.from_pretrained(tmp_path, dtype="int8")
    assert type(nn.ElectraModel.from_pretrained(tmp_path)) is nn.ElectraModel


@pytest.mark.parametrize("name", ["roberta-base", "xlmr-base"])
def test_roberta_positions_follow_the_padding(name):
    """Position ids count real tokens only: left padding leaves real tokens' states alone.

    (The stored references pad on the right, padding tokens included in the
    compared states; here the padding moves to the left.)
    """
    m = nn.from_pretrained(os.path.join(ROOT, name))
    assert type(m) is nn.RobertaModel and m.config["pad_token_id"] == 1
    ids = np.array([0, 17, 40, 99, 2])
    right = np.array([list(ids) + [1, 1]])
    left = np.array([[1, 1] + list(ids)])
    mask_r, mask_l = (right != 1).astype(int), (left != 1).astype(int)
    np.testing.assert_array_equal(m.embeddings.position_ids(left), [[1, 1, 2, 3, 4, 5, 6]])
    a, b = m(right, mask_r)[0, :5], m(left, mask_l)[0, 2:]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert m.max_length == m.config["max_position_embeddings"] - 2
    with pytest.raises(ValueError, match="at most max_position_embeddings - pad_token_id - 1 ="):
        m(np.full((1, m.max_length + 1), 5))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 1\)"):
        m(right, mask_r, np.ones_like(right))


def test_post_layernorm_config_on_pre_layernorm_weights(tmp_path):
    """A config that names the wrong LayerNorm placement fails on the first tensor it lacks."""
    d = copy("xlmrxl-base", tmp_path, config=dict(model_type="xlm-roberta", architectures=None))
    with pytest.raises(ValueError, match="missing the tensor 'embeddings.LayerNorm.weight'"):
        nn.from_pretrained(d)
    d = copy("robertapreln-base", tmp_path / "b",
             config=dict(model_type="roberta", architectures=None))
    with pytest.raises(ValueError, match="missing the tensor "
                                         "'encoder.layer.0.attention.output.LayerNorm.weight'"):
        nn.from_pretrained(d)


def test_pre_norm_layer_formula():
    """PreNormBertLayer: h1 = h + attention(LN1(h)); h2 = h1 + ffn2(act(ffn1(LN2(h1))))."""
    m = nn.from_pretrained(os.path.join(ROOT, "robertapreln-base"))
    layer = m.encoder.layers[0]
    assert isinstance(layer, nn.PreNormBertLayer) and "PreNormBertLayer" in repr(layer)
    h = np.random.default_rng(0).standard_normal((2, 7, 32)).astype(np.float32)
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    h1 = h + layer.attention(layer.ln1(h), mask)
    x = layer.ln2(h1)
    inter = layer.ffn1(x)
    inter = 0.5 * inter * (1 + erf(inter / math.sqrt(2)))   # the config's gelu
    want = h1 + layer.ffn2(inter)
    np.testing.assert_allclose(layer(h, mask), want, atol=1e-5)
    assert layer.input_spec.quantized is False   # it reads the float residual stream
    int8 = m.encoder.layers[0].to_int8()
    assert type(int8) is nn.PreNormBertLayer and int8.ffn1.kind == "int8"
    np.testing.assert_allclose(int8(h, mask), want, atol=0.05 * np.abs(want).max())
    final = m.encoder.final_ln
    np.testing.assert_allclose(m.encoder(h, mask), final(m.encoder.layers[1](
        layer(h, mask), mask)), atol=1e-5)


@pytest.mark.parametrize("model_type", ["roberta-prelayernorm", "xlm-roberta-xl"])
def test_pre_norm_from_config_and_own_format(model_type, tmp_path):
    cfg = dict(model_type=model_type, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, vocab_size=60,
               max_position_embeddings=34, type_vocab_size=1, pad_token_id=1)
    m = nn.RobertaModel.from_config(cfg, sparsity=0.5, dtype="int8", smoothing=0.5)
    assert m.encoder.final_ln is not None
    assert (m.embeddings.ln is None) == (model_type == "xlm-roberta-xl")
    ids = np.array([[0, 7, 8, 9, 2, 1, 1]])
    y = m(ids, (ids != 1).astype(int))
    m.save_pretrained(tmp_path)
    again = nn.from_pretrained(tmp_path)
    assert type(again) is nn.RobertaModel and again.config["model_type"] == model_type
    np.testing.assert_array_equal(again(ids, (ids != 1).astype(int)), y)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_their_formulas(name):
    x64 = np.linspace(-12, 12, 2001)
    c = math.sqrt(2 / math.pi)
    want = {"gelu": 0.5 * x64 * (1 + erf(x64 / math.sqrt(2))),
            "relu": np.maximum(x64, 0),
            "gelu_new": 0.5 * x64 * (1 + np.tanh(c * (x64 + 0.044715 * x64 ** 3))),
            "gelu_fast": 0.5 * x64 * (1 + np.tanh(x64 * 0.7978845608 * (1 + 0.044715 * x64
                                                                        * x64))),
            "quick_gelu": x64 / (1 + np.exp(-1.702 * x64)),
            "tanh": np.tanh(x64)}
    want["gelu_python"] = want["gelu"]
    want["gelu_pytorch_tanh"] = want["gelu_new"]
    y = apply_activation(x64.astype(np.float32).reshape(3, -1).copy(), name)
    np.testing.assert_allclose(y.ravel(), want[name], rtol=1e-5, atol=2e-6)
    assert name == "tanh" or name in FFN_ACTIVATIONS
    with pytest.raises(ValueError, match="writable C-contiguous float32"):
        apply_activation(np.zeros((3, 4), np.float32)[:, ::2], name)


def test_empty_batches():
    x = {"input_ids": np.zeros((2, 0), np.int64)}
    assert nn.from_pretrained(os.path.join(ROOT, "bert-seqcls"))(**x).shape == (2, 3)
    assert nn.from_pretrained(os.path.join(ROOT, "xlmr-tokcls"))(**x).shape == (2, 0, 5)
    qa = nn.from_pretrained(os.path.join(ROOT, "electra-qa"))(**x)
    assert qa.start_logits.shape == qa.end_logits.shape == (2, 0)
