"""Run-time configuration: ISA selection, thread count, show_config, env variables."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import blocksparse
from blocksparse import _config

ISAS = blocksparse.available_isas()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def automatic_isa(monkeypatch):
    """Automatic ISA choice for one test, whatever BLOCKSPARSE_ISA/_MAX_ISA say;
    the previous state comes back afterwards."""
    monkeypatch.setattr(_config._State, "forced", None)
    monkeypatch.setattr(_config._State, "forced_from", "")
    monkeypatch.setattr(_config._State, "cap", None)


def test_available_isas(automatic_isa):
    assert ISAS[0] == "scalar"
    assert blocksparse.get_isa() == ISAS[-1]  # the best one by default
    assert set(ISAS) <= {"scalar", "avx2", "avx_vnni", "avx512_vnni"}
    assert blocksparse.get_isa() in ISAS
    cfg = _config.config()
    assert set(ISAS) == set(cfg["isa_built"]) & set(cfg["isa_detected"])


@pytest.mark.parametrize("name", ISAS)
def test_isa_context_forces_and_restores(name):
    outer = blocksparse.get_isa()
    with blocksparse.isa_context(name):
        assert blocksparse.get_isa() == name
        with blocksparse.isa_context("scalar"):
            assert blocksparse.get_isa() == "scalar"
        assert blocksparse.get_isa() == name
    assert blocksparse.get_isa() == outer


def test_isa_context_restores_after_exception():
    outer = blocksparse.get_isa()
    with pytest.raises(KeyError):
        with blocksparse.isa_context("scalar"):
            raise KeyError("boom")
    assert blocksparse.get_isa() == outer


@pytest.mark.parametrize("alias,name", [("ref", "scalar"), (" SCALAR ", "scalar"),
                                        ("avx512", "avx512_vnni"), ("avxvnni", "avx_vnni"),
                                        ("avx512vnni", "avx512_vnni")])
def test_isa_aliases(alias, name):
    if name not in ISAS:
        pytest.skip(f"{name} not available here")
    with blocksparse.isa_context(alias):
        assert blocksparse.get_isa() == name


@pytest.mark.thread_unsafe
def test_set_isa_and_back_to_automatic(automatic_isa):
    best = blocksparse.get_isa()
    assert best == ISAS[-1]
    try:
        blocksparse.set_isa("scalar")
        assert blocksparse.get_isa() == "scalar"
        assert _config.config()["isa_forced"] == "scalar"
    finally:
        blocksparse.set_isa(None)
    assert blocksparse.get_isa() == best
    assert _config.config()["isa_forced"] is None


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("cap", ISAS)
def test_set_max_isa_caps_choice(automatic_isa, cap):
    try:
        blocksparse.set_max_isa(cap)
        assert blocksparse.get_isa() == cap  # the best one at or below the cap
        assert _config.config()["isa_cap"] == cap
    finally:
        blocksparse.set_max_isa(None)
    assert blocksparse.get_isa() == ISAS[-1]


@pytest.mark.thread_unsafe
def test_num_threads():
    saved = blocksparse.get_num_threads()
    try:
        blocksparse.set_num_threads(3)
        assert blocksparse.get_num_threads() == 3
        blocksparse.set_num_threads(np.int64(1))
        assert blocksparse.get_num_threads() == 1
        blocksparse.set_num_threads(None)
        assert blocksparse.get_num_threads() >= 1
    finally:
        blocksparse.set_num_threads(saved)


def test_show_config_and_config():
    buf = io.StringIO()
    blocksparse.show_config(file=buf)
    text = buf.getvalue()
    for key in ("cpu", "isa_built", "isa_detected", "isa_in_use", "num_threads", "openmp"):
        assert key in text
    assert blocksparse.get_isa() in text
    cfg = _config.config()
    assert cfg["isa_in_use"] == blocksparse.get_isa()
    assert cfg["num_threads"] == blocksparse.get_num_threads()
    assert isinstance(cfg["openmp"], bool)


def test_show_config_defaults_to_stdout(capsys):
    blocksparse.show_config()
    assert "isa_in_use" in capsys.readouterr().out


@pytest.mark.thread_unsafe
def test_verbose_logs_int8_kernel(monkeypatch, capsys):
    monkeypatch.setattr(_config._State, "verbose", True)
    W = blocksparse.BlockSparseMatrix(np.ones((4, 8), np.int8), blocksize=(4, 1))
    with blocksparse.isa_context("scalar"):
        W @ np.ones((8, 2), np.uint8)
    err = capsys.readouterr().err
    assert "bsk_qspmm_u8s8s32_scalar [scalar] M=4 K=8 N=2" in err


def run_python(code, **env):
    full = dict(os.environ, **env)
    for key in ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA", "BLOCKSPARSE_NUM_THREADS"):
        if key not in env:
            full.pop(key, None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_environment_variables():
    """BLOCKSPARSE_ISA / _MAX_ISA / _NUM_THREADS are read at import (one process)."""
    code = ("import blocksparse as b, numpy as np; "
            "W = b.BlockSparseMatrix(np.eye(4, dtype=np.float32), blocksize=(1, 1)); "
            "W @ np.ones(4, np.float32); "
            "print(b.get_isa(), b.get_num_threads())")
    r = run_python(code, BLOCKSPARSE_ISA="scalar", BLOCKSPARSE_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "3"]
    if "avx2" in ISAS:
        r = run_python(code, BLOCKSPARSE_MAX_ISA="avx2")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == "avx2"


@pytest.mark.parametrize("env,match", [
    ({"BLOCKSPARSE_ISA": "sse9"}, "BLOCKSPARSE_ISA='sse9' is not an ISA variant"),
    ({"BLOCKSPARSE_MAX_ISA": "amx512"}, "BLOCKSPARSE_MAX_ISA='amx512' is not an ISA variant"),
    ({"BLOCKSPARSE_NUM_THREADS": "0"}, "BLOCKSPARSE_NUM_THREADS='0' must be a number of threads"),
    ({"BLOCKSPARSE_NUM_THREADS": "two"}, "BLOCKSPARSE_NUM_THREADS='two' must be a number of"),
])
def test_bad_environment_variables(env, match):
    """Import never fails (issue 11): a misspelt ISA fails at the first kernel call with
    ValueError, a bad thread count is ignored with a RuntimeWarning."""
    r = run_python("import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
                   "import numpy as np, blocksparse\n"
                   "blocksparse.quantize_activations(np.ones((2, 2)))", **env)
    assert r.returncode != 0
    err = "ValueError" if "ISA" in next(iter(env)) else "RuntimeWarning"
    assert err in r.stderr and match in r.stderr
    r = run_python("import blocksparse", **env)
    assert r.returncode == 0, r.stderr


def test_pinned_dispatch_holds_the_entry_settings_and_unpins():
    """A model call looks the ISA and threads up once: inside, they answer the entry values
    (settings changed meanwhile apply from the next call); after it, even after an error,
    and for nested pins, the live settings answer again."""
    with blocksparse.isa_context("scalar"):
        with _config._pinned_dispatch():
            with blocksparse.isa_context(blocksparse.available_isas()[-1]):
                assert blocksparse.get_isa() == "scalar"
                with _config._pinned_dispatch():
                    assert blocksparse.get_isa() == "scalar"
        assert _config._PINNED.value is None
        with pytest.raises(KeyError):
            with _config._pinned_dispatch():
                raise KeyError("boom")
        assert _config._PINNED.value is None
        with blocksparse.isa_context(blocksparse.available_isas()[-1]):
            assert blocksparse.get_isa() == blocksparse.available_isas()[-1]
    setting = _config._State.num_threads
    old = blocksparse.get_num_threads()
    try:
        with _config._pinned_dispatch():
            blocksparse.set_num_threads(old + 1)
            assert blocksparse.get_num_threads() == old
        assert blocksparse.get_num_threads() == old + 1
    finally:
        blocksparse.set_num_threads(setting)
