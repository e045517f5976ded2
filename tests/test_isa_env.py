"""ISA coverage through the environment (issue 6, item 4).

The main test run forces every ISA variant of this machine through the
``isa`` fixture.  Here the suite runs again in subprocesses with
``BLOCKSPARSE_ISA=scalar``, ``BLOCKSPARSE_ISA=avx2`` and
``BLOCKSPARSE_MAX_ISA=avx2`` set, so every test that does *not* pick an ISA
itself (quantization, Linear layers, conversions, I/O, pruning) also runs on
the fallback paths a CPU without AVX-512 takes.  Tests using the ``isa``
fixture are deselected there: they already ran on every variant in the main
run.  Each subprocess first checks that :func:`blocksparse.get_isa` reports
the forced variant.

Also checked, as docs/dispatch.rst documents: a misspelt name fails at
the first kernel call with ValueError (import itself works, issue 11); a
variant the CPU lacks fails at the first kernel call with RuntimeError naming
it (simulated by patching ``blocksparse._kernels.isa_detected``), while a cap
falls back quietly; and ``python -m blocksparse info`` says which variant is
in use.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import blocksparse
from blocksparse import _config, _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = ["tests/test_int8.py", "tests/test_quant.py", "tests/test_products_float.py",
         "tests/test_matrix.py", "tests/test_io.py", "tests/test_prune.py",
         "tests/test_outputs_written.py"]
TIMEOUT = 900  # seconds per subprocess run of the suite
ISA_ENV = ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA")
RUNS = {}  # variant -> summary, for the terminal summary

# Runs pytest with a small plugin: check the ISA first, deselect the tests that force
# every ISA through the `isa` fixture (they ran in the main session).
RUNNER = """
import os, sys
import pytest

class ForcedIsa:
    def pytest_sessionstart(self, session):
        import blocksparse
        got, want = blocksparse.get_isa(), os.environ["BLOCKSPARSE_EXPECT_ISA"]
        if got != want:
            raise pytest.UsageError(f"get_isa() is {got!r}, expected {want!r}")
        print(f"blocksparse.get_isa() = {got}")

    def pytest_collection_modifyitems(self, config, items):
        drop = [i for i in items if "isa" in getattr(i, "fixturenames", ())]
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = [i for i in items if i not in drop]

sys.exit(pytest.main(sys.argv[1:], plugins=[ForcedIsa()]))
"""


@pytest.fixture(autouse=True, scope="module")
def _report_runs(safety_summary):
    safety_summary["isa-env"] = lambda: "isa env runs: " + (
        "; ".join(f"{k}: {v}" for k, v in RUNS.items()) or "none ran")
    yield


# ---- helpers ----------------------------------------------------------------------------

def _env(**settings):
    env = {k: v for k, v in os.environ.items() if k not in ISA_ENV}
    env.update(settings)
    return env


def _run(args, timeout=120, **settings):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**settings),
                          capture_output=True, text=True, timeout=timeout)


def _require(isa):
    if isa not in blocksparse.available_isas():
        pytest.skip(f"this CPU or build has no {isa} variant "
                    f"(available: {', '.join(blocksparse.available_isas())})")


VARIANTS = [  # (environment, the variant get_isa() must report)
    ({"BLOCKSPARSE_ISA": "scalar"}, "scalar"),
    ({"BLOCKSPARSE_ISA": "avx2"}, "avx2"),
    ({"BLOCKSPARSE_MAX_ISA": "avx2"}, "avx2"),
]
IDS = ["ISA=scalar", "ISA=avx2", "MAX_ISA=avx2"]


# ---- the suite under each variant -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("settings,expect", VARIANTS, ids=IDS)
def test_suite_under_forced_isa(settings, expect):
    _require(expect)
    res = _run(["-c", RUNNER, "-q", "-p", "no:cacheprovider", "-x", *SUITE],
               timeout=TIMEOUT, BLOCKSPARSE_EXPECT_ISA=expect, **settings)
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-30:])
    assert res.returncode == 0, f"suite failed under {settings}:\n{tail}"
    assert f"blocksparse.get_isa() = {expect}" in res.stdout, tail
    summary = re.findall(r"^=*\s*(\d+ passed.*?)\s*=*$", res.stdout, re.M)
    assert summary, tail
    passed = int(summary[-1].split()[0])
    assert passed >= 50, f"only {passed} tests ran under {settings}"
    RUNS[",".join(f"{k}={v}" for k, v in settings.items())] = summary[-1]


# ---- info under each variant --------------------------------------------------------------

@pytest.mark.parametrize("settings,expect", VARIANTS + [
    ({"BLOCKSPARSE_ISA": "avx_vnni"}, "avx_vnni"),
    ({"BLOCKSPARSE_ISA": "avx512_vnni"}, "avx512_vnni"),
    ({"BLOCKSPARSE_ISA": "ref"}, "scalar"),  # documented alias
], ids=IDS + ["ISA=avx_vnni", "ISA=avx512_vnni", "ISA=ref"])
def test_info_reports_the_forced_isa(settings, expect):
    _require(expect)
    res = _run(["-m", "blocksparse", "info", "--json"], **settings)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["isa_in_use"] == expect
    if "BLOCKSPARSE_ISA" in settings:
        assert info["isa_forced"] == expect and info["isa_cap"] is None
    else:
        assert info["isa_cap"] == expect and info["isa_forced"] is None
    assert info["environment"] == settings
    text = _run(["-m", "blocksparse", "info"], **settings)
    assert text.returncode == 0, text.stderr
    line = [ln for ln in text.stdout.splitlines() if ln.startswith("isa in use")]
    assert len(line) == 1 and expect in line[0], text.stdout
    assert ("forced to" if "BLOCKSPARSE_ISA" in settings else "capped at") in line[0]
    # the AMX line says why AMX is not used, whatever the CPU
    assert re.search(r"^amx\s+: not built", text.stdout, re.M), text.stdout


# ---- misspelt names -------------------------------------------------------------------------

@pytest.mark.parametrize("var", ISA_ENV)
@pytest.mark.parametrize("value", ["avx1024", "AVX-512", "sse2"])
def test_unknown_isa_name_fails_at_import(var, value):
    res = _run(["-c", "import blocksparse; blocksparse.get_isa()"], **{var: value})
    assert res.returncode != 0
    assert f"ValueError: {var}={value!r} is not an ISA variant; expected one of scalar, " \
           f"avx2, avx_vnni, avx512_vnni" in res.stderr, res.stderr
    assert "Segmentation" not in res.stderr and "Traceback" in res.stderr
    assert _run(["-c", "import blocksparse"], **{var: value}).returncode == 0


def test_isa_names_are_case_and_space_insensitive():
    res = _run(["-c", "import blocksparse; print(blocksparse.get_isa())"],
               BLOCKSPARSE_ISA="  Scalar ")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "scalar"


# ---- a forced ISA the CPU lacks (simulated in-process) ------------------------------------

@pytest.fixture
def cpu_without(monkeypatch):
    """Return a function that makes `isa_detected` deny one variant, restoring the state."""
    for attr in ("forced", "forced_from", "cap", "num_threads", "verbose"):
        monkeypatch.setattr(_config._State, attr, getattr(_config._State, attr))
    for var in ISA_ENV:
        monkeypatch.delenv(var, raising=False)
    real = _kernels.isa_detected

    def deny(name):
        _require(name)
        lacking = _config.ISA_NAMES.index(name)
        monkeypatch.setattr(_kernels, "isa_detected", lambda i: i != lacking and real(i))
        return lacking
    return deny


def _product():
    W = blocksparse.BlockSparseMatrix(np.eye(8, dtype=np.float32))
    return W @ np.ones((8, 3), np.float32)


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("name", ["avx2", "avx512_vnni"])
def test_forced_isa_the_cpu_lacks_fails_at_first_use(cpu_without, monkeypatch, name):
    monkeypatch.setenv("BLOCKSPARSE_ISA", name)
    _config._read_environment()  # as at import: accepted, the name is valid
    cpu_without(name)
    msg = rf"BLOCKSPARSE_ISA='{name}': the {name} variant is not supported by this CPU; " \
          r"available: scalar"
    with pytest.raises(RuntimeError, match=msg):
        blocksparse.get_isa()
    with pytest.raises(RuntimeError, match=msg):
        _product()
    with pytest.raises(RuntimeError, match=msg):
        blocksparse.linear(np.ones((2, 8), np.float32),
                           blocksparse.quantize(np.eye(8, dtype=np.float32)))
    assert name not in blocksparse.available_isas()
    cfg = _config.config()
    assert cfg["isa_in_use"].startswith("error: ") and name in cfg["isa_in_use"]
    assert cfg["isa_forced"] == name
    with pytest.raises(RuntimeError, match=rf"ISA variant '{name}' is not available here"):
        blocksparse.set_isa(name)


@pytest.mark.thread_unsafe
def test_cap_falls_back_quietly_when_the_cpu_lacks_it(cpu_without, monkeypatch):
    monkeypatch.setenv("BLOCKSPARSE_MAX_ISA", "avx2")
    _config._read_environment()
    cpu_without("avx2")
    assert blocksparse.get_isa() == "scalar"  # the best usable variant below the cap
    np.testing.assert_array_equal(_product(), np.ones((8, 3), np.float32))
    assert _config.config()["isa_in_use"] == "scalar"
