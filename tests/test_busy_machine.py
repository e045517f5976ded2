"""Adaptive team size on a busy machine (src/team.c, issue 10 item 5).

Busy-looping processes pinned to the same two CPUs as a two-thread run
hold up its parallel regions; the regions then run on one thread for a
while, unless even the one thread has to wait for a CPU.  Results must stay
bit-identical, the fallback and its early ends must be seen, and turning it
off must turn it off.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import blocksparse
from blocksparse import _kernels

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
    or not _kernels.have_openmp(),
    reason="needs two CPUs, sched_setaffinity and OpenMP")

SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    import numpy as np
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])   # busy loops inherit it
    import blocksparse
    from blocksparse.nn import BertModel
    blocksparse.set_num_threads(2)
    cfg = dict(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=512, max_position_embeddings=64)
    model = BertModel.from_config(cfg, dtype="int8", sparsity=0.8, seed=1)
    ids = np.random.default_rng(0).integers(0, 500, (2, 48))
    quiet = model(ids)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        same = all(np.array_equal(model(ids), quiet) for _ in range(int(sys.argv[1])))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(json.dumps(dict(blocksparse.adaptive_threads_state(), same=same)))
""")


def run(calls, env_value=None):
    env = dict(os.environ)
    env.pop("BLOCKSPARSE_ADAPTIVE_THREADS", None)
    if env_value is not None:
        env["BLOCKSPARSE_ADAPTIVE_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(calls)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_held_up_regions_fall_back_to_one_thread_with_identical_results():
    state = run(60)
    assert state["same"]
    assert state["on"] and state["held_up_regions"] >= 1


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"),
                    reason="needs Linux's per-thread scheduler statistics")
def test_one_thread_on_a_shared_core_gives_the_cores_back_to_the_team():
    # two busy loops on the run's two CPUs: the one thread of a fallback waits
    # for a CPU a third of the time, so its windows end early
    state = run(300)
    assert state["same"]
    assert state["held_up_regions"] >= 1 and state["shared_core_ends"] >= 1


def test_the_environment_turns_it_off():
    state = run(10, "0")
    assert state["same"]
    assert not state["on"] and state["held_up_regions"] == 0
    assert state["single_thread_for_s"] == 0.0 == state["team_for_s"]
    assert state["shared_core_ends"] == 0


def test_set_adaptive_threads():
    with pytest.raises(TypeError, match="on must be True or False"):
        blocksparse.set_adaptive_threads(1)
    try:
        blocksparse.set_adaptive_threads(False)
        assert blocksparse.adaptive_threads_state()["on"] is False
    finally:
        blocksparse.set_adaptive_threads(True)
    assert blocksparse.adaptive_threads_state()["on"] is True
