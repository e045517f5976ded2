"""``blocksparse convert`` / ``convert_checkpoint`` (issue 13 item 5).

Without PyTorch: checkpoints written byte by byte (tests/torch_files.py), a
tiny BERT converted and loaded, hostile files refused without running
anything, and the ``antiberty`` 0.1.3 wheel's BertForMaskedLM checkpoint
(``pip install --no-deps antiberty==0.1.3``) converted and checked through
its own masked-LM head.  With PyTorch installed, ``torch.save`` files of
both layouts are compared with ``torch.load``.
"""
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import blocksparse
from blocksparse import convert_checkpoint
from blocksparse._convert import CheckpointError, read_torch_checkpoint
from blocksparse.__main__ import main
from torch_files import (entries_of, glob, num, state_pickle, tensor, text, tup, write_legacy,
                         write_zip)

pytest.importorskip("safetensors", reason="needs the models extra")
nn = pytest.importorskip("blocksparse.nn")
CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           vocab_size=50, max_position_embeddings=16, type_vocab_size=2, model_type="bert")
IDS = np.array([[1, 5, 7, 9, 2, 0], [1, 3, 2, 0, 0, 0]])
MASK = (IDS > 0).astype(np.int64)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _hf_state(model):
    from tests.test_nn_checkpoint import hf_tensors
    state = hf_tensors(model, prefix="bert.")
    state["bert.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    H, V = CFG["hidden_size"], CFG["vocab_size"]
    gen = np.random.default_rng(3)
    state["cls.predictions.transform.dense.weight"] = gen.standard_normal((H, H), np.float32)
    state["cls.predictions.bias"] = gen.standard_normal(V, np.float32)
    return state


@pytest.fixture
def tiny_bin(tmp_path):
    """A BertForMaskedLM-style pytorch_model.bin, decoder tied to the word embeddings."""
    model = nn.BertModel.from_config(CFG, seed=7)
    state = _hf_state(model)
    tied = [("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
            ("cls.predictions.decoder.bias", "cls.predictions.bias")]
    entries, data = entries_of(state, tied)
    src = tmp_path / "src"
    src.mkdir()
    write_zip(src / "pytorch_model.bin", state_pickle(entries), data)
    (src / "config.json").write_text(json.dumps(dict(CFG, architectures=["BertForMaskedLM"])))
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (src / "training_args.bin").write_bytes(b"not copied")
    return src, model, state


# ---- the reader -----------------------------------------------------------------------------

def test_reads_every_tensor_once_with_ties(tiny_bin):
    src, _, state = tiny_bin
    tensors, tied = read_torch_checkpoint(src / "pytorch_model.bin")
    assert list(tensors) == list(state)  # state-dict order, the tied names dropped
    for name, a in state.items():
        np.testing.assert_array_equal(tensors[name], a, strict=True)
    assert tied == {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "cls.predictions.decoder.bias": "cls.predictions.bias"}


def test_views_offsets_strides_dtypes_and_byte_order(tmp_path):
    base = np.arange(24, dtype=np.float32)
    ops = [("t", tensor("FloatStorage", "0", 24, 0, (4, 3), (1, 4))),     # a transposed view
           ("s", tensor("FloatStorage", "0", 24, 5, (2, 2), (6, 2))),     # offset and strides
           ("e", tensor("FloatStorage", "0", 24, 24, (0, 3), (3, 1))),    # empty at the end
           ("h", tensor("HalfStorage", "1", 3, 0, (3,), (1,))),
           ("b", tensor("BFloat16Storage", "2", 2, 0, (2,), (1,))),
           ("i", tensor("LongStorage", "3", 2, 1, (), ())),              # a 0-d tensor
           ("q", tensor("BoolStorage", "4", 2, 0, (2,), (1,)))]
    bf = (np.array([1.5, -2.25], np.float32).view(np.uint32) >> 16).astype("<u2")
    data = {"0": base.astype(">f4").tobytes(), "1": np.array([1, 2, 3], ">f2").tobytes(),
            "2": bf.astype(">u2").tobytes(), "3": np.array([7, -9], ">i8").tobytes(),
            "4": np.array([True, False]).tobytes()}
    f = write_zip(tmp_path / "w.bin", state_pickle(ops), data, byteorder="big")
    t, tied = read_torch_checkpoint(f)
    assert tied == {}
    np.testing.assert_array_equal(t["t"], base[:12].reshape(3, 4).T, strict=True)
    np.testing.assert_array_equal(t["s"], np.array([[5, 7], [11, 13]], np.float32), strict=True)
    assert t["e"].shape == (0, 3)
    np.testing.assert_array_equal(t["h"], np.array([1, 2, 3], np.float16), strict=True)
    np.testing.assert_array_equal(t["b"], np.array([1.5, -2.25], np.float32), strict=True)
    assert t["i"].shape == () and t["i"] == -9 and t["i"].dtype == np.int64
    assert t["q"].tolist() == [True, False]
    assert all(a.flags.c_contiguous and a.dtype.isnative for a in t.values())


def test_legacy_layout(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
    entries, data = entries_of(arrays, [("w2", "w")])
    f = write_legacy(tmp_path / "old.bin", state_pickle(entries), data,
                     {"0": 6, "1": 2})
    t, tied = read_torch_checkpoint(f)
    np.testing.assert_array_equal(t["w"], arrays["w"], strict=True)
    np.testing.assert_array_equal(t["b"], arrays["b"], strict=True)
    assert tied == {"w2": "w"}


HOSTILE = [
    ("code", state_pickle([("x", glob("os", "system") + tup([text("touch PWNED")]) + b"R")]),
     {}, r"names the global os.system"),
    ("builtins", state_pickle([("x", glob("builtins", "eval") + tup([text("1")]) + b"R")]),
     {}, r"names the global builtins.eval"),
    ("out of bounds", state_pickle([("x", tensor("FloatStorage", "0", 4, 2, (3,), (1,)))]),
     {"0": b"\0" * 16}, r"reaches element 4 of a storage of 4"),
    ("negative stride", state_pickle([("x", tensor("FloatStorage", "0", 4, 0, (2,), (-1,)))]),
     {"0": b"\0" * 16}, r"tensor stride must be an integer >= 0"),
    ("short data", state_pickle([("x", tensor("FloatStorage", "0", 4, 0, (4,), (1,)))]),
     {"0": b"\0" * 12}, r"holds 12 bytes, not 4 x 4"),
    ("missing data", state_pickle([("x", tensor("FloatStorage", "0", 4, 0, (4,), (1,)))]),
     {}, r"has no data/0 entry"),
    ("not a dict", b"\x80\x02" + text("hello") + b".", {}, r"not a state dict"),
    ("not a tensor", state_pickle([("x", num(3))]), {}, r"entry 'x' is a int, not a tensor"),
    ("bad key", state_pickle([("x", tensor("FloatStorage", "../../etc", 1, 0, (1,), (1,)))]),
     {}, r"storage key must be a short name"),
    ("unknown storage", state_pickle([("x", tensor("QInt8Storage", "0", 1, 0, (1,), (1,)))]),
     {"0": b"\0"}, r"names the global torch.QInt8Storage"),
    ("size mismatch", state_pickle([("x", tensor("FloatStorage", "0", 4, 0, (2, 2), (2,)))]),
     {"0": b"\0" * 16}, r"size \(2, 2\) and stride \(2,\) differ in length"),
]


@pytest.mark.parametrize("pkl,data,match", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_files_are_refused_without_running_anything(tmp_path, monkeypatch, pkl, data,
                                                            match):
    monkeypatch.chdir(tmp_path)
    f = write_zip(tmp_path / "bad.bin", pkl, data)
    with pytest.raises(CheckpointError, match=match):
        read_torch_checkpoint(f)
    assert not (tmp_path / "PWNED").exists()


def test_not_a_checkpoint(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x80\x02K\x05.")  # a pickle of 5, no zip, no legacy magic
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_torch_checkpoint(f)
    bad = tmp_path / "y.bin"
    bad.write_bytes(b"\x80\x02" + glob("os", "system") + b".")
    with pytest.raises(CheckpointError, match="os.system"):
        read_torch_checkpoint(bad)


def test_legacy_storage_count_is_checked(tmp_path):
    entries, data = entries_of({"w": np.ones(4, np.float32)})
    f = write_legacy(tmp_path / "old.bin", state_pickle(entries), data, {"0": 1 << 40})
    with pytest.raises(CheckpointError, match="declares 1099511627776 elements"):
        read_torch_checkpoint(f)


# ---- convert_checkpoint and the command ----------------------------------------------------

def test_convert_then_load_gives_the_same_model(tiny_bin, tmp_path):
    src, model, _ = tiny_bin
    dst = tmp_path / "dst"
    info = convert_checkpoint(src, dst)
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors", "vocab.txt"]
    assert info["tied"]["cls.predictions.decoder.weight"] == \
        "bert.embeddings.word_embeddings.weight"
    from safetensors import safe_open
    with safe_open(dst / "model.safetensors", framework="numpy") as f:
        assert "cls.predictions.decoder.weight" not in f.keys()  # stored once
        assert json.loads(f.metadata()["tied_weights"]) == info["tied"]
    loaded = nn.BertModel.from_pretrained(dst)
    np.testing.assert_array_equal(loaded(IDS, MASK), model(IDS, MASK))


def test_convert_command(tiny_bin, tmp_path, capsys):
    src, _, _ = tiny_bin
    dst = tmp_path / "out"
    code, out, err = run(["convert", src, dst], capsys)
    assert code == 0, err
    assert "tied: cls.predictions.decoder.weight = bert.embeddings.word_embeddings.weight" in out
    assert "copied: vocab.txt, config.json" in out
    code, _, err = run(["convert", src, dst], capsys)
    assert code == 2 and "is not empty (use --force" in err
    (dst / "model-0123456789abcdef.safetensors").write_text("stale own weights")
    (dst / "pytorch_model.bin").write_text("stale")
    code, _, err = run(["convert", src / "pytorch_model.bin", dst, "--force"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors", "vocab.txt"]


def test_convert_usage_errors(tiny_bin, tmp_path, capsys):
    src, _, _ = tiny_bin
    code, out, _ = run(["convert", "--help"], capsys)
    assert code == 0 and "restricted unpickler" in out
    for argv, message in (
            (["convert", tmp_path / "none", tmp_path / "d"], "does not exist"),
            (["convert", src, src, "--force"], "DST must differ from SRC"),
            (["convert", tmp_path / "empty", tmp_path / "d"], "has no pytorch_model.bin")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code, _, err = run(argv, capsys)
        assert code == 2 and message in err, err
    (src / "pytorch_model.bin").write_bytes(b"\x80\x02" + glob("os", "system") + b".")
    code, _, err = run(["convert", src, tmp_path / "d2"], capsys)
    assert code == 1 and "os.system" in err


def test_sharded_bin_index(tmp_path):
    a = {"bert.embeddings.word_embeddings.weight": np.ones((3, 2), np.float32)}
    b = {"bert.embeddings.LayerNorm.weight": np.ones(2, np.float32)}
    src = tmp_path / "src"
    src.mkdir()
    for name, arrays in (("pytorch_model-00001-of-00002.bin", a),
                         ("pytorch_model-00002-of-00002.bin", b)):
        entries, data = entries_of(arrays)
        write_zip(src / name, state_pickle(entries), data)
    index = {"weight_map": {**{k: "pytorch_model-00001-of-00002.bin" for k in a},
                            **{k: "pytorch_model-00002-of-00002.bin" for k in b}}}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    info = convert_checkpoint(src, tmp_path / "dst")
    assert info["tensors"] == 2
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"x": "../x"}}))
    with pytest.raises(ValueError, match="shard"):
        convert_checkpoint(src, tmp_path / "dst2")


def test_loader_names_the_command(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="python -m blocksparse convert"):
        nn.BertModel.from_pretrained(tmp_path)


def test_public_name():
    assert blocksparse.convert_checkpoint is convert_checkpoint
    assert "convert_checkpoint" in blocksparse.__all__


# ---- a real checkpoint: antiberty 0.1.3 (BertForMaskedLM + heads), without PyTorch -----------

def _antiberty_dir():
    spec = importlib.util.find_spec("antiberty")  # finds the package without importing torch
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(spec.submodule_search_locations[0]) / "trained_models" / "AntiBERTy_md_smooth"
    return d if (d / "pytorch_model.bin").is_file() else None


needs_antiberty = pytest.mark.skipif(_antiberty_dir() is None,
                                     reason="needs pip install --no-deps antiberty==0.1.3")


def _gelu(x):
    from scipy.special import erf
    return x * (1 + erf(x / np.sqrt(2))) / 2


@needs_antiberty
def test_antiberty_converts_and_its_mlm_head_reads_the_sequence(tmp_path):
    src = _antiberty_dir()
    dst = tmp_path / "antiberty"
    info = convert_checkpoint(src, dst)
    assert info["tied"] == {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}
    assert info["copied"] == ["config.json"]
    model = nn.BertModel.from_pretrained(dst)
    assert model.config["hidden_size"] == 512 and len(model.encoder) == 8
    # the masked-LM head on the encoder's output, the decoder tied to the word
    # embeddings: unmasked residues of an antibody sequence are read back
    vocab = (src.parent / "vocab.txt").read_text().split()
    seq = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVS"
    ids = np.array([[vocab.index("[CLS]")] + [vocab.index(c) for c in seq] +
                    [vocab.index("[SEP]")]])
    hidden = model(ids)[0].astype(np.float64)
    from safetensors.numpy import load_file
    w = load_file(dst / "model.safetensors")
    p = "cls.predictions.transform."
    h = _gelu(hidden @ w[p + "dense.weight"].T + w[p + "dense.bias"])
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    h = h * w[p + "LayerNorm.weight"] + w[p + "LayerNorm.bias"]
    logits = h @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
    accuracy = np.mean(logits[1:-1].argmax(-1) == ids[0, 1:-1])
    assert accuracy > 0.9, accuracy  # chance is 1/20; wrong weights read nothing back


@needs_antiberty
def test_antiberty_matches_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    f = _antiberty_dir() / "pytorch_model.bin"
    ours, tied = read_torch_checkpoint(f)
    ref = torch.load(f, map_location="cpu", weights_only=True)
    assert set(ours) | set(tied) == set(ref)
    for name, a in ours.items():
        np.testing.assert_array_equal(a, ref[name].numpy(), strict=True)


# ---- files written by torch.save (when PyTorch is installed) ------------------------------------

@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_files_match_torch_load(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 4, generator=g)
    big = torch.randn(6, 8, generator=g)
    state = {"emb": emb, "decoder": emb, "t": big.t(), "slice": big[2:4, 1:5],
             "half": torch.randn(5, generator=g).half(),
             "bf16": torch.randn(3, generator=g).bfloat16(), "long": torch.arange(7),
             "mask": torch.tensor([True, False]), "scalar": torch.tensor(3.5),
             "empty": torch.zeros(0, 3), "int8": torch.tensor([-128, 5], dtype=torch.int8)}
    f = tmp_path / "m.bin"
    torch.save(state, f, _use_new_zipfile_serialization=zip_format)
    ours, tied = read_torch_checkpoint(f)
    assert tied == {"decoder": "emb"}
    for name, t in state.items():
        if name in tied:
            continue
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        np.testing.assert_array_equal(ours[name], want, strict=True)


def test_size_header_bounds_the_pickle(tmp_path, monkeypatch):
    import blocksparse._convert as conv
    monkeypatch.setattr(conv, "MAX_PICKLE_BYTES", 10)
    entries, data = entries_of({"w": np.ones(2, np.float32)})
    f = write_zip(tmp_path / "w.bin", state_pickle(entries), data)
    with pytest.raises(CheckpointError, match="is not a state dict's"):
        read_torch_checkpoint(f)
    assert struct.calcsize("<q") == 8
