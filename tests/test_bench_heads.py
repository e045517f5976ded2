"""Smoke run of benchmarks/bench_heads.py (BERT-Mini, 3 rounds of 2 calls): what it prints.

The timings themselves are for a quiet machine; here only the report's
shape: every round's head / encoder ratio, min and median per contender,
the paired ratio, the quiet-machine note, and the JSON.
"""
import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_heads.py")


@pytest.fixture(scope="module")
def bench_heads():
    if not os.path.isfile(SCRIPT):
        pytest.skip("benchmarks/ is not in this checkout")
    spec = importlib.util.spec_from_file_location("bench_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_rounds_min_median_and_paired_ratio(bench_heads, tmp_path, capsys):
    out = tmp_path / "heads.json"
    assert bench_heads.main(["--quick", "--threads", "1", "--heads", "seq,qa",
                             "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seq / encoder" in text and "qa / encoder" in text
    assert "min ms" in text and "median ms" in text and "paired ratio" in text
    assert "quiet machine?" in text and "within 5 % of the encoder" in text
    result = json.loads(out.read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    for row in result["rounds"]:
        assert row["seq_ratio"] == pytest.approx(row["seq_ms"] / row["encoder_ms"])
    records = {r["contender"]: r for r in result["records"]}
    assert set(records) == {"encoder", "seq", "qa"}
    for r in records.values():
        assert 0 < r["min_ms"] <= r["median_ms"] and r["calls"] == 6
    seq = records["seq"]
    ratios = sorted(row["seq_ratio"] for row in result["rounds"])
    assert seq["ratio_to_encoder"] == pytest.approx(ratios[1])   # median of 3 rounds
    assert seq["round_ratio_min"] == pytest.approx(ratios[0])
    assert result["met"] == (seq["ratio_to_encoder"] <= 1.05)


def test_bad_heads_option(bench_heads):
    with pytest.raises(SystemExit):
        bench_heads.main(["--heads", "seq,mlm"])
