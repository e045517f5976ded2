"""docs/render_serve.py: the serving results of the deployment page."""
import importlib.util
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _module():
    import sys
    sys.path.insert(0, str(DOCS))  # it imports render_results' table helper
    try:
        spec = importlib.util.spec_from_file_location("render_serve", DOCS / "render_serve.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(DOCS))


def _result(rps):
    levels = [{"concurrency": c, "rps": rps * c, "inputs_per_s": rps * c, "p50_ms": 2.0 * c,
               "p90_ms": 4.0 * c, "p99_ms": 6.0 * c, "errors": 0} for c in (1, 4, 16)]
    from blocksparse.serve.loadtest import summarize
    result = {"targets": {"blocksparse": {"levels": levels},
                          "onnxruntime": {"levels": [dict(lv, rps=lv["rps"] / 2,
                                                          inputs_per_s=lv["rps"] / 2)
                                                     for lv in levels]}}}
    summarize(result, [10, 50])
    return result


def test_without_results_says_how_to_record(tmp_path):
    rs = _module()
    out = tmp_path / "gen" / "serve.rst"
    assert rs.render(tmp_path / "none", out) == 0
    assert "benchmarks/bench_serve.py" in out.read_text()


def test_tables_and_plot(tmp_path):
    rs = _module()
    res = tmp_path / "serve"
    res.mkdir()
    payload = {"machine": {"cpu": "Test CPU", "cores": 2},
               "settings": {"threads": 2, "duration": 10, "words": [8, 32]},
               "models": {"minilm": _result(100.0)}}
    (res / "box-2026.json").write_text(json.dumps(payload))
    (res / "box-2026.png").write_bytes(b"\x89PNG fake")
    (res / "broken.json").write_text("{")
    out = tmp_path / "gen" / "serve.rst"
    assert rs.render(res, out) == 1
    text = out.read_text()
    assert "Test CPU" in text and ".. list-table:: minilm" in text
    # p90 <= 10 ms: c=1 (4 ms) and c=4 (16 ms > 10) -> the c=1 level, 100 req/s
    assert "100 req/s (c=1, p90 4.0 ms)" in text and "50 req/s (c=1, p90 4.0 ms)" in text
    assert "400 req/s (c=4, p90 16.0 ms)" in text  # within 50 ms
    assert "broken.json" in text and "_generated/box-2026.png" in text
    assert (out.parent / "box-2026.png").is_file()


def test_fidelity_column_when_recorded(tmp_path):
    rs = _module()
    res = tmp_path / "serve"
    res.mkdir()
    result = _result(100.0)
    result["fidelity"] = {"blocksparse": {"min": 0.99907, "mean": 0.99983, "texts": 208,
                                          "worst": "What?"}}
    payload = {"machine": {"cpu": "Test CPU", "cores": 2}, "settings": {},
               "models": {"minilm": result}}
    (res / "box.json").write_text(json.dumps(payload))
    out = tmp_path / "gen" / "serve.rst"
    assert rs.render(res, out) == 1
    text = out.read_text()
    assert "cosine to float32, min / mean" in text
    assert "0.9991 / 0.9998" in text
    # a server without a fidelity entry gets a dash, not another server's figure
    assert text.count("0.9991 / 0.9998") == 1
