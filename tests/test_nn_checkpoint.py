"""BertModel.from_pretrained / save_pretrained on small synthetic checkpoints.

Hugging Face directories for BERT (with and without the ``bert.`` prefix,
old ``gamma``/``beta`` LayerNorm names) and DistilBERT are written from a
random model, loaded back and compared; the package's own format must load
back bit for bit; broken directories must give errors naming the file, the
config key or the tensor.
"""
import json
import os

import numpy as np
import pytest

from blocksparse.nn import BertModel, normalize_config

safetensors_numpy = pytest.importorskip("safetensors.numpy")

CFG = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, vocab_size=120, max_position_embeddings=24, type_vocab_size=2,
           layer_norm_eps=1e-12, hidden_act="gelu")
IDS = np.array([[2, 17, 33, 90, 5, 0], [7, 8, 9, 0, 0, 0]])
MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


def hf_tensors(model, style="bert", prefix="", old_ln_names=False):
    """The model's float weights under Hugging Face names."""
    t, emb = {}, model.embeddings
    g, b = ("gamma", "beta") if old_ln_names else ("weight", "bias")
    t[prefix + "embeddings.word_embeddings.weight"] = emb.word
    t[prefix + "embeddings.position_embeddings.weight"] = emb.position
    if emb.token_type is not None:
        t[prefix + "embeddings.token_type_embeddings.weight"] = emb.token_type
    t[prefix + f"embeddings.LayerNorm.{g}"] = emb.ln.weight
    t[prefix + f"embeddings.LayerNorm.{b}"] = emb.ln.bias
    H = model.hidden_size
    for i, layer in enumerate(model.encoder):
        qkv = layer.attention.qkv
        parts = {"q": (qkv.weight[:H], qkv.bias[:H]),
                 "k": (qkv.weight[H:2 * H], qkv.bias[H:2 * H]),
                 "v": (qkv.weight[2 * H:], qkv.bias[2 * H:]),
                 "o": (layer.attention.out.weight, layer.attention.out.bias),
                 "ffn1": (layer.ffn1.weight, layer.ffn1.bias),
                 "ffn2": (layer.ffn2.weight, layer.ffn2.bias),
                 "ln1": (layer.ln1.weight, layer.ln1.bias),
                 "ln2": (layer.ln2.weight, layer.ln2.bias)}
        if style == "distilbert":
            p = f"transformer.layer.{i}."
            names = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                     "o": "attention.out_lin", "ffn1": "ffn.lin1", "ffn2": "ffn.lin2",
                     "ln1": "sa_layer_norm", "ln2": "output_layer_norm"}
        else:
            p = f"encoder.layer.{i}."
            names = {"q": "attention.self.query", "k": "attention.self.key",
                     "v": "attention.self.value", "o": "attention.output.dense",
                     "ffn1": "intermediate.dense", "ffn2": "output.dense",
                     "ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm"}
        for part, (w, bias) in parts.items():
            ln = part.startswith("ln")
            t[prefix + p + names[part] + (f".{g}" if ln else ".weight")] = w
            t[prefix + p + names[part] + (f".{b}" if ln else ".bias")] = bias
    if model.pooler is not None:
        t[prefix + "pooler.dense.weight"] = model.pooler.weight
        t[prefix + "pooler.dense.bias"] = model.pooler.bias
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


def write_hf(directory, config, tensors):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    safetensors_numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
    return directory


@pytest.fixture
def model():
    return BertModel.from_config(CFG, seed=4, add_pooling_layer=True)


@pytest.mark.parametrize("prefix,old", [("", False), ("bert.", False), ("bert.", True)])
def test_bert_checkpoint_loads_exactly(tmp_path, model, prefix, old):
    t = hf_tensors(model, prefix=prefix, old_ln_names=old)
    t[prefix + "embeddings.position_ids"] = np.arange(24)[None]       # ignored buffers
    t["cls.predictions.bias"] = np.zeros(120, np.float32)              # heads are ignored
    d = write_hf(tmp_path / "hf", dict(CFG, architectures=["BertModel"]), t)
    loaded = BertModel.from_pretrained(d)
    assert loaded.dtype == "float32" and loaded.pooler is not None
    np.testing.assert_array_equal(loaded(IDS, MASK), model(IDS, MASK))


def test_distilbert_checkpoint(tmp_path):
    cfg = dict(model_type="distilbert", dim=32, n_layers=2, n_heads=4, hidden_dim=64,
               vocab_size=120, max_position_embeddings=24, activation="gelu")
    ref = BertModel.from_config(cfg, seed=5)
    for prefix in ("", "distilbert."):
        d = write_hf(tmp_path / f"d{prefix}", cfg, hf_tensors(ref, "distilbert", prefix))
        loaded = BertModel.from_pretrained(d)
        assert loaded.embeddings.token_type is None
        assert loaded.config["model_type"] == "distilbert"
        np.testing.assert_array_equal(loaded(IDS, MASK), ref(IDS, MASK))


def test_float16_checkpoint_is_upcast(tmp_path, model):
    t = {k: v.astype(np.float16) for k, v in hf_tensors(model).items()}
    loaded = BertModel.from_pretrained(write_hf(tmp_path / "h", CFG, t))
    assert loaded.embeddings.word.dtype == np.float32
    assert np.abs(loaded(IDS, MASK) - model(IDS, MASK)).max() < 0.1


@pytest.mark.parametrize("opts", [dict(), dict(sparsity=0.75), dict(dtype="int8"),
                                  dict(sparsity=0.9, dtype="int8", blocksize=(1, 4)),
                                  dict(sparsity=0.5, dtype="int8", balanced=True)])
def test_pruned_quantized_checkpoint_and_own_format_roundtrip(tmp_path, model, opts):
    d = write_hf(tmp_path / "hf", CFG, hf_tensors(model))
    sparse = BertModel.from_pretrained(d, **opts)
    assert sparse.dtype == opts.get("dtype", "float32")
    kinds = {lin.kind for layer in sparse.encoder for lin in layer.linears}
    assert kinds == {"int8" if "dtype" in opts else "sparse" if "sparsity" in opts else "dense"}
    if "sparsity" in opts:
        lin = sparse.encoder.layers[0].ffn1
        w = lin.weight.weight if lin.kind == "int8" else lin.weight
        assert w.blocksize == opts.get("blocksize", (4, 1))
        assert abs(w.density - (1 - opts["sparsity"])) < 0.02
    out = sparse(IDS, MASK)
    sparse.save_pretrained(tmp_path / "own")
    again = BertModel.from_pretrained(tmp_path / "own")
    np.testing.assert_array_equal(again(IDS, MASK), out)
    assert (again.dtype, again.sparsity, again.blocksize, again.balanced, again.smoothing) == \
        (sparse.dtype, sparse.sparsity, sparse.blocksize, sparse.balanced, sparse.smoothing)
    if opts.get("dtype") == "int8":
        assert again.encoder.layers[0].attention.qkv.input_scale is not None   # smoothed
    np.testing.assert_array_equal(again.pool(out), sparse.pool(out))
    # a saved model is not pruned or re-quantized a second time
    with pytest.raises(ValueError, match="saved already pruned"):
        BertModel.from_pretrained(tmp_path / "own", sparsity=0.3)
    other = "float32" if sparse.dtype == "int8" else "int8"
    with pytest.raises(ValueError, match=f"saved with dtype '{sparse.dtype}'"):
        BertModel.from_pretrained(tmp_path / "own", dtype=other)


def test_missing_files(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert it to safetensors"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        BertModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size=None), "config is missing the key 'hidden_size'"),
    (dict(num_attention_heads=5), "'num_attention_heads' = 5 does not divide the hidden size"),
    (dict(intermediate_size=0), "'intermediate_size' must be a positive integer"),
    (dict(hidden_act="swish"), "'hidden_act' must be one of"),
    (dict(model_type="roberta"), "'model_type' must be 'bert' or 'distilbert'"),
    (dict(position_embedding_type="relative_key"), "'position_embedding_type' must be"),
    (dict(layer_norm_eps="x"), "'layer_norm_eps' must be a small non-negative number"),
])
def test_bad_config(tmp_path, model, change, message):
    cfg = {k: v for k, v in dict(CFG, **change).items() if v is not None}
    d = write_hf(tmp_path / "hf", cfg, hf_tensors(model))
    with pytest.raises(ValueError, match=message):
        BertModel.from_pretrained(d)
    with pytest.raises(ValueError, match=message):
        BertModel.from_config(cfg)


def test_bad_tensors(tmp_path, model):
    t = hf_tensors(model)
    bad = dict(t)
    bad["encoder.layer.1.intermediate.dense.weight"] = np.zeros((64, 31), np.float32)
    with pytest.raises(ValueError, match=r"'encoder.layer.1.intermediate.dense.weight' has "
                                         r"shape \(64, 31\), expected \(64, 32\)"):
        BertModel.from_pretrained(write_hf(tmp_path / "a", CFG, bad))
    bad = {k: v for k, v in t.items() if k != "encoder.layer.0.attention.self.key.bias"}
    with pytest.raises(ValueError, match="missing the tensor 'encoder.layer.0.attention.self"
                                         ".key.bias'"):
        BertModel.from_pretrained(write_hf(tmp_path / "b", CFG, bad))
    bad = {"something.else": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="not a BERT-family checkpoint"):
        BertModel.from_pretrained(write_hf(tmp_path / "c", CFG, bad))
    bad = dict(t)
    bad["embeddings.LayerNorm.weight"] = np.full(32, np.nan, np.float32)
    with pytest.raises(ValueError, match="'embeddings.LayerNorm.weight' has NaN"):
        BertModel.from_pretrained(write_hf(tmp_path / "d", CFG, bad))
    # config says 3 layers, the file has 2
    with pytest.raises(ValueError, match="missing the tensor 'encoder.layer.2"):
        BertModel.from_pretrained(write_hf(tmp_path / "e", dict(CFG, num_hidden_layers=3), t))


def test_own_format_tampering(tmp_path, model):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["blocksparse"]["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format version 99"):
        BertModel.from_pretrained(tmp_path)
    sparse = BertModel.from_config(CFG, sparsity=0.5, dtype="int8")
    sparse.save_pretrained(tmp_path / "s")
    # format 2 names its weights file in config.json (a new name per save, issue 11)
    weights = json.loads((tmp_path / "s" / "config.json").read_text())["blocksparse"]["weights"]
    t = safetensors_numpy.load_file(str(tmp_path / "s" / weights))
    t["layers.0.ffn1.indices"] = t["layers.0.ffn1.indices"] + 1000
    safetensors_numpy.save_file(t, str(tmp_path / "s" / weights))
    with pytest.raises(ValueError, match="layers.0.ffn1.data/.indices/.indptr do not form"):
        BertModel.from_pretrained(tmp_path / "s")


def test_normalize_config_defaults():
    c = normalize_config(dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=16, vocab_size=10))
    assert c["model_type"] == "bert" and c["max_position_embeddings"] == 512
    assert c["type_vocab_size"] == 2 and c["layer_norm_eps"] == 1e-12
    d = normalize_config(dict(dim=8, n_layers=1, n_heads=2, hidden_dim=16, vocab_size=10))
    assert d["model_type"] == "distilbert" and d["type_vocab_size"] == 0
    with pytest.raises(TypeError, match="config must be a dict"):
        normalize_config([1])


def test_missing_safetensors_names_the_extra(tmp_path, model, monkeypatch):
    d = write_hf(tmp_path / "hf", CFG, hf_tensors(model))
    monkeypatch.setitem(__import__("sys").modules, "safetensors", None)
    with pytest.raises(ImportError, match=r"pip install 'blocksparse\[models\]'"):
        BertModel.from_pretrained(d)
    with pytest.raises(ImportError, match="needs the 'safetensors' package"):
        model.save_pretrained(tmp_path / "out")


def test_from_config_reads_a_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    ids = IDS[:, :4]
    by_dict = BertModel.from_config(CFG, seed=7)(ids)
    np.testing.assert_array_equal(BertModel.from_config(tmp_path, seed=7)(ids), by_dict)
    np.testing.assert_array_equal(
        BertModel.from_config(str(tmp_path / "config.json"), seed=7)(ids), by_dict)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BertModel.from_config(tmp_path / "missing")
