"""``blocksparse bench``: run the benchmark suites shipped in :mod:`blocksparse.bench`.

The suites are modules of the installed package (``blocksparse/bench/
spmm_int8.py``, ``spmm_float.py``, ``bert.py``), so ``bench`` runs from any
directory after ``pip install``; ``--benchmarks-dir DIR`` loads modules of
the same names from DIR instead (research copies).  Each suite runs inside a
:class:`blocksparse.bench._common.LoadMonitor`: the table says whether the
machine was quiet, and a warning is printed when it was not.

Contract for a suite module:

``run(args) -> dict`` (or ``run(args, progress=None)``) with

* ``"name"``: str, the suite's title;
* ``"machine"``: dict describing the machine and build the numbers belong to;
* ``"records"``: list of dicts, each with at least ``"case"`` (str),
  ``"time_s"`` (float, blocksparse's time) and ``"speedup"`` (float or None:
  the best peer's time over ours), plus any other fields.  ``"sparsity"`` (a
  fraction) and a shape (``"shape"``, or ``"M"`` and ``"K"``) let the plot
  draw speedup against sparsity per shape (panels per ``"blocksize"`` and
  ``"threads"``, lines per ``"N"`` when they vary); ``"peer"`` or
  ``"best_peer"`` and ``"peer_time_s"`` or ``"peer_times_s"`` (a dict by
  peer name) fill the table's peer columns;
* optionally ``"table"``: a preformatted str, shown with ``--verbose``.

``args`` is an :class:`argparse.Namespace` with ``quick`` (bool), ``shapes``
(list of ``(M, K)`` tuples or None for the module's default), ``sparsity``
(list of fractions or None), ``threads`` (list of ints or None), ``models``
and ``contention`` (the BERT suite's; lists or None), ``peers`` (peer names
to use, or None for all installed), ``out_dir`` (:class:`pathlib.Path`),
``installed`` (``{name: version}`` of the installed peer libraries),
``verbose`` (bool) and ``progress``.  The progress callable
(also passed as ``run(args, progress=...)`` when run() has that parameter)
takes ``(done, total, desc="")`` or a single message string per step.
"""
import argparse
import datetime
import importlib.util
import inspect
import json
import math
import sys
import time
import traceback
from pathlib import Path

import blocksparse
from . import _config
from ._atomic import replacing
from ._cli import DEFAULT_SUITES, UsageError, output_file
from ._cli_info import BENCH_PEERS, collect_info, optional_packages
from ._cli_report import Progress, plot_speedup, print_suite_table
from .bench._common import LoadMonitor, quiet_verdict

__all__ = ["run_bench", "benchmarks_dir", "SUITE_MODULES"]

SUITE_MODULES = {"int8": "spmm_int8", "float": "spmm_float", "bert": "bert"}
INSTALL_PEERS = "pip install torch==2.13.0 transformers onnxruntime onnx openvino threadpoolctl"


_PACKAGE_SUITES = (Path(__file__).resolve().parent / "bench").resolve()


def benchmarks_dir():
    """The directory of the suite modules: ``blocksparse/bench`` of the installed package."""
    return Path(blocksparse.__file__).resolve().parent / "bench"


def _find_dir(args):
    path = Path(args.benchmarks_dir) if args.benchmarks_dir else benchmarks_dir()
    if not path.is_dir():
        if args.benchmarks_dir:
            raise UsageError(f"--benchmarks-dir {args.benchmarks_dir!r} is not a directory")
        raise UsageError(f"no benchmark suites at {path}: this installation of blocksparse "
                         f"is incomplete (reinstall it, or pass --benchmarks-dir DIR)")
    return path


def _available(bench_dir):
    """{suite name: module path} of the bench_*.py files present."""
    found = {}
    for suite, stem in SUITE_MODULES.items():
        if (bench_dir / f"{stem}.py").is_file():
            found[suite] = bench_dir / f"{stem}.py"
    return found


def _load(path):
    """Import a suite module: from the package when it is the package's, else from its file.

    A module loaded from another directory can import the package's helpers
    (``from blocksparse.bench import _common``).
    """
    if path.parent.resolve() == _PACKAGE_SUITES:
        module = importlib.import_module(f"blocksparse.bench.{path.stem}")
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"{path.name} has no run(args) function")
        return module
    name = f"_blocksparse_bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"{path.name} has no run(args) function")
    return module


def _check_result(result, path):
    """Validate what a module's run() returned; raise TypeError naming the problem."""
    where = f"{path.name}: run(args)"
    if not isinstance(result, dict):
        raise TypeError(f"{where} must return a dict, got {type(result).__name__}")
    for key, kind in (("name", str), ("records", list)):
        if not isinstance(result.get(key), kind):
            raise TypeError(f"{where} must return {key!r} as a {kind.__name__}")
    if not isinstance(result.get("machine", {}), dict):
        raise TypeError(f"{where} must return 'machine' as a dict")
    if "table" in result and not isinstance(result["table"], str):
        raise TypeError(f"{where} must return 'table' as a str")
    for i, rec in enumerate(result["records"]):
        if not isinstance(rec, dict):
            raise TypeError(f"{where}: records[{i}] must be a dict")
        missing = [k for k in ("case", "time_s", "speedup") if k not in rec]
        if missing:
            raise TypeError(f"{where}: records[{i}] lacks {', '.join(map(repr, missing))}")
        if not isinstance(rec["time_s"], (int, float)) or isinstance(rec["time_s"], bool):
            raise TypeError(f"{where}: records[{i}]['time_s'] must be a number")
        sp = rec["speedup"]
        if sp is not None and (not isinstance(sp, (int, float)) or isinstance(sp, bool)):
            raise TypeError(f"{where}: records[{i}]['speedup'] must be a number or None")
    return result


def _call_run(module, ns, report):
    """``module.run(ns)``, also passing ``progress=`` if run() takes it."""
    try:
        params = inspect.signature(module.run).parameters
    except (TypeError, ValueError):
        params = {}
    if "progress" in params:
        return module.run(ns, progress=report)
    return module.run(ns)


def _jsonable(obj):
    """Plain JSON types: NumPy scalars and arrays unwrapped, NaN/Inf as null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(_jsonable(payload), f, indent=1)
        f.write("\n")


def _suite_args(args, suite, out_dir, progress, installed, default_run):
    # A default run keeps BERT quick so the whole thing fits in minutes on 2 cores.
    quick = args.quick or (suite == "bert" and default_run)
    return argparse.Namespace(quick=quick, shapes=args.shapes, sparsity=args.sparsity,
                              threads=args.threads, models=getattr(args, "models", None),
                              contention=getattr(args, "contention", None),
                              peers=getattr(args, "peers", None), out_dir=out_dir,
                              installed=installed, verbose=args.verbose, progress=progress,
                              suite=suite)


def _check_names(args):
    """Map --peers and --models to the names the suites know; UsageError otherwise."""
    from .bench import bert, bert_peers, peers
    if getattr(args, "peers", None) is not None:
        known = list(dict.fromkeys(peers.ALL_PEERS + ("scipy_bsr_f32",) + bert_peers.PEERS))
        if [p.lower() for p in args.peers] == ["none"]:
            args.peers = []
        else:
            bad = [p for p in args.peers if p not in known]
            if bad:
                raise UsageError(f"--peers: unknown {', '.join(bad)}; choose from "
                                 f"{', '.join(known)} (or none)")
    if getattr(args, "models", None) is not None:
        by_lower = {m.lower(): m for m in bert.MODELS}
        bad = [m for m in args.models if m.lower() not in by_lower]
        if bad:
            raise UsageError(f"--models: unknown {', '.join(bad)}; choose from "
                             f"{', '.join(bert.MODELS)}")
        args.models = [by_lower[m.lower()] for m in args.models]


def _say(text):
    print(text, file=sys.stderr, flush=True)


def _list(bench_dir, found):
    print(f"benchmark modules in {bench_dir}:")
    for suite, stem in SUITE_MODULES.items():
        state = "present" if suite in found else "missing"
        default = " (default)" if suite in DEFAULT_SUITES else ""
        print(f"  {suite:<6} {stem}.py  {state}{default}")
    return 0


def run_bench(args):
    """Run the chosen suites, print tables, write JSON and the plot."""
    bench_dir = _find_dir(args)
    found = _available(bench_dir)
    if args.list:
        return _list(bench_dir, found)
    default_run = args.suite is None
    if default_run:
        suites = [s for s in DEFAULT_SUITES if s in found]
        for s in DEFAULT_SUITES:
            if s not in found:
                _say(f"note: {SUITE_MODULES[s]}.py is not in {bench_dir}; skipping the {s} suite")
        if not suites:
            names = ", ".join(m + ".py" for m in SUITE_MODULES.values())
            raise UsageError(f"no benchmark modules ({names}) in {bench_dir}")
    else:
        missing = [s for s in args.suite if s not in found]
        if missing:
            names = ", ".join(SUITE_MODULES[s] + ".py" for s in missing)
            raise UsageError(f"--suite {','.join(missing)}: no {names} in {bench_dir}")
        suites = list(args.suite)

    _check_names(args)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir!r} exists and is not a directory")
    json_path = output_file(args.json, "--json") if args.json else out_dir / "bench.json"
    plot_path = output_file(args.plot, "--plot") if args.plot else out_dir / "speedup.png"
    out_dir.mkdir(parents=True, exist_ok=True)

    installed = {k: v for k, v in optional_packages(BENCH_PEERS).items() if v}
    if installed:
        _say("comparing against NumPy, SciPy and " +
             ", ".join(f"{k} {v}" for k, v in installed.items()))
    else:
        _say(f"no optional peer ({', '.join(BENCH_PEERS)}) installed: comparing against "
             f"NumPy/SciPy only")
    missing = [k for k in BENCH_PEERS if k not in installed]
    if missing:
        _say(f"note: for the INT8 peers install {', '.join(missing)} "
             f"(all of them: {INSTALL_PEERS})")
    if not optional_packages(("threadpoolctl",)).get("threadpoolctl"):
        _say("note: threadpoolctl is not installed, so NumPy's BLAS threads cannot be limited "
             "to each row's thread count: numpy_f32 is shown but never sets the bar "
             "(pip install threadpoolctl)")

    info = collect_info()
    payload = {
        "tool": "blocksparse bench",
        "blocksparse": blocksparse.__version__,
        "argv": list(getattr(args, "argv", None) or sys.argv[1:]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {"quick": args.quick, "suites": suites, "shapes": args.shapes,
                    "sparsity": args.sparsity, "threads": args.threads,
                    "models": getattr(args, "models", None),
                    "contention": getattr(args, "contention", None),
                    "peers": getattr(args, "peers", None)},
        "machine": {k: info[k] for k in ("cpu", "logical_cpus", "platform", "python", "numpy",
                                         "scipy", "isa_built", "isa_detected", "isa_in_use",
                                         "num_threads", "openmp", "openmp_runtime",
                                         "environment")},
        "packages": info["packages"],
        "suites": [],
        "errors": [],
    }
    progress = Progress(plain=args.plain)
    t_all = time.perf_counter()
    for i, suite in enumerate(suites, 1):
        path = found[suite]
        saved = (_config._State.num_threads, _config._State.forced,
                 _config._State.forced_from, _config._State.cap)
        t0 = time.perf_counter()
        monitor = LoadMonitor().start()
        try:
            with progress.suite(suite, i, len(suites), path) as report:
                module = _load(path)
                ns = _suite_args(args, suite, out_dir, report, installed, default_run)
                result = _call_run(module, ns, report)
                _check_result(result, path)
        except Exception as exc:
            if getattr(args, "traceback", False):
                traceback.print_exc()
            _say(f"error: the {suite} suite ({path.name}) failed: {type(exc).__name__}: {exc}")
            payload["errors"].append({"suite": suite, "module": path.name,
                                      "error": f"{type(exc).__name__}: {exc}"})
            continue
        finally:
            (_config._State.num_threads, _config._State.forced,
             _config._State.forced_from, _config._State.cap) = saved
        elapsed = time.perf_counter() - t0
        load = monitor.stop()
        _say(f"[{i}/{len(suites)}] {suite}: {len(result['records'])} records in {elapsed:.1f} s")
        entry = {"suite": suite, "module": path.name, "elapsed_s": elapsed}
        entry.update(result)
        entry["load"] = load
        entry["quiet"] = quiet_verdict(load, result["records"])
        if not entry["quiet"]["quiet"]:
            _say(f"warning: {suite}: {entry['quiet']['note']}")
        payload["suites"].append(entry)
        print_suite_table(entry, plain=args.plain)
        if args.verbose and result.get("table"):
            print(result["table"])
        if result.get("table"):
            with replacing(out_dir / f"{suite}-table.txt") as tmp, open(tmp, "w") as f:
                f.write(result["table"].rstrip() + "\n")

    payload["elapsed_s"] = time.perf_counter() - t_all
    _write_json(json_path, payload)
    _say(f"wrote {json_path}")
    if not args.no_plot:
        _say(plot_speedup(payload["suites"], plot_path))
    if payload["errors"]:
        _say(f"{len(payload['errors'])} suite(s) failed: "
             f"{', '.join(e['suite'] for e in payload['errors'])}")
        return 1
    return 0
