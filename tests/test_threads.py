"""Thread safety (issue 6 item 3).

- the same calls from 8 Python threads sharing inputs give identical results;
- the GIL is released during kernels: a second Python thread makes progress;
- 1, 2 and 3 OpenMP threads give bit-identical results (the split is
  deterministic, so "equal within tolerance" would hide a bug);
- no memory growth over 10**4 small calls.
"""
import os
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import blocksparse
from blocksparse import BlockSparseMatrix


def bits(a):
    """A view that compares floats bit for bit (NaN and -0.0 included)."""
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def make_inputs(seed=7, M=96, K=160, N=70):
    gen = np.random.default_rng(seed)
    D = gen.standard_normal((M, K)).astype(np.float32)
    D[gen.random((M, K)) < 0.5] = 0
    return dict(
        D=D,
        X=gen.standard_normal((K, N)).astype(np.float32),
        x=gen.standard_normal((N, K)).astype(np.float32),
        xm=gen.standard_normal((N, M)).astype(np.float32),
        Xu=gen.integers(0, 256, (K, N)).astype(np.uint8),
        xs=gen.integers(-128, 128, (N, K)).astype(np.int8),
        bias=gen.standard_normal(M).astype(np.float32),
    )


def all_products(inp, blocksize):
    """Every kernel once, on freshly built matrices (so lazy caches race too)."""
    W = blocksparse.prune(inp["D"], 0.6, blocksize=blocksize)
    W64 = W.astype(np.float64)
    Wi = BlockSparseMatrix(np.clip(np.rint(inp["D"] * 40), -128, 127), blocksize=blocksize,
                           dtype=np.int8)
    Q = blocksparse.quantize(W)
    x, X = inp["x"], inp["X"]
    return [
        W @ X, x @ W.T, inp["xm"] @ W, W64 @ X.astype(np.float64),
        x.astype(np.float64) @ W64.T, Wi @ inp["Xu"], inp["xs"] @ Wi.T,
        Q @ X,
        blocksparse.linear(x, Q, inp["bias"], activation="gelu"),
        blocksparse.linear(x, Q, inp["bias"], activation="relu", out_dtype="uint8",
                           out_scale=0.05, out_zero_point=10),
        blocksparse.quantize_activations(x)[0],
    ]


def assert_bit_identical(results, baseline, what):
    assert len(results) == len(baseline)
    for i, (a, b) in enumerate(zip(results, baseline)):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, i)
        np.testing.assert_array_equal(bits(a), bits(b), err_msg=f"{what}: output {i}")


@pytest.fixture
def restore_threads():
    """Restore the thread count; meanwhile small products really use every thread."""
    saved = blocksparse.get_num_threads()
    saved_work = blocksparse._kernels.set_min_work_per_thread(0)
    yield
    blocksparse._kernels.set_min_work_per_thread(saved_work)
    blocksparse.set_num_threads(saved)


# ---- 8 Python threads ----------------------------------------------------------------

@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4)])
def test_eight_python_threads_share_inputs(blocksize):
    inp = make_inputs()
    frozen = {k: v.copy() for k, v in inp.items()}
    baseline = all_products(inp, blocksize)
    barrier = threading.Barrier(8)

    def work(_):
        barrier.wait()
        return [all_products(inp, blocksize) for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(work, range(8)))
    for t, runs in enumerate(outs):
        for r, res in enumerate(runs):
            assert_bit_identical(res, baseline, f"thread {t} run {r}")
    for k, v in inp.items():
        np.testing.assert_array_equal(v, frozen[k], strict=True)


def test_eight_python_threads_share_one_matrix():
    """One matrix object (and its lazily built transpose and packs) used by all threads."""
    inp = make_inputs(seed=3)
    Wi = BlockSparseMatrix(np.clip(np.rint(inp["D"] * 40), -128, 127), blocksize=(4, 1),
                           dtype=np.int8)
    W = BlockSparseMatrix(inp["D"], blocksize=(4, 1))
    Q = blocksparse.quantize(W)
    expected = [Wi.toarray().astype(np.int64) @ inp["Xu"].astype(np.int64),
                inp["xs"].astype(np.int64) @ Wi.toarray().T.astype(np.int64)]
    barrier = threading.Barrier(8)

    def work(_):
        barrier.wait()
        out = []
        for _ in range(5):
            out.append((Wi @ inp["Xu"], inp["xs"] @ Wi.T, inp["x"] @ W.T, W @ inp["X"],
                        blocksparse.linear(inp["x"], Q)))
        return out

    with ThreadPoolExecutor(8) as pool:
        outs = [r for runs in pool.map(work, range(8)) for r in runs]
    first = outs[0]
    np.testing.assert_array_equal(first[0], expected[0].astype(np.int32), strict=True)
    np.testing.assert_array_equal(first[1], expected[1].astype(np.int32), strict=True)
    for res in outs[1:]:
        assert_bit_identical(list(res), list(first), "shared matrix")


# ---- the GIL is released ---------------------------------------------------------------------

def progress_during(call, min_seconds=0.12):
    """Run `call` (made longer until it takes min_seconds) while a counter thread
    records timestamps; return (stamps in the middle half of the call, duration)."""
    stop = threading.Event()
    stamps = []
    started = threading.Event()

    def counter():
        started.set()
        while not stop.is_set():
            stamps.append(time.perf_counter())
            sum(range(50))

    t = threading.Thread(target=counter, daemon=True)
    t.start()
    started.wait()
    time.sleep(0.01)
    try:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    dur = t1 - t0
    lo, hi = t0 + dur / 4, t1 - dur / 4
    return sum(lo < s < hi for s in stamps), dur


def long_call(kind):
    """A single kernel call of at least ~0.15 s, scaled to this machine."""
    gen = np.random.default_rng(0)
    M = K = 512
    if kind == "float":
        W = BlockSparseMatrix(gen.standard_normal((M, K)).astype(np.float32), blocksize=(4, 1))
    elif kind == "int8":
        W = BlockSparseMatrix(gen.integers(-128, 128, (M, K)).astype(np.int8), blocksize=(1, 4))
    else:
        Q = blocksparse.quantize(gen.standard_normal((M, K)).astype(np.float32))

    def make(n):
        if kind == "float":
            X = gen.standard_normal((K, n)).astype(np.float32)
            return lambda: W @ X
        if kind == "int8":
            X = gen.integers(0, 256, (K, n)).astype(np.uint8)
            return lambda: W @ X
        x = gen.standard_normal((n, K)).astype(np.float32)
        return lambda: blocksparse.linear(x, Q, activation="gelu")

    n = 64
    while True:
        f = make(n)
        t = time.perf_counter()
        f()
        if time.perf_counter() - t > 0.15 or n >= 2**16:
            return f
        n *= 4


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("kind", ["float", "int8", "linear"])
def test_gil_released_during_kernel(kind, restore_threads):
    with blocksparse.isa_context("scalar"):  # the slowest variant: a long kernel, small data
        blocksparse.set_num_threads(1)
        f = long_call(kind)
        inside, dur = progress_during(f)
        if inside == 0:  # a heavily loaded machine may not schedule the counter: once more
            inside, dur = progress_during(lambda: (f(), f(), f()))
    assert dur > 0.08, f"the call was too short ({dur:.3f} s) to tell"
    assert inside > 0, f"no Python progress during a {dur:.3f} s {kind} kernel: GIL held?"


def test_progress_probe_detects_a_held_gil():
    """The probe itself can fail: a call that holds the GIL shows no progress."""
    def hold():  # time.sleep releases the GIL; a busy C loop in NumPy-free Python does not
        end = time.perf_counter() + 0.15
        x = 0
        while time.perf_counter() < end:
            x += 1
    import sys
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.3)  # no forced switch within the call: like C holding the GIL
    try:
        inside, dur = progress_during(hold)
    finally:
        sys.setswitchinterval(old)
    assert dur > 0.1 and inside == 0


# ---- 1 vs 2 OpenMP threads --------------------------------------------------------------------

@pytest.mark.thread_unsafe
@pytest.mark.parametrize("blocksize", [(4, 1), (1, 4), (4, 4), (16, 1), (3, 2)])
def test_openmp_thread_count_bit_identical(isa, blocksize, restore_threads):
    R, C = blocksize
    inp = make_inputs(seed=R * 10 + C, M=48 * R, K=40 * C, N=131)
    out = {}
    for nt in (1, 2, 3):
        blocksparse.set_num_threads(nt)
        out[nt] = all_products(inp, blocksize)
    assert_bit_identical(out[2], out[1], "2 vs 1 threads")
    assert_bit_identical(out[3], out[1], "3 vs 1 threads")


# ---- memory -------------------------------------------------------------------------------------

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.thread_unsafe
def test_no_memory_growth_over_many_calls(restore_threads):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm")
    # one kernel thread: on a loaded 2-core machine each OpenMP barrier can
    # stall for a scheduler slice, and threads do not change what is allocated
    blocksparse.set_num_threads(1)
    inp = make_inputs(seed=5, M=32, K=64, N=20)
    W = BlockSparseMatrix(inp["D"], blocksize=(4, 1))
    Wi = BlockSparseMatrix(np.clip(np.rint(inp["D"] * 40), -128, 127), blocksize=(1, 4),
                           dtype=np.int8)
    Q = blocksparse.quantize(W)
    x, X, Xu = inp["x"], inp["X"], inp["Xu"]
    calls = [lambda: W @ X, lambda: x @ W.T, lambda: Wi @ Xu,
             lambda: blocksparse.linear(x, Q, inp["bias"], activation="gelu"),
             lambda: blocksparse.quantize_activations(x)]
    for _ in range(300):  # warm up allocator pools and OpenMP teams
        for c in calls:
            c()
    # 1. resident memory over 10**4 calls (tracemalloc off: its own tables would count)
    rss0 = rss_bytes()
    for _ in range(2000):  # 5 call kinds: 10**4 calls
        for c in calls:
            c()
    rss1 = rss_bytes()
    # each call kind runs 2000 times: leaking one 2 KiB kernel buffer per call
    # of one kind adds 4 MiB
    assert rss1 - rss0 < 3 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"
    # 2. Python-level allocations (caches that grow per call, ...)
    tracemalloc.start()
    try:
        snap0 = tracemalloc.take_snapshot()
        for _ in range(400):
            for c in calls:
                c()
        snap1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    py_growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    assert py_growth < 64 * 1024, f"Python allocations grew by {py_growth} bytes"
