"""The task pipelines and their commands (classify, ner, qa) on the tiny reference models.

Text and token classification are compared with what transformers'
pipelines answered for the same texts (``pipeline_reference.json``, written
by scripts/make_model_references.py): labels, scores (1e-4), entity words
and offsets for every aggregation strategy, with WordPiece, byte-level BPE
and SentencePiece tokenizers.  Question answering (transformers 5 has no
such pipeline any more) is checked against an exhaustive search over the
model's logits.
"""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as hst

from blocksparse._cli import main
from blocksparse.pipelines import (QuestionAnsweringPipeline, TextClassificationPipeline,
                                   TokenClassificationPipeline, answer_spans, pad_batch)

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
ROOT = os.path.join(os.path.dirname(__file__), "data", "models")
CONTEXT = ("Marie Curie was born in Warsaw and worked in Paris with Pierre Curie for many "
           "years. Alan Turing studied at Cambridge and Princeton.")


def path(name):
    return os.path.join(ROOT, name)


def reference(name):
    with open(os.path.join(ROOT, name, "pipeline_reference.json"), encoding="utf-8") as f:
        return json.load(f)


def assert_same_scores(got, want):
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want],
                               atol=1e-4)


@pytest.mark.parametrize("name", ["bert-seqcls", "bert-multilabel", "bert-regression",
                                  "bert-crossencoder", "roberta-seqcls"])
def test_text_classification_matches_transformers(name):
    ref = reference(name)
    pipe = TextClassificationPipeline(path(name))
    for got, want in zip(pipe(ref["texts"], top_k=None), ref["scores"]):
        assert_same_scores(got, want)
    texts, pairs = zip(*ref["pairs"])
    for got, want in zip(pipe(list(texts), list(pairs), top_k=None), ref["pair_scores"]):
        assert_same_scores(got, want)
    best = pipe(ref["texts"])
    assert [b["label"] for b in best] == [s[0]["label"] for s in ref["scores"]]
    assert all(len(r) == min(2, len(pipe.id2label)) for r in pipe(ref["texts"], top_k=2))


def test_classification_functions_and_cross_encoder_scores():
    pipe = TextClassificationPipeline(path("bert-crossencoder"))
    pairs = [("Who worked in Paris?", "Marie Curie worked in Paris."), ("a", "b")]
    logits = pipe.logits(*map(list, zip(*pairs)))
    assert logits.shape == (2, 1)
    assert pipe.function_to_apply == "none"        # its config says regression
    np.testing.assert_allclose(pipe.score(pairs), logits[:, 0], rtol=1e-6)
    np.testing.assert_allclose(pipe.score(pairs, "sigmoid"), 1 / (1 + np.exp(-logits[:, 0])),
                               rtol=1e-6)
    multi = TextClassificationPipeline(path("bert-seqcls"), function_to_apply="sigmoid")
    assert multi.score([("x", "y")]).shape == (1, 3)
    with pytest.raises(ValueError, match="function_to_apply must be None or one of"):
        TextClassificationPipeline(path("bert-seqcls"), function_to_apply="tanh")
    with pytest.raises(ValueError, match="text_pairs must have one text per text"):
        multi(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="top_k must be None or a positive integer"):
        multi("a", top_k=0)
    with pytest.raises(TypeError, match="pairs must be \\(text, text_pair\\) tuples"):
        multi.score(["ab"])


def test_int8_sparse_classifier_and_batching():
    ref = reference("roberta-seqcls")
    texts = ref["texts"] * 5
    dense = TextClassificationPipeline(path("roberta-seqcls"))
    small = TextClassificationPipeline(path("roberta-seqcls"), max_batch_tokens=16,
                                       model=dense.model)
    np.testing.assert_allclose(small.logits(texts), dense.logits(texts), atol=1e-5)
    int8 = TextClassificationPipeline(path("roberta-seqcls"), dtype="int8")
    assert int8.model.dtype == "int8"
    assert [r["label"] for r in int8(texts)] == [r["label"] for r in dense(texts)]


@pytest.mark.parametrize("name", ["bert-tokcls", "roberta-tokcls", "xlmr-tokcls"])
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(name, strategy):
    ref = reference(name)
    pipe = TokenClassificationPipeline(path(name), aggregation_strategy=strategy)
    for got, want in zip(pipe(ref["texts"]), ref[strategy]):
        assert [{k: v for k, v in e.items() if k != "score"} for e in got] == \
            [{k: v for k, v in e.items() if k != "score"} for e in want]
        np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want],
                                   atol=1e-4)


def test_token_classification_options():
    pipe = TokenClassificationPipeline(path("bert-tokcls"), ignore_labels=())
    text = "Alan Turing studied at Cambridge."
    every = pipe(text, aggregation_strategy="none")[0]
    assert len(every) == len(pipe.encode(text)[0].ids) - 2          # all but [CLS], [SEP]
    for e in every:
        assert text[e["start"]:e["end"]].lower() == e["word"].removeprefix("##")
    with pytest.raises(ValueError, match="aggregation_strategy must be one of"):
        pipe(text, aggregation_strategy="mean")
    with pytest.raises(TypeError, match="texts must be strings"):
        pipe([3])
    long = TokenClassificationPipeline(path("bert-tokcls"), max_length=8)
    assert max(e["end"] for e in long(CONTEXT, aggregation_strategy="none")[0]) < 30


def brute_force(start, end, ctx, max_len, k):
    """Every span (i <= j < i + max_len) inside the context, scored as the pipeline does."""
    keep = ctx.copy()
    keep[0] = True
    ps = np.exp(np.where(keep, start, -1e4) - np.where(keep, start, -1e4).max())
    pe = np.exp(np.where(keep, end, -1e4) - np.where(keep, end, -1e4).max())
    ps, pe = ps / ps.sum(), pe / pe.sum()
    spans = [(ps[i] * pe[j], i, j) for i, j in itertools.product(np.flatnonzero(ctx), repeat=2)
             if i <= j < i + max_len]
    return sorted(spans, key=lambda s: -s[0])[:k], ps[0] * pe[0]


@given(hst.integers(2, 30), hst.integers(1, 6), hst.integers(1, 5), hst.integers(0, 2 ** 32 - 1))
def test_answer_spans_against_exhaustive_search(n, max_len, k, seed):
    rng = np.random.default_rng(seed)
    start, end = rng.normal(size=n) * 3, rng.normal(size=n) * 3
    ctx = rng.random(n) < 0.6
    ctx[0] = False
    spans, null = answer_spans(start, end, ctx, max_answer_len=max_len, top_k=k)
    want, want_null = brute_force(start, end, ctx, max_len, k)
    assert [(s, e) for s, e, _ in spans] == [(i, j) for _, i, j in want] or \
        np.allclose([x for _, _, x in spans], [x for x, _, _ in want])
    np.testing.assert_allclose([x for _, _, x in spans], [x for x, _, _ in want], rtol=1e-9)
    if ctx.any():
        assert null == pytest.approx(want_null)


def test_answer_spans_errors():
    with pytest.raises(ValueError, match="must have one shape"):
        answer_spans(np.zeros(3), np.zeros(4), np.ones(3, bool))
    with pytest.raises(ValueError, match="max_answer_len must be a positive integer"):
        answer_spans(np.zeros(3), np.zeros(3), np.ones(3, bool), max_answer_len=0)
    assert answer_spans(np.zeros(3), np.zeros(3), np.zeros(3, bool)) == ([], None)


@pytest.mark.parametrize("name", ["bert-qa", "roberta-qa", "xlmr-qa", "distilbert-qa"])
def test_question_answering_windows(name):
    """Long contexts in windows: the pipeline's answer is the best span over every window."""
    pipe = QuestionAnsweringPipeline(path(name), max_length=24, doc_stride=6, top_k=3,
                                     align_to_words=False)
    question = "Who worked in Paris?"
    feats = pipe.features(question, CONTEXT)
    assert len(feats) > 2 and all(len(f.ids) <= 24 for f in feats)
    answers = pipe(question, CONTEXT)
    assert len(answers) == 3 and answers[0]["score"] >= answers[1]["score"]
    want = []
    for f, (s, e) in zip(feats, pipe.run(feats)):
        ctx = np.array([sid == 1 for sid in f.sequence_ids])
        spans, _ = brute_force(s, e, ctx, 15, 3)
        want += [(p, f.offsets[i][0], f.offsets[j][1]) for p, i, j in spans]
    want = sorted(want, key=lambda w: -w[0])[:3]
    for a, (p, s, e) in zip(answers, want):
        assert (a["start"], a["end"]) == (s, e) and a["score"] == pytest.approx(p)
        assert a["answer"] == CONTEXT[s:e]


def assert_same_answers(got, want):
    assert [{k: v for k, v in g.items() if k != "score"} for g in got] == \
        [{k: v for k, v in w.items() if k != "score"} for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], rel=1e-5)


def test_question_answering_options():
    pipe = QuestionAnsweringPipeline(path("bert-qa"), max_length=32)
    one = pipe("Who worked in Paris?", CONTEXT)
    assert set(one) == {"score", "start", "end", "answer"}
    text = CONTEXT[one["start"]:one["end"]]
    assert one["answer"] == text and text == text.strip()           # whole words
    many = pipe(["Who worked in Paris?", "Where?"], [CONTEXT, "In Paris."])
    assert len(many) == 2
    # the same spans; scores to float rounding only: a float model's dense
    # products go through BLAS, whose sums may change with the batch's padded
    # length (OpenBLAS's Haswell kernels on 13 vs 32 columns)
    assert_same_answers([many[0]], [one])
    assert_same_answers(pipe([{"question": "Where?", "context": "In Paris."}]), many[1:])
    every = pipe("Who?", CONTEXT, handle_impossible_answer=True, top_k=10 ** 6)
    feats = pipe.features("Who?", CONTEXT)
    nulls = []
    for f, (start, end) in zip(feats, pipe.run(feats)):
        scored = np.array([i == 0 or t == 1 for i, t in enumerate(f.sequence_ids)])
        p = [np.exp(x[0] - np.logaddexp.reduce(x[scored].astype(np.float64)))
             for x in (start, end)]
        nulls.append(p[0] * p[1])
    empty = [a for a in every if a["answer"] == ""]
    assert len(empty) == 1 and empty[0]["score"] == pytest.approx(min(nulls))
    # a question that leaves less room than the stride: the stride shrinks
    long_q = "Who " * 6 + "worked?"
    assert 32 - 3 - len(pipe.tokenizer.encode(long_q, add_special_tokens=False).ids) < 128
    assert len(pipe.features(long_q, CONTEXT)) > 3
    with pytest.raises(ValueError, match="leaves no room for the context"):
        pipe("Who " * 40, CONTEXT)
    with pytest.raises(ValueError, match="must not be empty"):
        pipe("", CONTEXT)
    with pytest.raises(TypeError, match="dicts with keys 'question' and 'context'"):
        pipe(["just a question"])
    with pytest.raises(ValueError, match="question and context must have one entry each"):
        pipe(["a", "b"], ["c"])


def test_wrong_task_and_pad_batch():
    with pytest.raises(ValueError, match="TokenClassificationPipeline needs a model for token "
                                         "classification; .* holds a "
                                         "BertForSequenceClassification"):
        TokenClassificationPipeline(path("bert-seqcls"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        TextClassificationPipeline(path("nothing-here"))

    class E:
        def __init__(self, ids):
            self.ids, self.type_ids = ids, [1] * len(ids)

    ids, mask, tt = pad_batch([E([5, 6, 7]), E([8])], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tt.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([E([5])], 0, types=False)[2] is None


# ---- the commands --------------------------------------------------------------------------

def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_classify_command(capsys, tmp_path):
    ref = reference("bert-seqcls")
    status, rows, _ = run_cli(capsys, "classify", "--model", path("bert-seqcls"),
                              *ref["texts"][:3])
    assert status == 0 and [r["text"] for r in rows] == ref["texts"][:3]
    assert [r["label"] for r in rows] == [s[0]["label"] for s in ref["scores"][:3]]
    f = tmp_path / "pairs.tsv"
    f.write_text("".join(f"{a}\t{b}\n" for a, b in ref["pairs"]), encoding="utf-8")
    status, rows, _ = run_cli(capsys, "classify", "--model", path("bert-seqcls"), "--pairs",
                              "--all-labels", "-f", str(f))
    assert status == 0
    for r, want, (a, b) in zip(rows, ref["pair_scores"], ref["pairs"]):
        assert (r["text"], r["text_pair"]) == (a, b)
        assert_same_scores(r["labels"], want)
    f.write_text("no tab here\n")
    status, _, err = run_cli(capsys, "classify", "--model", path("bert-seqcls"), "--pairs",
                             "-f", str(f))
    assert status == 2 and "--pairs: input 1 has no TAB" in err


def test_sparsify_a_task_model_then_classify(capsys, tmp_path):
    """sparsify keeps the head: the saved classifier answers as the one pruned on load."""
    dst = tmp_path / "sparse"
    assert main(["sparsify", path("roberta-seqcls"), str(dst), "--sparsity", "0.5",
                 "--int8"]) == 0
    assert "int8 weights, 50% block sparsity" in capsys.readouterr().out
    texts = reference("roberta-seqcls")["texts"]
    status, saved, _ = run_cli(capsys, "classify", "--model", str(dst), "--all-labels",
                               *texts)
    status2, on_load, _ = run_cli(capsys, "classify", "--model", path("roberta-seqcls"),
                                  "--sparsity", "0.5", "--int8", "--all-labels", *texts)
    assert status == status2 == 0 and saved == on_load


def test_ner_command_output_file(capsys, tmp_path):
    ref = reference("roberta-tokcls")
    out = tmp_path / "ents.jsonl"
    status, _, err = run_cli(capsys, "ner", "--model", path("roberta-tokcls"), "--aggregation",
                             "first", "-o", str(out), *ref["texts"])
    assert status == 0 and "wrote" in err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for r, want in zip(rows, ref["first"]):
        assert [(e["entity_group"], e["start"], e["end"]) for e in r["entities"]] == \
            [(e["entity_group"], e["start"], e["end"]) for e in want]


def test_qa_command(capsys, tmp_path):
    status, rows, _ = run_cli(capsys, "qa", "--model", path("electra-qa"), "--question",
                              "Who worked in Paris?", "--context", CONTEXT, "--int8")
    assert status == 0 and len(rows) == 1
    assert rows[0]["answer"] == CONTEXT[rows[0]["start"]:rows[0]["end"]]
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "Where?", "context": CONTEXT}) + "\n\n" +
                 json.dumps({"question": "Who?", "context": "A"}) + "\n")
    status, rows, _ = run_cli(capsys, "qa", "--model", path("electra-qa"), "-f", str(f),
                              "--top-k", "2")
    assert status == 0 and [len(r["answers"]) for r in rows] == [2, 1]
    f.write_text("[1, 2]\n")
    status, _, err = run_cli(capsys, "qa", "--model", path("electra-qa"), "-f", str(f))
    assert status == 2 and "must be a JSON object with string keys" in err
    status, _, err = run_cli(capsys, "qa", "--model", path("electra-qa"), "--question", "x")
    assert status == 2 and "--question and --context go together" in err
    status, _, err = run_cli(capsys, "qa", "--model", path("bert-tokcls"), "--question", "x",
                             "--context", "y")
    assert status == 2 and "needs a model for question answering" in err


def test_commands_read_standard_input():
    """Piped input without --file: the command reads standard input (a real process)."""
    proc = subprocess.run([sys.executable, "-m", "blocksparse", "ner", "--model",
                           path("bert-tokcls"), "--aggregation", "none"],
                          input="Marie Curie\n\nParis\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["Marie Curie", "", "Paris"]
    assert rows[1]["entities"] == []


@pytest.mark.parametrize("name", ["roberta-base", "xlmr-base", "electra-base", "distilbert-base",
                                  "xlmr-tokcls", "xlmrxl-base", "robertapreln-qa"])
def test_embedding_pipeline_loads_every_family(name):
    """embed's pipeline runs any family's encoder (a task model's too), truncating RoBERTa
    and XLM-R texts at the positions they have after the padding id."""
    from blocksparse.nn import from_pretrained, mean_pooling
    from blocksparse.pipelines import EmbeddingPipeline
    pipe = EmbeddingPipeline(path(name))
    model = from_pretrained(path(name))
    encoder = getattr(model, "base", model)
    assert type(pipe.model) is type(encoder)
    assert pipe.max_length == encoder.max_length
    texts = ["Marie Curie worked in Paris.", "word " * 200, "Sparse kernels are fast."]
    ids = pipe.tokenize(texts)
    assert max(map(len, ids)) == encoder.max_length
    got = pipe.embed(texts)
    for text_ids, row in zip(ids, got):
        x = np.array([text_ids])
        want = mean_pooling(encoder(x, np.ones_like(x)), np.ones_like(x))[0]
        np.testing.assert_allclose(row, want, atol=1e-5)
