"""Process-level faults (issue 11, classes 1, 4 and the environment part of 8).

- fork: a child forked after multi-threaded kernels runs every kernel family
  (it used to hang forever in GNU OpenMP), also through ``multiprocessing``
  with the fork, forkserver and spawn start methods;
- threads: ``isa_context`` is per thread, ``set_isa``/``set_num_threads`` are
  validated process-wide settings;
- the environment: bad ``BLOCKSPARSE_*`` values never break ``import``.

Every case that could hang or crash runs in a subprocess with a time limit.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import blocksparse
from blocksparse import _config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATIONS = {}  # slow subprocess cases -> seconds, for the safety summary
ENV_VARS = ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA", "BLOCKSPARSE_NUM_THREADS")


@pytest.fixture(autouse=True, scope="module")
def _report(safety_summary):
    safety_summary["faults-process"] = lambda: "faults/process subprocess times: " + (
        ", ".join(f"{k} {v:.1f} s" for k, v in sorted(DURATIONS.items())) or "none ran")
    yield


def run_python(code, timeout=60, name=None, **env):
    """Run `code` in a fresh interpreter; a hang is a test failure, not a stuck suite."""
    full = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    full.update(env)
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    if name:
        DURATIONS[name] = time.perf_counter() - t0
    return res


# ---- fork ---------------------------------------------------------------------------------

# Every kernel family, multi-threaded (small products are not kept on one thread).
KERNELS = """
import os, sys, numpy as np, blocksparse as b
from blocksparse import nn
b._kernels.set_min_work_per_thread(0)
getattr(b._kernels, "nn_set_min_work_per_thread", lambda work: 0)(0)
g = np.random.default_rng(0)
D = g.standard_normal((64, 96)).astype(np.float32); D[g.random(D.shape) < 0.5] = 0
W = b.BlockSparseMatrix(D, blocksize=(4, 1)); Q = b.quantize(W)
Wi = b.BlockSparseMatrix(np.clip(np.rint(D * 40), -127, 127), blocksize=(4, 1), dtype=np.int8)
x = g.standard_normal((40, 96)).astype(np.float32)
qkv = g.standard_normal((2 * 16, 3 * 32)).astype(np.float32)
def kernels():
    return [b.quantize_activations(x)[0], W @ x.T, x @ W.T, Wi @ b.quantize_activations(x)[0].T,
            b.linear(x, Q, activation="gelu"), Q @ x.T,
            nn.layer_norm(x, np.ones(96, np.float32), np.zeros(96, np.float32)),
            nn.attention(qkv, 4, batch_size=2), nn.quantize_rows(x)[0]]
"""


def test_fork_after_multithreaded_kernels_runs_every_kernel():
    code = """
    b.set_num_threads(2)
    expected = kernels()
    assert b.get_num_threads() == 2
    pid = os.fork()
    if pid == 0:
        try:
            b.set_num_threads(2)  # warns, and must not hang either
        except Exception:
            os._exit(3)
        got = kernels()
        same = all(np.array_equal(a, c) for a, c in zip(got, expected))
        os._exit(0 if same and b.get_num_threads() == 1 else 4)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    same = all(np.array_equal(a, c) for a, c in zip(kernels(), expected))
    print("parent", b.get_num_threads(), same)
    """
    res = run_python(KERNELS + textwrap.dedent(code), timeout=60, name="fork, 9 kernels")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["child 0", "parent 2 True"], res.stdout + res.stderr
    assert "RuntimeWarning: this process was forked after blocksparse ran a multi-threaded" \
        in res.stderr


def test_fork_before_any_multithreaded_kernel_keeps_the_threads():
    """A child of a process that never started OpenMP threads may start its own."""
    code = """
    b.set_num_threads(1)
    expected = kernels()        # one thread: no OpenMP team in the parent
    b.set_num_threads(2)
    pid = os.fork()
    if pid == 0:
        ok = b.get_num_threads() == 2 and all(np.array_equal(a, c)
                                              for a, c in zip(kernels(), expected))
        os._exit(0 if ok else 4)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
    res = run_python(KERNELS + textwrap.dedent(code), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "child 0", res.stdout + res.stderr


def test_fork_of_a_fork_and_a_thread_in_the_child():
    code = """
    import threading
    b.set_num_threads(2)
    expected = kernels()
    pid = os.fork()
    if pid == 0:
        box = []
        t = threading.Thread(target=lambda: box.append(kernels())); t.start(); t.join()
        pid2 = os.fork()
        if pid2 == 0:
            os._exit(0 if all(np.array_equal(a, c) for a, c in zip(kernels(), expected)) else 4)
        _, st = os.waitpid(pid2, 0)
        ok = os.waitstatus_to_exitcode(st) == 0 and all(
            np.array_equal(a, c) for a, c in zip(box[0], expected))
        os._exit(0 if ok else 5)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
    res = run_python(KERNELS + textwrap.dedent(code), timeout=60)
    assert res.stdout.strip() == "child 0", res.stdout + res.stderr


POOL = """
import multiprocessing as mp, os, numpy as np, blocksparse as b

def work(seed):
    x = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
    return b.get_num_threads(), b.quantize_activations(x)[0].sum()

if __name__ == "__main__":
    b.set_num_threads(2)
    b._kernels.set_min_work_per_thread(0)
    expected = [work(s)[1] for s in range(4)]   # OpenMP threads started in the parent
    ctx = mp.get_context({method!r})
    with ctx.Pool(2) as pool:
        got = pool.map(work, range(4))
    print([n for n, _ in got], [v for _, v in got] == expected)
"""


@pytest.mark.parametrize("method,threads", [("fork", 1), ("forkserver", 2), ("spawn", 2)])
def test_multiprocessing_start_methods(tmp_path, method, threads):
    """fork: the workers inherit OpenMP's state and run on one thread; forkserver and
    spawn start from a fresh interpreter and use BLOCKSPARSE_NUM_THREADS."""
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    script = tmp_path / "pool.py"  # spawn and forkserver re-import the main module
    script.write_text(POOL.format(method=method))
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                             text=True, timeout=90,
                             env=dict(os.environ, BLOCKSPARSE_NUM_THREADS="2"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multiprocessing with {method} hung")
    DURATIONS[f"Pool({method})"] = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{[threads] * 4} True", res.stdout + res.stderr


# ---- threads and the ISA --------------------------------------------------------------------

def test_isa_context_is_per_thread():
    """While one thread is inside isa_context, the others keep their own ISA."""
    isas = blocksparse.available_isas()
    if len(isas) < 2:
        pytest.skip("one ISA variant only")
    outer = blocksparse.get_isa()
    inner = "scalar" if outer != "scalar" else isas[-1]
    stop = threading.Event()
    seen = {"A": set(), "B": set()}
    barrier = threading.Barrier(2)

    def a():
        barrier.wait()
        while not stop.is_set():
            with blocksparse.isa_context(inner):
                seen["A"].add(blocksparse.get_isa())
            seen["A"].add("out:" + blocksparse.get_isa())

    def b():
        barrier.wait()
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            seen["B"].add(blocksparse.get_isa())
        stop.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen["B"] == {outer}
    assert seen["A"] == {inner, "out:" + outer}
    assert blocksparse.get_isa() == outer


def test_products_in_other_threads_keep_their_isa():
    """The reporter's probe: products in thread B while thread A toggles the ISA."""
    isas = blocksparse.available_isas()
    gen = np.random.default_rng(1)
    W = blocksparse.prune(gen.standard_normal((64, 256)).astype(np.float32), 0.5)
    X = gen.standard_normal((256, 33)).astype(np.float32)
    with blocksparse.isa_context(isas[-1]):
        best = W @ X
    with blocksparse.isa_context("scalar"):
        ref = W @ X
    if len(isas) > 1:  # float sums run in another order: the test can see a wrong ISA
        assert not np.array_equal(best, ref)
    stop = threading.Event()
    mismatches = []

    def toggler():
        while not stop.is_set():
            with blocksparse.isa_context("scalar"):
                assert np.array_equal(W @ X, ref)

    def worker():
        with blocksparse.isa_context(isas[-1]):
            for _ in range(200):
                if not np.array_equal(W @ X, best):
                    mismatches.append(1)
        stop.set()

    threads = [threading.Thread(target=toggler), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not mismatches


def test_overlapping_contexts_in_two_threads_restore_the_process_setting():
    outer = blocksparse.get_isa()
    enter_b, exit_a = threading.Event(), threading.Event()
    got = {}

    def a():
        with blocksparse.isa_context("scalar"):
            enter_b.set()
            exit_a.wait(10)
            got["A"] = blocksparse.get_isa()

    def b():
        enter_b.wait(10)
        with blocksparse.isa_context(blocksparse.available_isas()[-1]):
            exit_a.set()  # A leaves its context while B is still inside its own
            time.sleep(0.05)
            got["B"] = blocksparse.get_isa()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == {"A": "scalar", "B": blocksparse.available_isas()[-1]}
    assert blocksparse.get_isa() == outer


def test_isa_context_inside_a_generator_left_in_another_order():
    outer = blocksparse.get_isa()

    def gen():
        with blocksparse.isa_context("scalar"):
            yield blocksparse.get_isa()

    g1, g2 = gen(), gen()
    assert next(g1) == "scalar" and next(g2) == "scalar"
    g1.close()   # leaves first although it entered first
    g2.close()
    assert blocksparse.get_isa() == outer


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("n,err,match", [
    (0, ValueError, r"n must be a positive number of threads, got 0"),
    (-3, ValueError, r"n must be a positive number of threads, got -3"),
    (4097, ValueError, r"n must be a positive number of threads, at most 4096 .*got 4097"),
    (100000, ValueError, r"at most 4096 .*got 100000"),
    (2**31, ValueError, r"at most 4096 .*got 2147483648"),
    (2**80, ValueError, r"at most 4096"),
    (2.0, TypeError, r"n must be an integer, got float"),
    ("2", TypeError, r"n must be an integer, got str"),
])
def test_set_num_threads_is_bounded(n, err, match):
    saved = blocksparse.get_num_threads()
    with pytest.raises(err, match=match):
        blocksparse.set_num_threads(n)
    assert blocksparse.get_num_threads() == saved
    assert blocksparse.quantize_activations(np.ones((2, 3)))[0].shape == (2, 3)


def test_the_largest_thread_count_runs():
    """MAX_THREADS really runs (GNU OpenMP aborted the interpreter at 100000)."""
    code = """
    import numpy as np, blocksparse as b
    b.set_num_threads(b._config.MAX_THREADS)
    print(b.get_num_threads(), int(b.quantize_activations(np.ones((8, 16)))[0].sum()))
    b.set_num_threads(1)
    """
    res = run_python(code, timeout=60, name="4096 threads")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4096", str(8 * 16 * 255)]


# ---- the environment --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "two", "100000", "2147483648", "1e3", " "])
def test_bad_thread_variable_warns_and_falls_back(value):
    code = """
    import warnings, numpy as np
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import blocksparse as b
    print(len(w), b.get_num_threads() == b._kernels.default_threads() or b.get_num_threads())
    print(b.quantize_activations(np.ones((2, 2)))[0].tolist())
    print(w[0].message if w else "")
    """
    res = run_python(code, BLOCKSPARSE_NUM_THREADS=value)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    if value.strip():
        assert lines[0] == "1 True", res.stdout
        assert f"BLOCKSPARSE_NUM_THREADS={value.strip()!r} must be a number of threads from 1 " \
               f"to 4096; ignored" in lines[2]
    else:
        assert lines[0] == "0 True"
    assert lines[1] == "[[255, 255], [255, 255]]"


@pytest.mark.parametrize("var", ["BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA"])
def test_bad_isa_variable_imports_and_fails_at_first_use(var):
    code = """
    import numpy as np, blocksparse as b
    for call in (b.get_isa, lambda: b.quantize_activations(np.ones((2, 2))),
                 lambda: b.BlockSparseMatrix(np.eye(4, dtype=np.float32)) @ np.ones(4, np.float32)):
        try:
            call()
            print("no error")
        except ValueError as exc:
            print("ValueError", exc)
    with b.isa_context("scalar"):           # an explicit choice still works
        print(b.get_isa())
    b.set_isa(None) if "{var}" == "BLOCKSPARSE_ISA" else b.set_max_isa(None)
    print(b.get_isa() == b.available_isas()[-1])
    """.replace("{var}", var)
    res = run_python(code, **{var: "sse9"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    msg = f"ValueError {var}='sse9' is not an ISA variant; expected one of scalar, avx2, " \
          f"avx_vnni, avx512_vnni"
    assert lines[:3] == [msg] * 3, res.stdout
    assert lines[3:] == ["scalar", "True"]


@pytest.mark.parametrize("env", [{"BLOCKSPARSE_ISA": "sse9"}, {"BLOCKSPARSE_MAX_ISA": "x"},
                                 {"BLOCKSPARSE_NUM_THREADS": "lots"},
                                 {"BLOCKSPARSE_NUM_THREADS": "100000"}])
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_with_a_bad_environment_reports_and_exits_2(env, json_flag):
    full = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    full.update(env)
    res = subprocess.run([sys.executable, "-m", "blocksparse", "info", *json_flag], cwd=ROOT,
                         env=full, capture_output=True, text=True, timeout=60)
    (var, value), = env.items()
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"blocksparse info: error: {var}={value!r}" in res.stderr
    assert "blocksparse" in res.stdout  # the report itself is still printed
