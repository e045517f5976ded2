"""Per-call overhead of the products: small calls where the Python and Cython glue dominate.

Cases (blocksize (4, 1): four consecutive output rows in one input column):

* ``f32_64x64_N1``: float32 ``W @ X``, W 64 x 64 at 50 % sparsity, X (64, 1);
* ``int8_64x64_N1``: int8 ``W @ X`` with uint8 X (exact int32 result);
* ``linear_64x64_N1``: ``blocksparse.linear(x, Q)``, x (1, 64) float32
  (dynamic per-token quantization, float32 epilogue);
* ``int8_768x768_N128``: int8 ``W @ X``, W 768 x 768 at 90 %, X (768, 128) uint8;
* ``linear_768x768_N128``: ``linear`` on the same weights, x (128, 768).

Only the public API is used, so the same script times any build of the
package: run it once with the old build and once with the new one, in a quiet
window, and compare the JSON files.  Small calls are timed in batches of
``--inner`` calls (the per-call time is the batch time over ``--inner``),
large ones one by one; each case reports the min and the median over
``--rounds`` batches.  One kernel thread by default (the overhead is what is
measured; ``--threads 1 2`` adds a 2-thread run).

Run ``python benchmarks/bench_overhead.py [--rounds 200] [--inner 200]
[--threads 1] [--json PATH] [--quick]``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blocksparse  # noqa: E402
from _common import format_table, machine_description, write_json  # noqa: E402


def cases(seed=0):
    """{name: (callable, is_small)} with inputs made once."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((64, 64)).astype(np.float32)
    Wf = blocksparse.prune(small, 0.5, blocksize=(4, 1))
    W8 = blocksparse.BlockSparseMatrix(
        np.clip(np.rint(Wf.toarray() * 40), -127, 127).astype(np.int8), blocksize=(4, 1))
    Q = blocksparse.quantize(Wf)
    X = rng.standard_normal((64, 1)).astype(np.float32)
    Xu = rng.integers(0, 256, (64, 1)).astype(np.uint8)
    x = rng.standard_normal((1, 64)).astype(np.float32)

    big = blocksparse.prune(rng.standard_normal((768, 768)).astype(np.float32), 0.9,
                            blocksize=(4, 1))
    B8 = blocksparse.BlockSparseMatrix(
        np.clip(np.rint(big.toarray() * 40), -127, 127).astype(np.int8), blocksize=(4, 1))
    QB = blocksparse.quantize(big)
    XB = rng.integers(0, 256, (768, 128)).astype(np.uint8)
    xb = rng.standard_normal((128, 768)).astype(np.float32)
    return {
        "f32_64x64_N1": (lambda: Wf @ X, True),
        "int8_64x64_N1": (lambda: W8 @ Xu, True),
        "linear_64x64_N1": (lambda: blocksparse.linear(x, Q), True),
        "int8_768x768_N128": (lambda: B8 @ XB, False),
        "linear_768x768_N128": (lambda: blocksparse.linear(xb, QB), False),
    }


def time_case(fn, small, rounds, inner):
    """(min, median) seconds per call."""
    n = inner if small else 1
    for _ in range(max(10, n)):  # warm up: packing, caches, branch predictors
        fn()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t0) / n)
    return float(np.min(per_call)), float(np.median(per_call))


def run(rounds=200, inner=200, threads=(1,)):
    saved = blocksparse.get_num_threads()
    records = []
    try:
        fns = cases()
        for t in threads:
            blocksparse.set_num_threads(t)
            for name, (fn, small) in fns.items():
                lo, med = time_case(fn, small, rounds, inner)
                records.append({"case": name, "threads": t, "min_us": lo * 1e6,
                                "median_us": med * 1e6, "rounds": rounds,
                                "calls_per_round": inner if small else 1})
    finally:
        blocksparse.set_num_threads(saved)
    table = format_table(records, [("case", "case", str), ("threads", "threads", "d"),
                                   ("min us", "min_us", ".2f"),
                                   ("median us", "median_us", ".2f"),
                                   ("calls/round", "calls_per_round", "d")])
    return {"name": "per-call overhead", "package_file": blocksparse.__file__,
            "isa": blocksparse.get_isa(), "machine": machine_description(),
            "records": records, "table": table}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--inner", type=int, default=200, help="calls per timed batch (small cases)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--quick", action="store_true", help="a smoke test: 3 rounds of 5 calls")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.inner = 3, 5
    result = run(args.rounds, args.inner, tuple(args.threads))
    print(f"blocksparse from {result['package_file']}, ISA {result['isa']}")
    print(result["table"])
    if args.json:
        write_json(args.json, result)
    else:
        print(json.dumps(result["records"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
