"""The documentation: Sphinx builds with -W, examples run, results render.

The Sphinx build needs sphinx and numpydoc (``pip install -e ".[docs]"``) and
is skipped without them; the doctests of the pages and of the public
docstrings need only the package.
"""
import doctest
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blocksparse

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
pytestmark = pytest.mark.thread_unsafe  # the examples set the thread count and ISA
PAGES = sorted(p.name for p in DOCS.glob("*.rst"))
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _load_render_results():
    spec = importlib.util.spec_from_file_location("render_results", DOCS / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None or
                    importlib.util.find_spec("numpydoc") is None,
                    reason="needs sphinx and numpydoc (pip install -e '.[docs]')")
def test_sphinx_build_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
                           "-b", "html", str(DOCS), str(tmp_path / "html")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    html = tmp_path / "html"
    assert (html / "index.html").is_file()
    assert (html / "generated" / "blocksparse.BlockSparseMatrix.html").is_file()
    assert (html / "_images" / "blocksize.png").is_file()


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page):
    """Every ``>>>`` example on the pages runs and prints what the page says."""
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=FLAGS,
                              verbose=False, report=True, raise_on_error=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"


# Docstring examples known to fail, with the reason; reported to their owners.
# (non-strict xfail: an XPASS once fixed is the cue to remove the entry)
KNOWN_BAD_EXAMPLES = {}


def _public_objects():
    objs = [(f"blocksparse.{name}", getattr(blocksparse, name)) for name in blocksparse.__all__]
    try:
        import blocksparse.nn as nn
        objs += [(f"blocksparse.nn.{n}", getattr(nn, n)) for n in getattr(nn, "__all__", [])]
        import blocksparse.train as train  # importable without torch
        objs += [(f"blocksparse.train.{n}", getattr(train, n)) for n in train.__all__]
    except ImportError:
        pass
    return objs


@pytest.mark.parametrize("name, obj", _public_objects(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_docstring_examples(name, obj, request):
    """The Examples sections of the public docstrings run (as in the API reference)."""
    if name in KNOWN_BAD_EXAMPLES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_BAD_EXAMPLES[name], strict=False))
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    # The defining module's globals, as `python -m doctest` and pytest give them.
    module = inspect.getmodule(obj)
    globs = dict(vars(module)) if module is not None else {}
    globs.setdefault("np", np)
    globs.setdefault("blocksparse", blocksparse)
    for test in finder.find(obj, name, module=module, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring examples failed in {name}"


def test_api_page_lists_every_public_name():
    text = (DOCS / "api.rst").read_text()
    listed = {line.strip() for line in text.splitlines() if line.startswith("   ")}
    missing = [n for n in blocksparse.__all__ if n not in listed]
    assert not missing, f"docs/api.rst does not list {missing}"


def test_committed_figures_exist():
    for name in ("blocksize.png", "strip_kernel.png"):
        assert (DOCS / "_static" / name).read_bytes()[:4] == b"\x89PNG", name


# ---- docs/render_results.py -------------------------------------------------------------

def _bench_payload():
    recs = []
    for shape in ("768x768", "3072x768"):
        for s, sp in ((0.7, 0.8), (0.8, 1.3), (0.9, 2.5)):
            recs.append({"case": f"{shape} {s:.0%}", "shape": shape, "sparsity": s,
                         "time_s": 1e-3, "speedup": sp, "peer": "numpy"})
    return {"tool": "blocksparse bench", "started": "2026-01-01T00:00:00+00:00",
            "machine": {"cpu": "Test CPU", "isa_in_use": "avx512_vnni", "num_threads": 2},
            "suites": [{"suite": "int8", "name": "INT8 SpMM", "machine": {}, "records": recs},
                       {"suite": "bert", "name": "BERT", "machine": {},
                        "records": [{"case": "b1 s128", "time_s": 0.2, "speedup": None}]}]}


def test_render_results_without_results(tmp_path):
    rr = _load_render_results()
    out = tmp_path / "gen" / "results.rst"
    assert rr.render(tmp_path / "none", out, tmp_path / "no.png") == 0
    assert "No results are recorded" in out.read_text()


def test_render_results_tables_and_plot(tmp_path):
    rr = _load_render_results()
    res = tmp_path / "results"
    res.mkdir()
    (res / "testbox-2026.json").write_text(json.dumps(_bench_payload()))
    (res / "testbox-2026.png").write_bytes(b"\x89PNG fake")
    single = {"name": "float suite", "machine": {"cpu": "X"},
              "records": [{"case": "a_b*c", "time_s": 2e-6, "speedup": 0.5}]}
    (res / "single.json").write_text(json.dumps(single))
    (res / "broken.json").write_text("{not json")
    out = tmp_path / "gen" / "results.rst"
    assert rr.render(res, out, tmp_path / "no.png") == 3
    text = out.read_text()
    assert "Test CPU" in text and "INT8 SpMM" in text and "2.50x" in text
    assert "768x768: from 80% sparsity" in text
    assert "broken.json could not be read" in text
    assert "a\\_b\\*c" in text and "2.0 us" in text  # markup escaped
    assert ".. image:: _generated/testbox-2026.png" in text
    assert (out.parent / "testbox-2026.png").is_file()
    # the output is valid reStructuredText
    docutils_core = pytest.importorskip("docutils.core")
    docutils_core.publish_doctree(text.replace(".. image::", ".. comment image::"),
                                  settings_overrides={"halt_level": 2, "report_level": 2})


def test_render_results_falls_back_to_bench_png(tmp_path):
    rr = _load_render_results()
    png = tmp_path / "speedup.png"
    png.write_bytes(b"\x89PNG fake")
    out = tmp_path / "gen" / "results.rst"
    rr.render(tmp_path / "none", out, png)
    assert ".. image:: _generated/bench-speedup.png" in out.read_text()
    assert (out.parent / "bench-speedup.png").is_file()


def test_crossover():
    rr = _load_render_results()
    recs = [{"M": 8, "K": 4, "sparsity": s, "speedup": sp}
            for s, sp in ((0.5, 0.9), (0.7, 1.1), (0.9, 3.0))]
    recs.append({"shape": "16x16", "sparsity": 0.9, "speedup": 0.5})
    assert rr.crossover(recs) == {"8x4": 0.7, "16x16": None}
