"""The density above which the dense INT8 kernel beats the block-sparse one.

``python benchmarks/dense_crossover.py [--threads 1,2] [--tokens 128] [--rounds 7]``

For each weight shape, blocksize and thread count, one random weight is pruned to
every density of the grid and packed both ways (``blocksparse.quantize(...,
dense=True / False)``); the dense product and every sparse one are timed in
interleaved rounds, and ``ratio`` is the median over rounds of sparse time / dense
time (> 1: dense is faster).  The crossover of a row is the density where the
geometric mean of the ratios over the shapes crosses 1, interpolated linearly
between grid points.  The threshold in ``blocksparse._packed.DENSE_DENSITY`` comes
from this script's result on the benchmark machine (``docs/design.rst``).
"""
import argparse
import sys

import numpy as np

import blocksparse
from blocksparse._packed import QuantizedActivations, matmul
from blocksparse.bench._common import format_table, geomean, interleave, paired_ratio

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096)]
DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def crossover(densities, ratios):
    """Density where the ratio (sparse / dense time) first reaches 1, interpolated;
    None if dense never wins on the grid, 0 if it always does."""
    points = [(d, r) for d, r in zip(densities, ratios) if r]
    if points and points[0][1] >= 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 < 1 <= r1:
            return d0 + (d1 - d0) * (1 - r0) / (r1 - r0)
    return None


def run(shapes, tokens, densities, blocksizes, threads, rounds, calls):
    rng = np.random.default_rng(0)
    rows = []
    for bs in blocksizes:
        for t in threads:
            ratios = {d: [] for d in densities}
            for M, K in shapes:
                Wf = rng.standard_normal((M, K)).astype(np.float32)
                q = rng.integers(0, 256, (K, tokens), dtype=np.uint8)
                x = QuantizedActivations(q, None, None)
                out = np.empty((M, tokens), np.int32)
                contenders = {"dense": lambda P=blocksparse.quantize(Wf, bs, dense=True).packed:
                              matmul(P, x, out, layout="features")}
                for d in densities:
                    Q = blocksparse.quantize(blocksparse.prune(Wf, 1 - d, blocksize=bs),
                                             dense=False)
                    contenders[d] = (lambda P=Q.packed: matmul(P, x, out, layout="features"))
                timed = interleave(contenders, rounds, calls, threads={n: t for n in contenders})
                for d in densities:
                    ratios[d].append(paired_ratio(timed["dense"], timed[d]))
            row = {"blocksize": f"{bs[0]}x{bs[1]}", "threads": t}
            means = [geomean(ratios[d]) for d in densities]
            row.update({f"{d:g}": m for d, m in zip(densities, means)})
            row["crossover"] = crossover(densities, means)
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--shapes", default=None, help="e.g. 768x768,3072x768")
    p.add_argument("--blocksizes", default="4x1,1x4,2x2", help="e.g. 4x1,1x4")
    args = p.parse_args(argv)
    shapes = SHAPES if not args.shapes else [tuple(map(int, s.split("x")))
                                            for s in args.shapes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    blocksizes = [tuple(map(int, b.split("x"))) for b in args.blocksizes.split(",")]
    rows = run(shapes, args.tokens, DENSITIES, blocksizes, threads, args.rounds, args.calls)
    cols = [("blocksize", "blocksize", "s"), ("threads", "threads", "d")]
    cols += [(f"{d:g}", f"{d:g}", ".2f") for d in DENSITIES]
    cols += [("crossover", "crossover", ".2f")]
    print(f"sparse time / dense time by density (N = {args.tokens}, isa "
          f"{blocksparse.get_isa()}); > 1: dense is faster")
    print(format_table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
