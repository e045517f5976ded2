"""Helpers shared by the benchmark scripts.

* :func:`machine_description` -- CPU, cores, caches, ISAs, threads, library versions, date;
* :func:`time_call` -- fixed warmup and repeat counts, median and min, optional cold cache;
* :func:`gops` -- effective (dense-equivalent ``2MNK/t``) and actual (stored work) GOPS;
* :func:`write_json` and :func:`format_table` -- the result file and a plain-text table.

Every benchmark script puts ``benchmarks/`` on ``sys.path`` and imports this module,
so keep it small and free of heavy imports.
"""
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


def _cpuinfo():
    """Model name, family/model/stepping and the clock from /proc/cpuinfo (Linux)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "cpu family", "model", "stepping", "cpu MHz") \
                        and key not in info:
                    info[key] = value
                if not line.strip() and info:
                    break  # the first processor is enough
    except OSError:
        pass
    return info


def _caches():
    """Per-level cache sizes of CPU 0 from sysfs, e.g. {"L1d": "48K", "L2": "1024K"}."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            out[f"L{level}{suffix}"] = size
    except OSError:
        pass
    return out


def machine_description():
    """CPU, cores, caches, ISAs, threads and library versions, for every result file."""
    cfg = blocksparse._config.config()
    cpu = _cpuinfo()
    return {
        "cpu": cpu.get("model name", cfg["cpu"]),
        "cpu_family_model_stepping": "/".join(cpu.get(k, "?") for k in
                                              ("cpu family", "model", "stepping")),
        "cpu_mhz": cpu.get("cpu MHz"),
        "cores": os.cpu_count(),
        "caches": _caches(),
        "platform": platform.platform(),
        "isa_detected": cfg["isa_detected"],
        "isa_in_use": cfg["isa_in_use"],
        "num_threads": cfg["num_threads"],
        "openmp": cfg["openmp"],
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in
                     ("blocksparse", "numpy", "scipy", "torch", "onnxruntime")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": load_average(),
    }


def load_average():
    """1, 5 and 15 minute load averages (None where unavailable).

    Recorded with the results: on a shared machine a load above the core count
    means other processes took CPU time, and two-thread timings suffer most.
    """
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


_FLUSH = None


def flush_cache(nbytes=64 << 20):
    """Evict the caches by reading and writing a buffer larger than the last-level cache."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.ones(nbytes // 8)
    _FLUSH += 1.0


def time_call(fn, repeat=30, warmup=5, cold=False):
    """Time ``fn()``: `warmup` untimed calls, then `repeat` timed ones.

    Returns ``{"median", "min", "repeat", "times"}`` in seconds (``times``:
    every timed call, for pooling over several rounds).  The median is the
    number to report on a shared machine (other processes only ever add time);
    the min shows what a quiet machine can do.  With `cold`, the caches are
    flushed (64 MiB touched, not timed) before every timed call.
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
    return {"median": float(np.median(times)), "min": float(np.min(times)), "repeat": repeat,
            "times": times}


def gops(M, K, N, seconds, density=1.0):
    """``(effective, actual)`` GOPS: ``2MNK / t`` and the same times `density`.

    Effective GOPS compare with dense libraries (the work a dense product
    would do); actual GOPS count only the stored blocks' multiply-adds, to
    compare with the machine's compute ceiling.
    """
    eff = 2.0 * M * K * N / seconds / 1e9
    return eff, eff * density


def report(result, json_path=None):
    """Print a benchmark's machine description and table; write its JSON if asked."""
    import sys
    print(json.dumps(result["machine"], indent=1), file=sys.stdout)
    print(result["table"])
    if json_path:
        write_json(json_path, result)


def write_json(path, result):
    """Write a result dict as indented JSON, creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                  else str(o))


def format_table(rows, columns):
    """Plain-text table of dict rows.

    Parameters
    ----------
    rows : list of dict
    columns : list of (header, key, fmt)
        `fmt` is a format spec such as ``".1f"`` or a callable taking the
        value; missing or None values print as ``-``.  Columns of numbers
        are right-aligned, others left-aligned.

    Returns
    -------
    str
    """
    cells = []
    for row in rows:
        line = []
        for _, key, fmt in columns:
            v = row.get(key)
            if v is None:
                line.append("-")
            elif callable(fmt):
                line.append(fmt(v))
            else:
                line.append(format(v, fmt))
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    numeric = [all(isinstance(row.get(key), (int, float, type(None))) for row in rows)
               for _, key, _ in columns]

    def fmt_line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [fmt_line([h for h, _, _ in columns]), fmt_line(["-" * w for w in widths])]
    out.extend(fmt_line(c) for c in cells)
    return "\n".join(out)
