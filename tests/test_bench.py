"""The benchmark suites of ``python -m blocksparse bench`` (blocksparse.bench).

The suites run for real, in quick mode with tiny shapes, from a temporary
working directory through ``python -m blocksparse`` (the installed package,
no source checkout on the path); then the JSON schema, the tables, the plot
and the paths without peers, and the helpers (ceiling probes, interleaved
rounds, the quiet-machine verdict, the figure's styles) one by one.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import blocksparse
from blocksparse.bench import _common, ceiling, plot

pytestmark = pytest.mark.thread_unsafe  # the suites set thread counts

ROOT = Path(__file__).resolve().parents[1]


def _has(name):
    return importlib.util.find_spec(name) is not None


def _cli(args, cwd):
    """Run ``python -m blocksparse`` in `cwd` with the checkout off sys.path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "blocksparse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _check_schema(data, suites):
    assert data["tool"] == "blocksparse bench"
    assert data["errors"] == []
    assert [s["suite"] for s in data["suites"]] == suites
    for s in data["suites"]:
        assert isinstance(s["name"], str) and isinstance(s["machine"], dict)
        assert set(s["load"]) >= {"loadavg_before", "loadavg_after", "other_cpu_fraction"}
        assert s["quiet"]["note"].startswith("quiet machine? ")
        assert isinstance(s["quiet"]["quiet"], bool)
        assert s["ceiling"]["built"] is True
        assert s["records"]
        for r in s["records"]:
            assert {"case", "time_s", "time_min_s", "speedup", "threads", "contenders",
                    "best_peer", "ceiling_fraction"} <= set(r)
            ours = r["contenders"]["blocksparse"]
            assert ours["kind"] == "ours"
            assert 0 < ours["min_s"] <= ours["median_s"] == r["time_s"]
            assert ours["calls"] >= 3
            for c in r["contenders"].values():
                assert c["min_s"] <= c["median_s"]
                assert c["spread"] == pytest.approx(c["median_s"] / c["min_s"])


def test_quick_spmm_suites_from_an_installed_package(tmp_path):
    res = _cli(["bench", "--quick", "--suite", "int8,float", "--shapes", "32x32",
                "--sparsity", "0.5", "--threads", "1", "--peers", "numpy_f32,scipy_bsr_f32",
                "--plain"], tmp_path)
    assert res.returncode == 0, res.stderr
    out_dir = tmp_path / "bench-results"
    data = json.loads((out_dir / "bench.json").read_text())
    _check_schema(data, ["int8", "float"])
    int8, flt = data["suites"]
    # int8: two block sizes, the NumPy peer only (asked for), the INT8 ceiling (VNNI, else AVX2)
    assert [r["blocksize"] for r in int8["records"]] == [[4, 1], [1, 4]]
    for r in int8["records"]:
        assert set(r["contenders"]) == {"blocksparse", "numpy_f32"}
        assert r["contenders"]["numpy_f32"]["kind"] == "float"
        assert r["dtype"] == "u8s8s32" and r["M"] == r["K"] == 32
        if "avx2" in blocksparse.available_isas():
            assert r["ceiling_fraction"] > 0
    if "avx512_vnni" in blocksparse.available_isas():
        assert int8["ceiling"]["vnni_macs_per_core"] > 1e9
        assert {"dpbusd_zmm", "dpbusd_ymm_evex"} <= set(int8["ceiling"]["probes"])
        assert int8["ceiling"]["int8_probe"] in ceiling.VNNI_PROBES
    elif "avx2" in blocksparse.available_isas():
        assert int8["ceiling"]["int8_probe"] in ceiling.AVX2_INT8_PROBES
        assert int8["ceiling"]["int8_macs_per_core"] > 1e9
    # float: both forms, both peers, paired ratios against each
    assert {r["form"] for r in flt["records"]} == {"W@X", "x@W.T"}
    for r in flt["records"]:
        assert set(r["contenders"]) == {"blocksparse", "numpy_f32", "scipy_bsr_f32"}
        assert r["ratio_vs_scipy"] > 0 and r["speedup"] > 0
        assert r["speedup"] == pytest.approx(float(np.median(r["speedup_rounds"])))
        assert len(r["speedup_rounds"]) == 3  # quick: 3 rounds
    # the table: every contender's min / median and the quiet-machine note
    assert "blocksparse min/med" in res.stdout and "numpy_f32 min/med" in res.stdout
    assert res.stdout.count("quiet machine? ") == 2
    assert (out_dir / "int8-table.txt").is_file() and (out_dir / "float-table.txt").is_file()
    if _has("matplotlib"):
        assert (out_dir / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    # docs/render_results.py reads the new JSON
    spec = importlib.util.spec_from_file_location("render_results",
                                                  ROOT / "docs" / "render_results.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "run.json").write_text((out_dir / "bench.json").read_text())
    rst = tmp_path / "gen" / "results.rst"
    assert rr.render(res_dir, rst, tmp_path / "none.png") == 1
    text = rst.read_text()
    assert "blocksparse min / median" in text and "quiet machine?" in text
    if _has("matplotlib"):
        assert (rst.parent / "run.png").read_bytes()[:4] == b"\x89PNG"  # drawn from the JSON


def test_quick_bert_suite_with_contention(tmp_path):
    res = _cli(["bench", "--quick", "--suite", "bert", "--models", "bert-tiny",
                "--threads", "1", "--peers", "none", "--contention", "0,1",
                "--out-dir", "o", "--plain"], tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "o" / "bench.json").read_text())
    _check_schema(data, ["bert"])
    (rec,) = data["suites"][0]["records"]
    assert rec["model"] == "BERT-Tiny" and rec["batch"] == 1 and rec["seq"] == 128
    assert list(rec["contenders"]) == ["blocksparse"] and rec["speedup"] is None
    assert rec["contenders"]["blocksparse"]["cosine_to_fp32"] > 0.99
    assert rec["linear_macs"] < rec["linear_macs_dense"]  # 90 % of the blocks are gone
    slow = rec["contention"]["1"]["blocksparse"]
    assert slow["slowdown"] == pytest.approx(slow["median_s"] / rec["time_s"])
    assert "Slowdown with busy-looping processes" in (tmp_path / "o" / "bert-table.txt"
                                                      ).read_text()
    if _has("matplotlib"):
        assert (tmp_path / "o" / "speedup.png").is_file()  # ceiling fractions + contention


def test_bench_option_errors(tmp_path):
    res = _cli(["bench", "--peers", "magic", "--out-dir", "o"], tmp_path)
    assert res.returncode == 2 and "--peers: unknown magic" in res.stderr
    res = _cli(["bench", "--models", "gpt", "--out-dir", "o"], tmp_path)
    assert res.returncode == 2 and "--models: unknown gpt" in res.stderr
    res = _cli(["bench", "--contention", "-1"], tmp_path)
    assert res.returncode == 2 and "busy process counts >= 0" in res.stderr


# ---- peers ---------------------------------------------------------------------------

def test_peers_missing_are_reported(monkeypatch):
    from blocksparse.bench import peers
    for name in ("torch", "onnx", "onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    fns, errors, info = peers.dense_peers(16, 16, 8, 1)
    assert list(fns) == ["numpy_f32"]
    assert set(errors) == set(peers.INT8_PEERS)
    assert all("not installed" in why for why in errors.values())
    assert info["numpy_f32"]["kind"] == "float"
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    _, _, info = peers.dense_peers(16, 16, 8, 1, wanted=("numpy_f32",))
    assert info["numpy_f32"]["unfair"] is True  # its BLAS threads cannot be limited


def test_bert_peers_missing_are_reported(monkeypatch):
    from blocksparse.bench import bert, bert_peers
    from blocksparse.nn import BertModel
    monkeypatch.setitem(sys.modules, "torch", None)
    model = BertModel.from_config(bert.bert_config("BERT-Tiny"), sparsity=0.5)
    p = bert_peers.BertPeers(model, bert_peers.PEERS)
    assert p.names == []
    assert set(p.errors) == set(bert_peers.PEERS)
    assert all("needs torch and transformers" in why for why in p.errors.values())


def test_best_peer_is_the_fastest_fair_int8_peer():
    c = {"ours": {"kind": "ours", "median_s": 1.0},
         "numpy_f32": {"kind": "float", "median_s": 0.1, "unfair": False},
         "slow_int8": {"kind": "int8", "median_s": 3.0},
         "fast_int8": {"kind": "int8", "median_s": 2.0}}
    assert _common.best_peer(c, ["slow_int8", "fast_int8"]) == "fast_int8"
    assert _common.best_peer(c, []) == "numpy_f32"
    c["numpy_f32"]["unfair"] = True
    assert _common.best_peer({k: c[k] for k in ("ours", "numpy_f32")}, []) is None


needs_peers = pytest.mark.skipif(
    not all(_has(m) for m in ("torch", "onnxruntime", "onnx", "openvino")),
    reason="needs the INT8 peers (pip install torch==2.13.0 onnxruntime onnx openvino)")


@needs_peers
def test_spmm_int8_with_every_peer():
    from argparse import Namespace

    from blocksparse.bench import spmm_int8
    result = spmm_int8.run(Namespace(quick=True, shapes=[(64, 64)], sparsity=[0.75],
                                     blocksizes=[(4, 1)], threads=[1], rounds=2, calls=2))
    (rec,) = result["records"]
    assert set(rec["contenders"]) >= {"blocksparse", "torch_int_mm", "ort_matmulinteger",
                                      "openvino_int8", "numpy_f32"}
    ov = rec["contenders"]["openvino_int8"]
    assert ov["kind"] == "int8" and ov["int8_layers"] == ov["matmul_layers"] == 1
    assert rec["best_peer"] in [n for n, c in rec["contenders"].items() if c["kind"] == "int8"]
    assert rec["speedup"] > 0 and rec["peer_ceiling_fraction"] > 0


@needs_peers
@pytest.mark.skipif(not _has("transformers"), reason="needs transformers")
def test_bert_peers_run_the_same_weights():
    from argparse import Namespace

    from blocksparse.bench import bert
    result = bert.run(Namespace(quick=True, models=["BERT-Tiny"], threads=[1],
                                peers=["ort_int8_static", "openvino_int8"]))
    (rec,) = result["records"]
    assert set(rec["contenders"]) == {"blocksparse", "ort_int8_static", "openvino_int8"}
    assert result["peer_info"]["BERT-Tiny/openvino_int8"]["int8_layers"] >= 12  # 6 per layer
    assert rec["contenders"]["openvino_int8"]["kind"] == "int8"
    for c in rec["contenders"].values():  # the same function, INT8 noise aside
        assert c["cosine_to_fp32"] > 0.9
    assert rec["best_peer"] in ("ort_int8_static", "openvino_int8")


# ---- ceilings ------------------------------------------------------------------------

def test_ceiling_probes():
    from blocksparse.bench import _probes
    assert set(_probes.KINDS) >= set(ceiling.PROBES)
    with pytest.raises(ValueError, match="probe must be one of"):
        _probes.run("nope", 1)
    with pytest.raises(ValueError, match="64-byte aligned"):
        _probes.run("read", 1, np.zeros(100, np.uint8))
    buf = ceiling._aligned(4096)
    work, seconds = _probes.run("read", 3, buf)
    assert work == 3 * 4096 and seconds > 0
    names = ceiling.available()
    if "avx512_vnni" in blocksparse.available_isas():
        assert {"dpbusd_zmm", "dpbusd_ymm_evex", "fma_zmm"} <= set(names)
        work, _ = _probes.run("dpbusd_zmm", 10)
        assert work == 10 * 24 * 64  # 24 chains x 64 multiply-adds per vpdpbusd
        work, _ = _probes.run("dpbusd_ymm_evex", 10)
        assert work == 10 * 24 * 32
    if "avx_vnni" in blocksparse.available_isas():
        assert "dpbusd_ymm_vex" in names
    else:
        assert "dpbusd_ymm_vex" not in names


def test_ceiling_measure_and_merge():
    c = ceiling.measure([1], quick=True)
    assert c["built"] and c["read_bytes_per_s"][1] > 1e8 and c["copy_bytes_per_s"] > 1e8
    for p in c["probes"].values():
        assert p["per_core"] >= p["by_threads"][1] > 0
    if c["vnni_macs_per_core"]:
        assert c["vnni_probe"] in ceiling.VNNI_PROBES
        assert c["int8_macs_per_core"] == c["vnni_macs_per_core"]
    if "avx2" in blocksparse.available_isas():
        assert set(ceiling.AVX2_INT8_PROBES) <= set(c["probes"])
        assert ceiling.int8_ceiling(c, 2) == 2 * c["int8_macs_per_core"] > 0
    # measurements written before the AVX2 probes carry only the VNNI rate
    assert ceiling.int8_ceiling({"vnni_macs_per_core": 5.0}, 2) == 10.0
    assert ceiling.int8_ceiling({}, 2) is None
    low = json.loads(json.dumps(c))
    low["probes"] = {k: dict(v, per_core=1.0, by_threads={1: 1.0})
                     for k, v in c["probes"].items()}
    low["read_bytes_per_s"] = {1: 1.0}
    merged = ceiling.merge(low, c)
    assert merged["vnni_macs_per_core"] == c["vnni_macs_per_core"]
    assert merged["int8_macs_per_core"] == c["int8_macs_per_core"]
    assert all(merged["probes"][k]["per_core"] == c["probes"][k]["per_core"] for k in c["probes"])
    assert "ceilings" not in ceiling.describe(c)  # one line per probe, no error text
    assert ceiling.scaling_note({"probes": {"x": {"per_core": 10.0,
                                                  "by_threads": {1: 10.0, 2: 11.0}}}})


# ---- timing and the quiet-machine verdict ----------------------------------------------

def test_interleave_rotates_and_pairs():
    order = []
    fns = {n: (lambda n=n: order.append(n)) for n in ("a", "b", "c")}
    timed = _common.interleave(fns, rounds=3, calls={"a": 2, "b": 1}, warmup=1, settle=0)
    assert [len(timed[n]["times"]) for n in "abc"] == [6, 3, 3]
    assert [len(timed[n]["rounds"]) for n in "abc"] == [3, 3, 3]
    # warmup a b c, then rounds starting at a, b, c (one untimed call each time)
    body = order[3:]
    firsts = [body[0], body[7], body[14]]
    assert firsts == ["a", "b", "c"]
    ours = {"rounds": [1.0, 1.0, 10.0]}
    peer = {"rounds": [2.0, 2.0, 2.0]}
    assert _common.paired_ratio(ours, peer) == 2.0  # the burst in round 3 is dropped


def test_interleave_sets_and_restores_threads():
    before = blocksparse.get_num_threads()
    seen = {}
    fns = {"one": lambda: seen.setdefault("one", blocksparse.get_num_threads()),
           "two": lambda: seen.setdefault("two", blocksparse.get_num_threads())}
    _common.interleave(fns, 1, 1, threads={"one": 1, "two": 2}, warmup=0, settle=0)
    assert seen == {"one": 1, "two": 2}
    assert blocksparse.get_num_threads() == before


def test_quiet_verdict():
    quiet_load = {"cpus": 2, "other_cpu_fraction": 0.02, "steal_fraction": 0.0,
                  "loadavg_before": [0.1, 0.1, 0.1], "loadavg_after": [0.9, 0.3, 0.1]}
    recs = [{"contenders": {"x": {"spread": 1.05}, "y": {"spread": 1.1}}}]
    v = _common.quiet_verdict(quiet_load, recs)
    assert v["quiet"] and v["note"].startswith("quiet machine? yes")
    busy = dict(quiet_load, other_cpu_fraction=0.6)
    v = _common.quiet_verdict(busy, recs)
    assert not v["quiet"] and "others used 60% of 2 CPUs [busy]" in v["note"]
    noisy = [{"contenders": {"x": {"spread": 2.0}, "y": {"spread": 1.0}}}]
    v = _common.quiet_verdict(quiet_load, noisy)
    assert not v["quiet"] and "1 of 2 timings" in v["note"]
    v = _common.quiet_verdict(dict(quiet_load, loadavg_before=[1.5, 1, 1]), recs)
    assert not v["quiet"] and "load average 1.50 before" in v["note"]


def test_load_monitor():
    m = _common.LoadMonitor().start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.2:  # our own CPU time is not "others"
        sum(range(1000))
    out = m.stop()
    assert out["wall_s"] > 0 and out["cpus"] == os.cpu_count()
    if Path("/proc/stat").is_file():
        assert 0 <= out["other_cpu_fraction"] <= 1.0


# ---- the figure ----------------------------------------------------------------------

def _suites():
    int8 = [{"M": m, "K": 64, "N": n, "sparsity": s, "blocksize": list(b), "threads": t,
             "speedup": s * m / 64 + t, "best_peer": "ort_matmulinteger"}
            for m in (64, 128) for n in (128, 384) for s in (0.7, 0.9)
            for b in ((4, 1), (1, 4)) for t in (1, 2)]
    bert = [{"model": mo, "path": "latency", "sparsity": s, "threads": t, "speedup": 2.0,
             "best_peer": "openvino_int8",
             "contenders": {"blocksparse": {}, "ort_int8": {}},
             "contention": {"1": {"blocksparse": {"slowdown": 1.5}, "ort_int8": {"slowdown": 2.5}},
                            "2": {"blocksparse": {"slowdown": 2.0}, "ort_int8": {"slowdown": 3.0}}}}
            for mo in ("BERT-Mini", "BERT-Base") for s in (0.8, 0.9) for t in (1, 2)]
    return [{"suite": "int8", "name": "INT8", "records": int8},
            {"suite": "bert", "name": "BERT", "records": bert}]


def test_figure_panels_per_thread_count():
    rows = plot.figure_rows(_suites())
    assert [kind for _, kind, _, _ in rows] == ["speedup", "speedup", "contention"]
    title, _, panels, peers = rows[0]
    assert sorted(panels) == [1, 2] and "geomean of 2 weight shapes" in title
    assert sorted(panels[1]) == ["1x4 N=128", "1x4 N=384", "4x1 N=128", "4x1 N=384"]
    # one point per sparsity: geomean over the shapes, band from the lowest to the highest
    (pt,) = [p for p in panels[1]["4x1 N=128"] if p[0] == 0.9]
    assert pt[2] == pytest.approx(0.9 + 1) and pt[3] == pytest.approx(1.8 + 1)
    assert pt[1] == pytest.approx(np.sqrt(1.9 * 2.8))
    assert peers[1] == {"ort_matmulinteger"}
    assert "ort_matmulinteger" in plot._peer_label(peers[1])
    cont = rows[2][2]
    assert [lv for lv, _ in cont[2]["ort_int8"]] == [0, 1, 2]
    assert [v for _, v in cont[2]["ort_int8"]] == pytest.approx([1.0, 2.5, 3.0])


def test_figure_styles_are_distinct(tmp_path):
    style = plot._Styles()
    pairs = [style(f"series {i}")[:2] for i in range(len(plot.COLORS))]
    assert len(set(c for c, _ in pairs)) == len(pairs)  # no colour reused
    assert len(set(m for _, m in pairs)) == len(pairs)  # nor a marker
    assert style("series 0") == style("series 0")
    if _has("matplotlib"):
        msg = plot.plot_suites(_suites(), tmp_path / "f.png")
        assert msg.startswith("wrote") and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert "no plot" in plot.plot_suites([{"name": "x", "records": [{"case": "a"}]}],
                                         tmp_path / "g.png")
