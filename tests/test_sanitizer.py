"""Memory safety: the suite and a fuzz run under AddressSanitizer + UBSan (issue 6, item 2).

Runs ``scripts/sanitize_run.py``: a copy of the tree built with
``BLOCKSPARSE_SANITIZE=address,undefined``, a subset of the suite (the files
that reach the C kernels) and ``tests/test_fuzz.py`` with many examples, any
sanitizer report failing the run.  The number of tests and fuzz examples and
the times appear in pytest's terminal summary ("blocksparse safety summary").

Time: about 40 s to build plus a few minutes of tests on 2 cores; bounded by
``BLOCKSPARSE_SANITIZE_TIMEOUT`` (seconds, default 1500).  Examples per fuzz
test: ``BLOCKSPARSE_SANITIZE_FUZZ_EXAMPLES`` (default 1000).  Skipped, with
the reason, where gcc or its libasan is missing.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "sanitize_run.py")
TIMEOUT = float(os.environ.get("BLOCKSPARSE_SANITIZE_TIMEOUT", "1500"))
FUZZ_EXAMPLES = int(os.environ.get("BLOCKSPARSE_SANITIZE_FUZZ_EXAMPLES", "1000"))


def _load_script():
    spec = importlib.util.spec_from_file_location("sanitize_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.thread_unsafe
def test_suite_and_fuzz_under_sanitizers(safety_summary):
    if os.environ.get("BLOCKSPARSE_SANITIZER_RUN"):
        pytest.skip("already inside the sanitizer run")
    libasan, why = _load_script().find_toolchain()
    if libasan is None:
        pytest.skip(f"no sanitizer toolchain: {why}")
    summary = safety_summary
    try:
        res = subprocess.run([sys.executable, SCRIPT, "--fuzz-examples", str(FUZZ_EXAMPLES),
                              "--timeout", str(TIMEOUT)], cwd=ROOT, capture_output=True,
                             text=True, timeout=TIMEOUT + 120)
    except subprocess.TimeoutExpired:
        summary["sanitizer"] = f"sanitizer run: TIMED OUT after {TIMEOUT + 120:.0f} s"
        raise
    out = res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("SANITIZE_RESULT ")]
    assert lines, f"no result line from {SCRIPT}:\n{out[-5000:]}"
    result = json.loads(lines[-1].split(" ", 1)[1])
    if res.returncode == 77:
        pytest.skip(f"no sanitizer toolchain: {result.get('skipped')}")
    suite, fuzz = result.get("suite", {}), result.get("fuzz", {})
    summary["sanitizer"] = (
        f"sanitizer run (ASan+UBSan, {'clean' if result.get('ok') else 'FAILED'}): "
        f"build {result.get('build_s')} s; suite: {suite.get('summary')}; "
        f"fuzz: {result.get('fuzz_examples')} examples, {fuzz.get('summary')}; "
        f"sanitizer reports: {result.get('sanitizer_reports')}; "
        f"total {result.get('total_s')} s")
    assert res.returncode == 0 and result["ok"], \
        f"sanitizer run failed (exit {res.returncode}):\n{out[-20000:]}"
    assert result["sanitizer_reports"] == 0
    assert suite["passed"] >= 500, suite
    assert result["fuzz_examples"] >= 10 * FUZZ_EXAMPLES * 0.9, result["fuzz_line"]
