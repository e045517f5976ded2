"""Helpers shared by the benchmark scripts: machine description, timing, JSON."""
import datetime
import json
import os
import platform
import time

import numpy as np

import blocksparse


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # absent or broken optional peer
        return None


def machine_description():
    """CPU, cores, ISAs, threads and library versions, for every result file."""
    cfg = blocksparse._config.config()
    return {
        "cpu": cfg["cpu"],
        "cores": os.cpu_count(),
        "isa_detected": cfg["isa_detected"],
        "isa_in_use": cfg["isa_in_use"],
        "openmp": cfg["openmp"],
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in
                     ("blocksparse", "numpy", "scipy", "torch", "onnxruntime")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


_FLUSH = None


def flush_cache(nbytes=64 << 20):
    """Evict the caches by touching a buffer larger than the last-level cache."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.ones(nbytes // 8)
    _FLUSH += 1.0


def time_call(fn, repeat=30, warmup=5, cold=False):
    """Time `fn()`: `warmup` untimed calls, then `repeat` timed ones.

    Returns {"median", "min", "repeat"} in seconds.  With `cold`, the caches
    are flushed before every timed call (the flush is not timed).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if cold:
            flush_cache()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": float(np.median(times)), "min": float(np.min(times)), "repeat": repeat}


def write_json(path, result):
    """Write a result dict as indented JSON, creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                  else str(o))
