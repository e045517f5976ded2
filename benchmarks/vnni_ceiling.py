"""Measure the hardware ceilings of the performance model (DESIGN.md).

* compute: the vpdpbusd issue rate of one core, from benchmarks/vnni_probe.c
  (compiled here with the ISA's flags and loaded with ctypes), reported as
  int8 multiply-adds per second (64 per 512-bit vpdpbusd, 32 per 256-bit);
* memory: the copy bandwidth of one thread over a buffer far larger than the
  last-level cache (NumPy copy, counting bytes read + written).

Run ``python benchmarks/vnni_ceiling.py`` or call :func:`measure`.
"""
import ctypes
import os
import shlex
import subprocess
import sysconfig
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = {"avx512_vnni": ["-mavx512f", "-mavx512bw", "-mavx512vnni", "-DPROBE_ZMM"],
         "avx_vnni": ["-mavx2", "-mavxvnni"]}


def _build(isa, tmp):
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    out = os.path.join(tmp, f"probe_{isa}.so")
    cmd = cc + ["-O2", "-shared", "-fPIC"] + FLAGS[isa] + [os.path.join(HERE, "vnni_probe.c"),
                                                           "-o", out]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(out)
    lib.probe_dpbusd.restype = ctypes.c_int64
    lib.probe_dpbusd.argtypes = [ctypes.c_int64, ctypes.c_int32]
    return lib


def vnni_macs_per_second(isa="avx512_vnni", iters=2_000_000, repeats=5):
    """Peak int8 multiply-adds per second of one core for `isa` (or None)."""
    import blocksparse
    if isa not in blocksparse.available_isas():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            lib = _build(isa, tmp)
        except (subprocess.CalledProcessError, OSError):
            return None
        lib.probe_dpbusd(iters // 10, 0)  # warm up the clock
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            lib.probe_dpbusd(iters, 0)
            best = min(best, time.perf_counter() - t0)
        per_instr = lib.probe_bytes()
        return iters * 12 * per_instr / best


def copy_bandwidth(nbytes=256 << 20, repeats=5):
    """Single-thread copy bandwidth in bytes/s (read + write)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def measure():
    """Dict of the ceilings: vnni MAC/s for each VNNI ISA, and copy bytes/s."""
    return {"avx512_vnni_macs": vnni_macs_per_second("avx512_vnni"),
            "avx_vnni_macs": vnni_macs_per_second("avx_vnni"),
            "copy_bytes_per_s": copy_bandwidth()}


if __name__ == "__main__":
    for key, value in measure().items():
        print(f"{key:>18}: {value / 1e9:8.1f} G/s" if value else f"{key:>18}: n/a")
