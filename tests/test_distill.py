"""blocksparse.train: the torch mirror of the encoder, distillation, ``sparsify --method distill``.

On a tiny random BERT (tests/tiny_bert.py) so that each test takes seconds;
skipped without PyTorch (the ``train`` extra) but for the tests of what
happens without it.  The real-checkpoint figures are in
docs/results/sparsity.json (benchmarks/bench_distill.py).
"""
import builtins
import json
import re

import numpy as np
import pytest

from blocksparse._cli import main
from blocksparse.nn import BertModel, mean_pooling, offline_texts, sparsify
from blocksparse.train import cubic_sparsity, require_torch
from tiny_bert import CFG, tiny_checkpoint

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def texts():
    return offline_texts("train", 400)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, texts):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), texts)


@pytest.fixture
def no_torch(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake)


def _stored_blocks(lin):
    w = lin.weight.weight if lin.kind == "int8" else lin.weight
    return w.nnzb, w.shape[0] // w.blocksize[0] * (w.shape[1] // w.blocksize[1])


# ---- the torch mirror ----------------------------------------------------------------

@pytest.mark.parametrize("model_type, sparsity, blocksize", [
    ("bert", None, (4, 1)), ("bert", 0.5, (4, 1)), ("bert", 0.5, (1, 4)),
    ("distilbert", 0.75, (4, 1))])
def test_mirror_matches_the_float32_encoder(torch, model_type, sparsity, blocksize):
    from blocksparse.train._torch_bert import TorchBert, mean_pool
    cfg = dict(CFG, vocab_size=100)
    if model_type == "distilbert":  # no token types, ReLU
        cfg = dict(model_type="distilbert", dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                   vocab_size=100, max_position_embeddings=64, activation="relu")
    model = BertModel.from_config(cfg, seed=3, sparsity=sparsity, blocksize=blocksize)
    mirror = TorchBert.from_blocksparse(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (3, 17))
    mask = np.ones_like(ids)
    mask[1, 9:], mask[2, 2:] = 0, 0  # padding: keys get weight 0 in both
    types = rng.integers(0, 2, ids.shape) if model_type == "bert" else None
    ref = model(ids, mask, types)
    with torch.no_grad():
        out = mirror(torch.as_tensor(ids), torch.as_tensor(mask),
                     None if types is None else torch.as_tensor(types))
    assert len(out) == model.config["num_hidden_layers"] + 1
    np.testing.assert_allclose(out[-1].numpy(), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(mean_pool(out[-1], torch.as_tensor(mask)).numpy(),
                               mean_pooling(ref, mask), atol=1e-4, rtol=0)
    # the first layer alone, against the layer class
    first = model.encoder.layers[0](out[0].numpy(), mask)
    np.testing.assert_allclose(out[1].numpy(), first, atol=1e-4, rtol=0)
    # not vacuous: the layers change the hidden state
    assert np.abs(out[-1].numpy() - out[0].numpy()).max() > 0.1


def test_mirror_round_trip_keeps_weights_and_masks(torch):
    from blocksparse.train._torch_bert import TorchBert, to_blocksparse
    model = BertModel.from_config(dict(CFG, vocab_size=100), seed=2, sparsity=0.5,
                                  add_pooling_layer=True)
    mirror = TorchBert.from_blocksparse(model)
    q = mirror.layers[0].q
    assert q.keep.float().mean() == 0.5 and bool((q.weight[q.mask == 0] == 0).all())
    back = to_blocksparse(mirror, model, (4, 1), dtype="float32")
    for a, b in zip(model.encoder, back.encoder):
        for la, lb in zip(a.linears, b.linears):
            assert lb.kind == "sparse"
            np.testing.assert_array_equal(la.weight.toarray(), lb.weight.toarray())
            np.testing.assert_array_equal(la.weight.indices, lb.weight.indices)
            np.testing.assert_array_equal(la.bias, lb.bias)
    assert back.pooler is model.pooler
    ids = np.arange(1, 11)[None]
    np.testing.assert_array_equal(back(ids), model(ids))


def test_masked_linear_gradient_is_zero_on_pruned_blocks(torch):
    from blocksparse.train._torch_bert import MaskedLinear
    rng = np.random.default_rng(0)
    keep = rng.random((2, 6)) < 0.5
    lin = MaskedLinear(rng.standard_normal((8, 6)), np.zeros(8), (4, 1), keep)
    lin(torch.randn(5, 6)).sum().backward()
    pruned = ~np.repeat(keep, 4, axis=0)
    assert np.all(lin.weight.grad.numpy()[pruned] == 0)
    assert np.all(lin.weight.grad.numpy()[~pruned] != 0)
    norms = lin.block_norms().numpy()
    assert np.all(norms[~keep] == 0) and np.all(norms[keep] > 0)


# ---- the schedule --------------------------------------------------------------------

def test_cubic_schedule():
    ps = np.linspace(0, 1, 101)
    s = [cubic_sparsity(p, 0.5, 0.9, end=0.6) for p in ps]
    assert s[0] == 0.5 and s[60] == pytest.approx(0.9) and s[-1] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(s, s[1:]))
    assert s[10] - s[0] > s[50] - s[40]  # fast at first, slow near the target
    assert cubic_sparsity(0.3, 0.8, 0.8) == 0.8


# ---- distillation ----------------------------------------------------------------------

def test_distill_prunes_gradually_and_learns(torch, tiny_dir, texts, tmp_path):
    from blocksparse.train import distill
    recs = []
    model = distill(tiny_dir, 0.75, texts, start="magnitude", start_sparsity=0.5, steps=60,
                    lr=2e-3, prune_every=5, prune_end=0.5, progress=False, log=recs.append)
    steps = [r for r in recs if "step" in r]
    assert recs[0]["event"] == "start" and len(steps) == 60
    sched = [r["sparsity"] for r in steps]
    assert sched[0] > 0.5 and sched[29] == pytest.approx(0.75) and sched[-1] == 0.75
    assert all(b >= a for a, b in zip(sched, sched[1:]))
    losses = [r["loss"] for r in steps]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    # exactly the target number of blocks in every weight, INT8, and it loads back
    assert model.dtype == "int8" and model.sparsity == 0.75
    for layer in model.encoder:
        for lin in layer.linears:
            stored, total = _stored_blocks(lin)
            per_weight = total // 3 if lin is layer.attention.qkv else total
            assert stored == (3 if lin is layer.attention.qkv else 1) * (
                per_weight - round(0.75 * per_weight))
    model.save_pretrained(tmp_path)
    back = BertModel.from_pretrained(tmp_path, dtype="int8")
    ids, mask = np.array([[2, 10, 11, 12, 3, 0]]), np.array([[1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(back(ids, mask), model(ids, mask))
    # better than where it started: the magnitude start at the target
    dense = BertModel.from_pretrained(tiny_dir)
    start = sparsify(tiny_dir, 0.75, method="magnitude")
    held = offline_texts("eval", 100)
    from blocksparse.nn import fidelity
    assert fidelity(model, dense, held, tiny_dir)["mean_cosine"] > \
        fidelity(start, dense, held, tiny_dir)["mean_cosine"]


def test_distill_from_a_given_start_and_time_budget(torch, tiny_dir, texts):
    from blocksparse.train import distill
    start = sparsify(tiny_dir, 0.5, method="magnitude", dtype="float32", blocksize=(1, 4))
    recs = []
    model = distill(tiny_dir, 0.5, texts, start=start, blocksize=(1, 4), steps=None,
                    time_budget=1.0, dtype="float32", progress=False, log=recs.append)
    steps = [r for r in recs if "step" in r]
    assert 1 <= len(steps) and 0.9 <= steps[-1]["seconds"] < 10
    assert model.dtype == "float32" and model.blocksize == (1, 4)
    for a, b in zip(start.encoder, model.encoder):  # same sparsity: the start's masks kept
        for la, lb in zip(a.linears, b.linears):
            np.testing.assert_array_equal(la.weight.indices, lb.weight.indices)
            np.testing.assert_array_equal(la.weight.indptr, lb.weight.indptr)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps=None), ValueError, "give a budget"),
    (dict(start_sparsity=0.9), ValueError, "must not exceed sparsity"),
    (dict(blocksize=(3, 1)), ValueError, "does not divide"),
    (dict(start="random"), ValueError, "start must be one of"),
    (dict(steps=0), ValueError, "steps must be a positive int"),
    (dict(time_budget=-1), ValueError, "time_budget must be a positive number"),
    (dict(prune_end=0), ValueError, "prune_end must be a number in"),
    (dict(hidden_weight=0, pooled_weight=0), ValueError, "must not both be 0"),
    (dict(texts=["Too few texts."] * 3), ValueError, "give at least 8"),
    (dict(texts="one string"), TypeError, "not one string"),
])
def test_distill_bad_input_fails_before_work(torch, tiny_dir, texts, kwargs, exc, match):
    from blocksparse.train import distill
    args = dict(texts=texts, steps=5, progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        distill(tiny_dir, 0.8, args.pop("texts"), **args)


def test_distill_refuses_a_pruned_teacher_and_a_bad_start(torch, tiny_dir, texts):
    from blocksparse.train import distill
    with pytest.raises(ValueError, match="must be dense"):
        distill(sparsify(tiny_dir, 0.5, method="magnitude"), 0.8, texts, tokenizer=tiny_dir)
    sparse = sparsify(tiny_dir, 0.75, method="magnitude", dtype="float32")
    with pytest.raises(ValueError, match="start is sparser than sparsity 0.5"):
        distill(tiny_dir, 0.5, texts, start=sparse)
    with pytest.raises(ValueError, match="start must be block-sparse float32"):
        distill(tiny_dir, 0.75, texts, start=sparsify(tiny_dir, 0.75, method="magnitude"))
    with pytest.raises(ValueError, match="start must be block-sparse float32 with blocksize"):
        distill(tiny_dir, 0.75, texts, start=sparse, blocksize=(1, 4))


def test_without_torch_the_error_names_the_extra(no_torch):
    with pytest.raises(ImportError, match=r"pip install 'blocksparse\[train\]'"):
        require_torch()


# ---- the command line -------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_file(tmp_path_factory, texts):
    f = tmp_path_factory.mktemp("texts") / "texts.txt"
    f.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return f


def test_cli_sparsify_distill(torch, tiny_dir, text_file, tmp_path, capsys):
    dst = tmp_path / "out"
    code = main(["sparsify", str(tiny_dir), str(dst), "--sparsity", "0.5", "--int8",
                 "--method", "distill", "--calibration", str(text_file), "--steps", "15",
                 "--eval-texts", "60"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "then distilling (15 steps)" in err and re.search(r"trained 15 steps in", err)
    m = re.search(r"quality vs the dense source on 60 held-out texts: mean cosine ([\d.]+)", out)
    assert m, out
    meta = json.loads((dst / "config.json").read_text())["blocksparse"]
    info = meta["sparsify"]
    assert info["method"] == "distill" and info["training"]["steps"] == 15
    assert info["training"]["steps_budget"] == 15 and info["training"]["time_budget"] is None
    assert f"{info['quality']['mean_cosine']:.4f}" == m.group(1)
    assert meta["sparsity"] == 0.5 and meta["dtype"] == "int8"
    model = BertModel.from_pretrained(dst, dtype="int8")
    for layer in model.encoder:
        for lin in layer.linears:
            stored, total = _stored_blocks(lin)
            assert stored == total // 2
    assert (dst / "tokenizer.json").is_file()
    assert main(["embed", "A sentence.", "--model", str(dst)]) == 0


@pytest.mark.parametrize("extra, match", [
    (["--method", "distill"], "--method distill needs --calibration"),
    (["--steps", "5"], "--steps and --time-budget are for --method distill"),
])
def test_cli_distill_usage_errors(tiny_dir, tmp_path, capsys, extra, match):
    code = main(["sparsify", str(tiny_dir), str(tmp_path / "d"), "--sparsity", "0.5"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and match in err, err
    assert not (tmp_path / "d").exists()


def test_cli_distill_without_torch_is_a_usage_error(tiny_dir, text_file, tmp_path, capsys,
                                                    no_torch):
    code = main(["sparsify", str(tiny_dir), str(tmp_path / "d"), "--sparsity", "0.5",
                 "--method", "distill", "--calibration", str(text_file)])
    err = capsys.readouterr().err
    assert code == 2 and "blocksparse[train]" in err, err
    assert not (tmp_path / "d").exists()
