"""Helpers shared by the benchmark suites.

* :func:`machine_description`: CPU, cores, caches, ISAs, threads, library versions, date;
* :class:`LoadMonitor`: how much CPU other processes took while a suite ran, and the
  load average before and after, for the "quiet machine?" verdict;
* :func:`thread_limits`: blocksparse, NumPy/SciPy's BLAS (threadpoolctl) and PyTorch
  limited to one thread count for a block of timings;
* :func:`interleave`: contenders timed in alternating rounds, so that a burst of other
  work hits all of them alike; :func:`paired_ratio` compares two of them round by round;
* :func:`contender_stats`, :func:`geomean`, :func:`format_table`.

Keep this module light: no optional package is imported at module level.
"""
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

import blocksparse
from .._atomic import replacing

# A contender's median over its minimum above this marks its timings as noisy.
NOISY_SPREAD = 1.25
# Other processes taking more than this fraction of all CPUs makes a run "busy".
BUSY_OTHER_CPU = 0.10


def _version(module):
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version(module)
        except PackageNotFoundError:
            return None
    except Exception:  # metadata broken: say nothing rather than fail the run
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


PEER_PACKAGES = ("torch", "onnxruntime", "onnx", "openvino", "transformers", "threadpoolctl")


def machine_description():
    """CPU, cores, caches, ISAs, threads and library versions, for every result."""
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
        "versions": {m: _version(m) for m in ("blocksparse", "numpy", "scipy") + PEER_PACKAGES},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": load_average(),
    }


def load_average():
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _cpu_jiffies():
    """(busy, steal) clock ticks of all CPUs since boot from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return user + nice + system + irq + softirq + steal, steal


def _own_cpu_seconds():
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class LoadMonitor:
    """What else ran on the machine between :meth:`start` and :meth:`stop`.

    The CPU time of all processes (``/proc/stat``) minus this process's own
    and its waited-for children's gives the CPU time other processes took; as
    a fraction of the wall time times the CPU count it says how busy the
    machine was (``other_cpu_fraction``; ``steal_fraction``: time the
    hypervisor gave to other guests).  Busy-loop processes that a suite starts
    on purpose (contention runs) are its children and do not count.
    """

    def __init__(self):
        self.started = None

    def start(self):
        self.started = (time.perf_counter(), _cpu_jiffies(), _own_cpu_seconds(),
                        load_average())
        return self

    def stop(self):
        """Dict with ``loadavg_before``, ``loadavg_after``, ``other_cpu_fraction``,
        ``steal_fraction`` (None where /proc/stat is missing) and ``wall_s``."""
        t0, j0, own0, load0 = self.started
        wall = time.perf_counter() - t0
        j1, own1 = _cpu_jiffies(), _own_cpu_seconds()
        out = {"loadavg_before": load0, "loadavg_after": load_average(), "wall_s": wall,
               "cpus": os.cpu_count(), "other_cpu_fraction": None, "steal_fraction": None}
        if j0 is not None and j1 is not None and wall > 0:
            tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (j1[0] - j0[0]) / tick
            capacity = wall * (os.cpu_count() or 1)
            # clock ticks are coarse (10 ms): clamp what a short interval rounds past
            out["other_cpu_fraction"] = min(1.0, max(0.0, busy - (own1 - own0)) / capacity)
            out["steal_fraction"] = min(1.0, (j1[1] - j0[1]) / tick / capacity)
        return out


def quiet_verdict(load, records):
    """``{"quiet": bool, "note": str, "reasons": [...]}`` for a suite's table.

    Busy when other processes took more than 10 % of the CPUs, when the
    1-minute load average before the suite exceeded a quarter of the CPU
    count, or when more than a quarter of the timed cells are noisy (median
    over minimum > 1.25).  The note lists every measure, the failing ones
    marked ``[busy]``.
    """
    parts, reasons = [], []

    def add(text, busy):
        parts.append(text + (" [busy]" if busy else ""))
        if busy:
            reasons.append(text)

    cpus = load.get("cpus") or 1
    other = load.get("other_cpu_fraction")
    if other is not None:
        steal = load.get("steal_fraction")
        add(f"others used {other:.0%} of {cpus} CPUs" + (f" (steal {steal:.0%})" if steal else ""),
            other > BUSY_OTHER_CPU)
    before = load.get("loadavg_before")
    if before:
        after = (load.get("loadavg_after") or [float("nan")])[0]
        add(f"load average {before[0]:.2f} before, {after:.2f} after", before[0] > 0.25 * cpus)
    spreads = [c["spread"] for r in records for c in (r.get("contenders") or {}).values()
               if isinstance(c, dict) and c.get("spread")]
    if spreads:
        noisy = sum(s > NOISY_SPREAD for s in spreads)
        add(f"{noisy} of {len(spreads)} timings with median/min > {NOISY_SPREAD:g}",
            noisy > 0.25 * len(spreads))
    quiet = not reasons
    note = f"quiet machine? {'yes' if quiet else 'NO'}" + (": " + ", ".join(parts) if parts
                                                             else "")
    if not quiet:
        note += ". Compare numbers within this run only; re-run on a quiet machine."
    return {"quiet": quiet, "note": note, "reasons": reasons}


# ---- threads ------------------------------------------------------------------------

def blas_limits_available():
    """True if threadpoolctl can limit NumPy/SciPy's BLAS threads."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def thread_limits(threads):
    """Run the block with `threads` threads in blocksparse, the BLAS and PyTorch.

    The BLAS is limited with threadpoolctl when it is installed; PyTorch only
    if something already imported it.  ONNX Runtime and OpenVINO take their
    thread count when their sessions are made (see :mod:`.peers`).
    """
    from .. import _config
    saved = _config._State.num_threads  # None (the default) stays None afterwards
    torch = sys.modules.get("torch")
    torch_saved = torch.get_num_threads() if torch is not None else None
    with contextlib.ExitStack() as stack:
        if blas_limits_available():
            from threadpoolctl import threadpool_limits
            stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
        blocksparse.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            blocksparse.set_num_threads(saved)
            if torch is not None:
                torch.set_num_threads(torch_saved)


# ---- timing -------------------------------------------------------------------------

_FLUSH = None


def flush_cache(nbytes=64 << 20):
    """Evict the caches by reading and writing a buffer larger than the last-level cache."""
    global _FLUSH
    if _FLUSH is None or _FLUSH.nbytes != nbytes:
        _FLUSH = np.ones(nbytes // 8)
    _FLUSH += 1.0


def time_call(fn, repeat=30, warmup=5, cold=False):
    """Time ``fn()``: `warmup` untimed calls, then `repeat` timed ones.

    Returns ``{"median", "min", "repeat", "times"}`` in seconds.  With
    `cold`, the caches are flushed (64 MiB touched, not timed) before every
    timed call.
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


class _ThreadSwitch:
    """Sets blocksparse's, the BLAS's and PyTorch's thread counts between timings."""

    def __init__(self):
        self.current = None
        self.saved = blocksparse.get_num_threads()
        self.torch = sys.modules.get("torch")
        self.torch_saved = self.torch.get_num_threads() if self.torch is not None else None
        self.blas = None

    def apply(self, threads):
        if threads is None or threads == self.current:
            return
        blocksparse.set_num_threads(threads)
        if self.torch is not None:
            self.torch.set_num_threads(threads)
        if blas_limits_available():
            from threadpoolctl import threadpool_limits
            if self.blas is not None:
                self.blas.restore_original_limits()
            self.blas = threadpool_limits(limits=threads, user_api="blas")
        self.current = threads

    def restore(self):
        blocksparse.set_num_threads(self.saved)
        if self.torch is not None:
            self.torch.set_num_threads(self.torch_saved)
        if self.blas is not None:
            self.blas.restore_original_limits()


def interleave(contenders, rounds, calls, threads=None, warmup=2, settle=0.005,
               progress=None):
    """Time every contender in `rounds` alternating rounds of `calls` calls.

    Each round runs the contenders one after another (the order rotates from
    round to round), each after its thread count is set, a pause of `settle`
    seconds (the previous library's idle worker threads stop spinning) and
    one untimed call (its data back in the caches).  A burst of other work
    then lands in one round of every contender instead of all the calls of
    one, and :func:`paired_ratio` drops it.

    Parameters
    ----------
    contenders : dict
        ``{name: callable}``; each takes no argument.
    rounds : int
    calls : int or dict
        Timed calls per contender and round (a dict: per name, default 1).
    threads : dict, optional
        ``{name: thread count}`` set in blocksparse, the BLAS (threadpoolctl)
        and PyTorch before the contender runs; names missing keep the
        current setting.  Restored at the end.
    warmup : int
        Untimed calls of every contender before the first round.
    settle : float
    progress : callable, optional
        Called with a message per round.

    Returns
    -------
    dict
        ``{name: {"times": [...], "rounds": [median of each round]}}``.
    """
    names = list(contenders)
    threads = threads or {}
    switch = _ThreadSwitch()
    out = {n: {"times": [], "rounds": []} for n in names}
    try:
        for name in names:
            switch.apply(threads.get(name))
            for _ in range(warmup):
                contenders[name]()
        for r in range(rounds):
            if progress is not None and rounds > 1:
                progress(f"round {r + 1}/{rounds}")
            k = r % len(names) if names else 0
            for name in names[k:] + names[:k]:
                fn = contenders[name]
                switch.apply(threads.get(name))
                if settle:
                    time.sleep(settle)
                fn()
                n = calls.get(name, 1) if isinstance(calls, dict) else calls
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                out[name]["times"].extend(times)
                out[name]["rounds"].append(float(np.median(times)))
    finally:
        switch.restore()
    return out


def contender_stats(timed, work=None, ceiling=None):
    """Summary of one contender's :func:`interleave` output.

    Parameters
    ----------
    timed : dict
        ``{"times", "rounds"}``.
    work : float, optional
        Operations per call (multiply-adds) for the ceiling fraction.
    ceiling : float, optional
        Operations per second the machine can do at this thread count.

    Returns
    -------
    dict
        ``min_s``, ``median_s``, ``calls``, ``spread`` (median / min) and,
        with `work` and `ceiling`, ``ceiling_fraction`` (at the median time)
        and ``ceiling_fraction_of_min`` (of the fastest call).
    """
    times = timed["times"]
    mn, med = float(np.min(times)), float(np.median(times))
    out = {"min_s": mn, "median_s": med, "calls": len(times), "spread": med / mn}
    if work and ceiling:
        out["ceiling_fraction"] = work / med / ceiling
        out["ceiling_fraction_of_min"] = work / mn / ceiling
    return out


def paired_ratio(ours, peer):
    """Median over rounds of (peer's round median / ours): > 1 means ours is faster."""
    ratios = [p / o for o, p in zip(ours["rounds"], peer["rounds"]) if o > 0]
    return float(np.median(ratios)) if ratios else None


def geomean(values):
    """Geometric mean of the positive values (None if there are none)."""
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def best_peer(contenders, int8_names):
    """Name of the peer that sets the bar: the fastest INT8 peer, else the fastest one.

    `contenders` maps names to :func:`contender_stats` dicts with ``kind``
    ``"ours"`` or a peer kind; peers flagged ``"unfair"`` (not limited to the
    row's threads) never set the bar.
    """
    peers = {n: c for n, c in contenders.items() if c.get("kind") != "ours" and
             not c.get("unfair")}
    int8 = {n: c for n, c in peers.items() if n in int8_names}
    pool = int8 or peers
    if not pool:
        return None
    return min(pool, key=lambda n: pool[n]["median_s"])


def ours_record(contenders, ours, timed, int8_names):
    """The comparison fields of one record: ours against the best peer, paired.

    Returns ``time_s`` (median), ``time_min_s``, ``best_peer``, ``peer_time_s``,
    ``peer_time_min_s``, ``peer_times_s`` (medians by peer), ``speedup`` (the
    paired ratio against the best peer), ``speedup_rounds`` (the ratio of each
    round) and ``speedup_of_mins``.
    """
    me = contenders[ours]
    best = best_peer({n: c for n, c in contenders.items()
                      if c.get("kind") != "ours" or n == ours}, int8_names)
    rec = {"time_s": me["median_s"], "time_min_s": me["min_s"], "best_peer": best,
           "peer_time_s": None, "peer_time_min_s": None, "speedup": None,
           "speedup_of_mins": None,
           "peer_times_s": {n: c["median_s"] for n, c in contenders.items()
                            if c.get("kind") != "ours"}}
    if best is not None:
        rec["peer_time_s"] = contenders[best]["median_s"]
        rec["peer_time_min_s"] = contenders[best]["min_s"]
        rec["speedup"] = paired_ratio(timed[ours], timed[best])
        rec["speedup_rounds"] = [p / o for o, p in zip(timed[ours]["rounds"],
                                                       timed[best]["rounds"]) if o > 0]
        rec["speedup_of_mins"] = contenders[best]["min_s"] / me["min_s"]
    return rec


def arg(args, name, default):
    """``args.name``, or `default` when it is missing or None."""
    value = getattr(args, name, None)
    return default if value is None else value


def spmm_grid(args, shapes, tokens, sparsity, threads, blocksizes):
    """The SpMM suites' settings from `args` and the module defaults.

    ``quick`` keeps the first two shapes, N = 128 and 90 % sparsity, and times
    3 rounds of 5 calls (else 5 of 10).  Returns a dict with ``quick``,
    ``shapes``, ``tokens``, ``sparsity``, ``threads``, ``blocksizes``,
    ``rounds``, ``calls``.
    """
    quick = bool(arg(args, "quick", False))
    return {"quick": quick,
            "shapes": [tuple(s) for s in arg(args, "shapes", None) or
                       (shapes[:2] if quick else shapes)],
            "tokens": list(arg(args, "tokens", None) or ([128] if quick else tokens)),
            "sparsity": list(arg(args, "sparsity", None) or ([0.9] if quick else sparsity)),
            "threads": list(arg(args, "threads", None) or threads),
            "blocksizes": [tuple(b) for b in arg(args, "blocksizes", None) or blocksizes],
            "rounds": int(arg(args, "rounds", None) or (3 if quick else 5)),
            "calls": int(arg(args, "calls", None) or (5 if quick else 10))}


def say(progress, message):
    """Send `message` to a progress callable, if any."""
    if progress is not None:
        progress(message)


# ---- output -------------------------------------------------------------------------

def write_json(path, result):
    """Write a result dict as indented JSON, creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w") as f:  # atomic (docs/guarantees.rst)
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


def time_unit(seconds):
    """(scale, unit) that shows the typical value of `seconds` with 3-4 digits."""
    vals = [s for s in seconds if s]
    typical = float(np.median(vals)) if vals else 1e-3
    if typical < 1e-3:
        return 1e6, "us"
    if typical < 1.0:
        return 1e3, "ms"
    return 1.0, "s"


def _num(v):
    return f"{v:.0f}" if v >= 1000 else f"{v:.4g}"


def contender_cells(records):
    """``(header, rows)`` of strings: per record, every contender's min / median
    (one time unit for the table; ``!`` marks median / min > 1.25) and its
    percentage of the ceiling at the median, the best peer and the speedup."""
    names = []
    for r in records:
        for n in r.get("contenders") or {}:
            if n not in names:
                names.append(n)
    scale, unit = time_unit([c["median_s"] for r in records
                             for c in (r.get("contenders") or {}).values()])
    header = ["case"] + [f"{n} min/med {unit}" for n in names] + ["best peer", "speedup"]
    rows = []
    for r in records:
        row = [str(r["case"])]
        for n in names:
            c = (r.get("contenders") or {}).get(n)
            if not c:
                row.append("-")
                continue
            cell = f"{_num(c['min_s'] * scale)} / {_num(c['median_s'] * scale)}"
            if c.get("spread", 1.0) > NOISY_SPREAD:
                cell += "!"
            if c.get("ceiling_fraction") is not None:
                cell += f" ({100 * c['ceiling_fraction']:.0f}%)"
            row.append(cell)
        sp = r.get("speedup")
        row += [str(r.get("best_peer") or "-"), "-" if sp is None else f"{sp:.2f}x"]
        rows.append(row)
    return header, rows


def contenders_table(records):
    """Plain-text :func:`contender_cells` table with a legend line."""
    header, rows = contender_cells(records)
    cols = [(h, i, "s") for i, h in enumerate(header)]
    text = format_table([dict(enumerate(r)) for r in rows], cols)
    return text + (f"\n(min / median per contender, (% of the ceiling at the median); '!': "
                   f"median / min > {NOISY_SPREAD:g}; speedup: best peer / ours, the median of "
                   f"per-round ratios)")
