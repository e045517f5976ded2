"""Every family and head against transformers: tiny checkpoints in tests/data/models.

``scripts/make_model_references.py`` (PyTorch + transformers, run once) wrote
each directory: a Hugging Face checkpoint of a tiny model (BERT, DistilBERT,
RoBERTa, XLM-RoBERTa or ELECTRA, and the pre-LayerNorm RoBERTa-PreLayerNorm
and XLM-RoBERTa-XL; encoder only or with a head; the activations vary), and ``reference.npz`` with token ids and the outputs
transformers computes for them.  Here, without PyTorch:

* float32: max abs diff <= 1e-4 on every output, on every ISA;
* INT8 (every encoder Linear quantized, SmoothQuant as by default): cosine
  >= 0.999 of every output, and >= 99 % agreement of the decisions of
  classification heads (argmax; per label > 0 for multi-label; > 0 for the
  ELECTRA discriminator; start and end positions for question answering).
  Those heads were fine-tuned on a synthetic task by the script, so that
  they decide, as real classifiers do; the masked-LM heads stay random, with
  near ties among the vocabulary that rounding decides: their top-1 is held
  to 95 % here and to 99 % on a real checkpoint (tests/test_nn_real.py);
* the package's own format saves and loads every family and head back bit
  for bit (pruned and INT8).
"""
import functools
import os

import numpy as np
import pytest

import blocksparse
import blocksparse.nn as nn

pytest.importorskip("safetensors")

ROOT = os.path.join(os.path.dirname(__file__), "data", "models")
NAMES = sorted(os.listdir(ROOT))
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CLASSES = {"base": (nn.BertModel, nn.RobertaModel, nn.ElectraModel),
           "seqcls": nn.ModelForSequenceClassification,
           "multilabel": nn.ModelForSequenceClassification,
           "regression": nn.ModelForSequenceClassification,
           "crossencoder": nn.ModelForSequenceClassification,
           "tokcls": nn.ModelForTokenClassification, "qa": nn.ModelForQuestionAnswering,
           "mlm": nn.ModelForMaskedLM, "generator": nn.ModelForMaskedLM,
           "discriminator": nn.ModelForPreTraining}


@functools.lru_cache(maxsize=None)
def reference(name):
    with np.load(os.path.join(ROOT, name, "reference.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def model(name, dtype):
    return nn.from_pretrained(os.path.join(ROOT, name), dtype=dtype)


def feed(ref):
    return {k: ref[k] for k in INPUTS if k in ref}


def run(m, ref):
    """The model's outputs under the reference's names."""
    y = m(**feed(ref))
    if isinstance(y, nn.QuestionAnsweringOutput):
        return {"start_logits": y.start_logits, "end_logits": y.end_logits}
    return {"last_hidden_state" if "last_hidden_state" in ref else "logits": y}


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def decisions(name, key, y, ref):
    """The head's decisions, one per sequence or real token (None: a regression head)."""
    real = ref["attention_mask"].astype(bool)
    if "multilabel" in name:
        return (y > 0).ravel()
    if "discriminator" in name:
        return (y > 0)[real]
    if key in ("start_logits", "end_logits"):
        return y.argmax(-1)
    if y.ndim == 3 and "base" not in name:
        return y.argmax(-1)[real]
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(-1)
    return None


def test_every_family_and_head_is_covered():
    families = {n.split("-")[0] for n in NAMES}
    assert families == {"bert", "distilbert", "roberta", "xlmr", "electra",
                        "robertapreln", "xlmrxl"}   # the last two pre-LayerNorm
    heads = {n.split("-", 1)[1] for n in NAMES}
    assert heads == set(CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_loads_the_architecture_config_names(name):
    m = model(name, "float32")
    assert isinstance(m, CLASSES[name.split("-", 1)[1]])
    base = getattr(m, "base", m)
    pre_norm = name.startswith(("robertapreln-", "xlmrxl-"))
    assert {type(layer) for layer in base.encoder} == \
        {nn.PreNormBertLayer if pre_norm else nn.BertLayer}
    assert (base.encoder.final_ln is not None) == pre_norm
    assert (base.embeddings.ln is None) == name.startswith("xlmrxl-")   # XL: no embedding norm
    if not name.endswith("-base"):
        assert m.architecture.endswith(m.config["architectures"][0][-12:])
    assert m.unused_tensors == []


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_transformers(name, isa):
    ref = reference(name)
    got = run(model(name, "float32"), ref)
    for key, y in got.items():
        want = ref[key]
        assert y.shape == want.shape and y.dtype == np.float32
        diff = float(np.abs(y - want).max())
        assert diff <= 1e-4, f"{name} {key}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_int8_close_to_transformers(name, isa):
    m = model(name, "int8")
    encoder = getattr(m, "base", m).encoder
    assert {lin.kind for layer in encoder for lin in layer.linears} == {"int8"}
    ref = reference(name)
    for key, y in run(m, ref).items():
        want = ref[key]
        cos = cosine(y, want)
        assert cos >= 0.999, f"{name} {key}: cosine {cos:.6f}"
        got, wanted = decisions(name, key, y, ref), decisions(name, key, want, ref)
        if got is not None:
            agree = float(np.mean(got == wanted))
            least = 0.95 if name.endswith(("-mlm", "-generator")) else 0.99
            assert agree >= least, f"{name} {key}: decisions agree on {agree:.2%}"


def test_electra_projection_is_an_int8_encoder_linear():
    m = model("electra-qa", "int8")
    assert m.base.embeddings.project.kind == "int8"
    assert model("electra-base", "int8").embeddings.project is None  # embedding = hidden


@pytest.mark.parametrize("name", NAMES)
def test_own_format_roundtrip(name, tmp_path):
    path = os.path.join(ROOT, name)
    m = nn.from_pretrained(path, dtype="int8", sparsity=0.5)
    ref = reference(name)
    out = run(m, ref)
    m.save_pretrained(tmp_path)
    again = nn.from_pretrained(tmp_path)
    assert type(again) is type(m)
    assert getattr(again, "architecture", None) == getattr(m, "architecture", None)
    assert (again.dtype, again.sparsity) == ("int8", 0.5)
    if hasattr(m, "id2label"):
        assert again.id2label == m.id2label
    for key, y in run(again, ref).items():
        np.testing.assert_array_equal(y, out[key])
    # the encoder alone loads from a task model's directory, as from a transformers one
    base_cls = type(getattr(m, "base", m))
    np.testing.assert_array_equal(base_cls.from_pretrained(tmp_path)(**feed(ref)),
                                  getattr(m, "base", m)(**feed(ref)))
