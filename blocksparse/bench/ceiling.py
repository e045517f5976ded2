"""The machine's ceilings, measured in the same run as the benchmarks.

The probes are tiny C loops compiled into the package (``src/probe/``, built
per ISA with that ISA's flags like the kernels, reached through
``blocksparse.bench._probes``), so measuring needs no compiler at run time
and works from an installed wheel:

* ``dpbusd_zmm``, ``dpbusd_ymm_evex``: 24 independent ``vpdpbusd`` chains on
  512-bit and 256-bit EVEX registers (AVX-512 VNNI, with VL for ymm);
* ``dpbusd_ymm_vex``: 14 chains of the VEX form (AVX-VNNI; VEX reaches only
  16 registers);
* ``maddubs_ymm``, ``maddwd_ymm``: the INT8 rate of AVX2 without VNNI, 12
  chains of 32 u8 x s8 multiply-adds per step, as ``vpmaddubsw`` +
  ``vpmaddwd`` + ``vpaddd`` (saturating pair sums: what INT8 libraries use
  there) and as the exact form of the AVX2 kernels (two ``vpmaddwd`` of
  widened bytes + two ``vpaddd``);
* ``fma_zmm``, ``fma_ymm``: float FMA chains from registers, and
  ``fma_load_*`` with one L1 vector load per FMA;
* ``read``: the read bandwidth of a buffer far larger than the last-level
  cache (one slice per thread); ``copy_bytes_per_s``: NumPy's one-thread copy
  (bytes read + written).

The chains are independent and more than latency x throughput on current
cores, so the loops are bound by issue rate alone (the old 12-chain probe,
compiled from intrinsics, spilled accumulators and read 179 instead of 233 G
MAC/s per Zen 4 core).  Each rate is the best of several short runs: a
ceiling is what an undisturbed core does.  Several threads run the same
probe at once from Python threads (the GIL is released); the rate at
``t`` threads is the total work over the span from the first start to the
last end.

The INT8 fractions in the tables use ``int8_macs_per_core`` (the best
``vpdpbusd`` variant where the CPU has VNNI, else the best AVX2 INT8 probe)
times the row's thread count; the rate measured with
that many threads is recorded next to it (``by_threads``) as a check: it
falls short when cores are shared, busy or slow down under load.

Run ``python -m blocksparse.bench.ceiling [--threads 1,2]`` to print them.
"""
import argparse
import sys
import threading
import time

import numpy as np

import blocksparse

# probe name: (ISA it needs, what it measures, unit of its work)
PROBES = {
    "dpbusd_zmm": ("avx512_vnni", "512-bit EVEX vpdpbusd, 24 chains", "MAC"),
    "dpbusd_ymm_evex": ("avx512_vnni", "256-bit EVEX vpdpbusd (AVX-512 VL), 24 chains", "MAC"),
    "dpbusd_ymm_vex": ("avx_vnni", "256-bit VEX vpdpbusd (AVX-VNNI), 14 chains", "MAC"),
    "fma_zmm": ("avx512_vnni", "512-bit float FMA, 16 chains", "flop"),
    "fma_ymm": ("avx2", "256-bit float FMA, 12 chains", "flop"),
    "fma_load_zmm": ("avx512_vnni", "512-bit FMA with one L1 load each", "flop"),
    "fma_load_ymm": ("avx2", "256-bit FMA with one L1 load each", "flop"),
    "maddubs_ymm": ("avx2", "256-bit vpmaddubsw + vpmaddwd + vpaddd, 12 chains", "MAC"),
    "maddwd_ymm": ("avx2", "256-bit 2 x (vpmaddwd + vpaddd) on widened bytes, 12 chains",
                   "MAC"),
}
VNNI_PROBES = ("dpbusd_zmm", "dpbusd_ymm_evex", "dpbusd_ymm_vex")
AVX2_INT8_PROBES = ("maddubs_ymm", "maddwd_ymm")


def _probes():
    try:
        from . import _probes
    except ImportError:  # a build without the probe extension
        return None
    return _probes


def available():
    """Names of the probes this build has and this CPU can run."""
    mod = _probes()
    if mod is None:
        return []
    isas = set(blocksparse.available_isas())
    return [p for p, (isa, _, _) in PROBES.items() if isa in isas and mod.built(p)]


def _aligned(nbytes):
    """A zeroed uint8 array of `nbytes` whose data starts on a 64-byte boundary."""
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes]


def _run_threads(name, reps, threads, bufs):
    """Run probe `name` on `threads` Python threads at once: total work / span."""
    mod = _probes()
    barrier = threading.Barrier(threads)
    results = [None] * threads

    def body(i):
        barrier.wait()
        t0 = time.perf_counter()
        work, _ = mod.run(name, reps, bufs[i] if bufs else None)
        results[i] = (t0, time.perf_counter(), work)

    if threads == 1:
        body(0)
    else:
        pool = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    span = max(r[1] for r in results) - min(r[0] for r in results)
    return sum(r[2] for r in results) / span


def probe_rate(name, threads=1, seconds=0.03, repeats=5, bufs=None):
    """Best rate (work per second) of probe `name` on `threads` threads.

    The repetition count is grown until one run takes about `seconds`.
    """
    mod = _probes()
    reps = 1000
    while True:
        work, took = mod.run(name, reps, bufs[0] if bufs else None)
        if took >= seconds / 4 or reps >= 1 << 40:
            break
        reps *= 4
    reps = max(1, int(reps * seconds / max(took, 1e-9)))
    return max(_run_threads(name, reps, threads, bufs) for _ in range(repeats))


def copy_bandwidth(nbytes=256 << 20, repeats=5):
    """One-thread NumPy copy bandwidth in bytes/s (bytes read + written)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def measure(threads=(1,), quick=False):
    """Measure every ceiling this build and CPU offer.

    Parameters
    ----------
    threads : sequence of int
        Thread counts to measure at (1 is always measured).
    quick : bool
        Shorter runs and smaller buffers (a smoke test).

    Returns
    -------
    dict
        ``probes``: ``{name: {"what", "unit", "per_core", "by_threads": {t: rate}}}``;
        ``vnni_macs_per_core``: the best vpdpbusd rate of one core (None without
        VNNI); ``vnni_probe``: which variant; ``int8_macs_per_core`` and
        ``int8_probe``: the same where the CPU has VNNI, else the best AVX2 INT8
        probe (the basis of the INT8 fractions); ``fma_flops_per_core`` and
        ``fma_l1_load_flops_per_core`` for the ISA in use; ``read_bytes_per_s``
        ``{t: rate}`` and ``copy_bytes_per_s``; ``built`` (False when the
        probe extension is missing).
    """
    counts = sorted({1, *(int(t) for t in threads)})
    seconds, repeats = (0.01, 3) if quick else (0.03, 5)
    out = {"built": _probes() is not None, "probes": {}, "vnni_macs_per_core": None,
           "vnni_probe": None, "int8_macs_per_core": None, "int8_probe": None,
           "fma_flops_per_core": None, "fma_l1_load_flops_per_core": None,
           "read_bytes_per_s": {}, "copy_bytes_per_s": None, "threads": counts}
    names = available()
    l1 = [_aligned(16 * 1024) for _ in range(max(counts))]
    for name in names:
        isa, what, unit = PROBES[name]
        bufs = l1 if name.startswith("fma_load") else None
        by = {t: probe_rate(name, t, seconds, repeats, bufs) for t in counts}
        # t threads reaching R means one core reaches at least R / t: a disturbed
        # one-thread run must not lower the ceiling
        per_core = max(by[t] / t for t in counts)
        out["probes"][name] = {"what": what, "unit": unit, "isa": isa, "per_core": per_core,
                               "by_threads": by}
    vnni = {n: out["probes"][n]["per_core"] for n in VNNI_PROBES if n in out["probes"]}
    if vnni:
        out["vnni_probe"] = max(vnni, key=vnni.get)
        out["vnni_macs_per_core"] = vnni[out["vnni_probe"]]
    int8 = vnni or {n: out["probes"][n]["per_core"] for n in AVX2_INT8_PROBES
                    if n in out["probes"]}
    if int8:
        out["int8_probe"] = max(int8, key=int8.get)
        out["int8_macs_per_core"] = int8[out["int8_probe"]]
    wide = blocksparse.get_isa() == "avx512_vnni"
    for key, probe in (("fma_flops_per_core", "fma_zmm" if wide else "fma_ymm"),
                       ("fma_l1_load_flops_per_core",
                        "fma_load_zmm" if wide else "fma_load_ymm")):
        if probe in out["probes"]:
            out[key] = out["probes"][probe]["per_core"]
    if out["built"]:
        slice_bytes = (16 << 20) if quick else (128 << 20)
        bufs = [_aligned(slice_bytes) for _ in range(max(counts))]
        for b in bufs:
            b[::4096] = 1  # touch every page before timing
        out["read_bytes_per_s"] = {t: probe_rate("read", t, seconds * 4, repeats, bufs)
                                   for t in counts}
        del bufs
    out["copy_bytes_per_s"] = copy_bandwidth((32 << 20) if quick else (256 << 20),
                                             repeats=3 if quick else 5)
    return out


def merge(first, second):
    """Keep the higher of two measurements of each rate (the less disturbed one)."""
    if not second:
        return first
    out = dict(first)
    for name, p in second.get("probes", {}).items():
        if name not in out["probes"]:
            out["probes"][name] = p
            continue
        mine = out["probes"][name]
        mine["per_core"] = max(mine["per_core"], p["per_core"])
        mine["by_threads"] = {t: max(v, p["by_threads"].get(t, 0))
                              for t, v in mine["by_threads"].items()}
    for key in ("vnni_macs_per_core", "int8_macs_per_core", "fma_flops_per_core",
                "fma_l1_load_flops_per_core", "copy_bytes_per_s"):
        vals = [v for v in (first.get(key), second.get(key)) if v]
        out[key] = max(vals) if vals else None
    out["read_bytes_per_s"] = {t: max(v, second.get("read_bytes_per_s", {}).get(t, 0))
                               for t, v in first.get("read_bytes_per_s", {}).items()}
    return out


def int8_ceiling(ceiling, threads):
    """INT8 multiply-adds per second at `threads` threads: per core times threads.

    The VNNI rate where the CPU has VNNI, else AVX2's (measurements written
    before the AVX2 probes existed carry only ``vnni_macs_per_core``).
    """
    ceiling = ceiling or {}
    per_core = ceiling.get("int8_macs_per_core") or ceiling.get("vnni_macs_per_core")
    return per_core * threads if per_core else None


def scaling_note(ceiling):
    """A warning when the probes ran slower on t threads than t times one core, else ''."""
    notes = []
    for name, p in (ceiling or {}).get("probes", {}).items():
        for t, rate in p["by_threads"].items():
            if t > 1 and rate < 0.9 * t * p["per_core"]:
                notes.append(f"{name} at {t} threads reached {rate / p['per_core']:.2f}x one "
                             f"core")
    if not notes:
        return ""
    return ("ceiling check: " + "; ".join(notes[:3]) + " (cores shared, busy or throttled: "
            "fractions use per core x threads)")


def describe(ceiling):
    """Lines of text for the tables."""
    lines = []
    for name, p in ceiling.get("probes", {}).items():
        rates = ", ".join(f"{t} thr {v / 1e9:.1f}" for t, v in p["by_threads"].items())
        lines.append(f"  {name:<16} {p['what']}: G{p['unit']}/s {rates}")
    for t, v in ceiling.get("read_bytes_per_s", {}).items():
        lines.append(f"  read bandwidth   {t} thread(s): {v / 1e9:.1f} GB/s")
    if ceiling.get("copy_bytes_per_s"):
        lines.append(f"  NumPy copy       1 thread: {ceiling['copy_bytes_per_s'] / 1e9:.1f} GB/s "
                     f"(read + written)")
    if not ceiling.get("built"):
        lines.append("  (this build has no probe extension: no ceilings)")
    elif not ceiling.get("int8_macs_per_core"):
        lines.append("  (no INT8 probe for this CPU: INT8 fractions are not given)")
    elif not ceiling.get("vnni_macs_per_core"):
        lines.append(f"  (no VNNI on this CPU: INT8 fractions use {ceiling['int8_probe']})")
    note = scaling_note(ceiling)
    if note:
        lines.append("  " + note)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Measure the machine's ceilings.")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts (default 1)")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    print(describe(measure(threads, quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
