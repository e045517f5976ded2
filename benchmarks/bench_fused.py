"""The fused INT8 path against the bare integer product of the same shape, in one run.

For each BERT weight shape (M x K = out_features x in_features), N tokens,
sparsity and thread count, in interleaved rounds:

* ``core``: ``W @ X`` with X (K, N) uint8, int32 output (the exact product);
* ``fused_u8``: the same product with the encoder's epilogue, per-token
  activation scales, bias, GELU and requantization to uint8 for the next
  layer (a static output scale), as one call;
* ``fused_f32``: the same with bias and a float32 output, no activation;
* ``core_t`` / ``linear``: the token-major form, ``xq @ W.T`` int32 against
  :func:`blocksparse.linear` on float32 x (N, K) (dynamic per-token
  quantization of x, the product, scale and bias, float32 (N, M) output).

Reported: min and median per contender, and the paired speed ratio
core / fused per round (>= 0.9 is the issue's target), plus the core's
fraction of the INT8 ceiling measured in the same run.  (4, 1) blocks.

    python benchmarks/bench_fused.py [--threads 1 2] [--sparsity 0.7 0.8 0.9]
        [--tokens 128 384] [--rounds 15] [--json PATH] [--quick]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blocksparse  # noqa: E402
from blocksparse._packed import Epilogue, QuantizedActivations, matmul  # noqa: E402
from blocksparse.bench import ceiling as _ceiling  # noqa: E402
from blocksparse.bench._common import (contender_stats, interleave,  # noqa: E402
                                       machine_description, paired_ratio, write_json)

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096)]


def contenders(M, K, N, sparsity, seed=0):
    """{name: callable} on one weight, and the stored MACs of one product."""
    rng = np.random.default_rng(seed)
    W = blocksparse.prune(rng.standard_normal((M, K)).astype(np.float32), sparsity,
                          blocksize=(4, 1))
    Q = blocksparse.quantize(W)
    x = rng.standard_normal((N, K)).astype(np.float32)
    q, s, z = blocksparse.quantize_activations(x)
    xq_f = QuantizedActivations(np.ascontiguousarray(q.T), s, z)   # (K, N) features x tokens
    xq_t = QuantizedActivations(q, s, z)                           # (N, K) token-major
    bias = rng.standard_normal(M).astype(np.float32)
    P = Q.packed
    i32_f, i32_t = np.empty((M, N), np.int32), np.empty((N, M), np.int32)
    u8_f, f32_f = np.empty((M, N), np.uint8), np.empty((M, N), np.float32)
    f32_t = np.empty((N, M), np.float32)
    epi_u8 = Epilogue("gelu", bias, out_scale=0.05, out_zero=10)
    epi_f32 = Epilogue(None, bias)
    calls = {
        "core": lambda: matmul(P, xq_f, i32_f, layout="features"),
        "fused_u8": lambda: matmul(P, xq_f, u8_f, layout="features", epilogue=epi_u8),
        "fused_f32": lambda: matmul(P, xq_f, f32_f, layout="features", epilogue=epi_f32),
        "core_t": lambda: matmul(P, xq_t, i32_t, layout="tokens"),
        "linear": lambda: blocksparse.linear(x, Q, bias, out=f32_t),
    }
    return calls, Q.nnzb * 4 * N


def run(args):
    ceiling = _ceiling.measure(args.threads, quick=args.quick)
    records = []
    shapes = SHAPES[:2] if args.quick else SHAPES
    for M, K in shapes:
        for N in args.tokens:
            for sp in args.sparsity:
                calls, macs = contenders(M, K, N, sp)
                for t in args.threads:
                    timed = interleave(calls, args.rounds, 3, threads={k: t for k in calls})
                    stats = {k: contender_stats(v) for k, v in timed.items()}
                    ceil = _ceiling.int8_ceiling(ceiling, t)
                    rec = {"shape": [M, K], "N": N, "sparsity": sp, "threads": t,
                           "stats": stats,
                           "core_ceiling_fraction": macs / stats["core"]["min_s"] / ceil if ceil else None,
                           "ratio_u8": paired_ratio(timed["fused_u8"], timed["core"]),
                           "ratio_f32": paired_ratio(timed["fused_f32"], timed["core"]),
                           "ratio_linear": paired_ratio(timed["linear"], timed["core_t"])}
                    records.append(rec)
                    print(f"{M}x{K} N={N} {sp:.0%} t{t}: core {stats['core']['min_s']*1e6:7.1f} us"
                          f" ({rec['core_ceiling_fraction']:.0%} of ceiling)  core/fused:"
                          f" u8+gelu {rec['ratio_u8']:.2f}"
                          f"  f32 {rec['ratio_f32']:.2f}"
                          f"  linear/core_t {rec['ratio_linear']:.2f}", flush=True)
    summary = {}
    for t in args.threads:
        for key in ("ratio_u8", "ratio_f32", "ratio_linear"):
            vals = [r[key] for r in records if r["threads"] == t]
            summary[f"t{t} {key}"] = float(np.exp(np.mean(np.log(vals))))
    print("geomean core/fused (paired medians):",
          {k: round(v, 3) for k, v in summary.items()})
    return {"name": "fused INT8 path vs the bare integer product", "machine":
            machine_description(), "ceiling": ceiling, "records": records,
            "summary": summary}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 384])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.tokens, args.sparsity = 3, [128], [0.9]
    result = run(args)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
