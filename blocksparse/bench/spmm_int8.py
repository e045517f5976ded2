"""INT8 block-sparse x dense products against the dense INT8 peers installed.

Cases: weights (M, K) in the BERT shapes, N tokens, sparsity, blocksize (4, 1)
(four consecutive output rows in one input column, the paper's "4x1") and
(1, 4) (four consecutive weights of one row along K), threads.  blocksparse
runs the integer core ``W @ X`` (int8 (M, K) times uint8 (K, N), exact int32
out) on the kernel :func:`blocksparse.quantize` chose for the weight: at
sparsity 0 the dense INT8 kernel (``bsk_qgemm``, one case per shape: the
blocksize does not matter to it), else the block-sparse one unless the
density reaches the measured crossover; the peers (:mod:`.peers`: PyTorch, ONNX Runtime, OpenVINO, NumPy) run
the dense product of the same shape with the same thread count.

For each (shape, N) the peers and every (sparsity, blocksize) variant of
ours, at every thread count, are timed in interleaved rounds
(:func:`._common.interleave`); ``speedup`` is the median over rounds of (best
peer / ours) at the same thread count, the best peer being the fastest INT8
peer installed (the fastest peer of any kind without one), and
``thread_scaling`` the same paired ratio of ours at the first thread count
over ours at this one.  Every contender's min and median are kept, and its speed as a
fraction of the ``vpdpbusd`` ceiling measured in the same run (per core times
threads): on the stored blocks for ours (``ceiling_fraction``, "non-zero
work"), on the dense product for the peers.

``python -m blocksparse bench --suite int8`` runs it; ``run(args)`` is the
contract of :mod:`blocksparse._cli_bench`.
"""
import argparse

import numpy as np

import blocksparse
from . import ceiling as _ceiling
from ._common import (arg, contender_stats, contenders_table, format_table, geomean,
                      interleave, machine_description, ours_record, paired_ratio, say,
                      spmm_grid)
from .peers import ALL_PEERS, dense_peers

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096)]
TOKENS = [128, 384]
SPARSITY = [0.0, 0.7, 0.8, 0.9]
BLOCKSIZES = [(4, 1), (1, 4)]
THREADS = [1, 2]
OURS = "blocksparse"


def _kernel(W):
    """``"dense"`` or ``"sparse"``: the kernel ``W @ X`` runs, and its C name."""
    packed = W._packed_as(np.dtype(np.int8))
    return packed.format, packed.kernel_name(blocksparse._config._active_isa())


def _ours_key(sparsity, blocksize, threads):
    return f"{OURS} {sparsity:g} {blocksize[0]}x{blocksize[1]} t{threads}"


def _variant(seed, M, K, sparsity, blocksize):
    """The INT8 weight (the int8 BlockSparseMatrix ``W @ X`` multiplies)."""
    W = np.random.default_rng(seed).standard_normal((M, K)).astype(np.float32)
    return blocksparse.quantize(blocksparse.prune(W, sparsity, blocksize=blocksize)).weight


def run(args=None, progress=None):
    """Run the grid.

    Parameters
    ----------
    args : argparse.Namespace, optional
        quick, shapes, tokens, sparsity, threads, blocksizes, rounds, calls,
        peers (a list of peer names to use; None: all installed); missing or
        None ones take the defaults.
    progress : callable, optional
        Called with a message per step.

    Returns
    -------
    dict
        ``{"name", "machine", "ceiling", "records", "summary", "peer_errors",
        "peer_info", "settings", "table"}``.
    """
    args = args or argparse.Namespace()
    g = spmm_grid(args, SHAPES, TOKENS, SPARSITY, THREADS, BLOCKSIZES)
    quick, shapes, tokens, threads_list = g["quick"], g["shapes"], g["tokens"], g["threads"]
    sparsities, blocksizes, rounds, calls = g["sparsity"], g["blocksizes"], g["rounds"], g["calls"]
    wanted = arg(args, "peers", None)
    wanted = ALL_PEERS if wanted is None else tuple(wanted)
    say(progress, "measuring the ceilings")
    ceiling = _ceiling.measure(threads_list, quick=quick)
    rng = np.random.default_rng(0)
    records, peer_errors, peer_info = [], {}, {}
    groups = [(M, K, N) for M, K in shapes for N in tokens]
    for gi, (M, K, N) in enumerate(groups, 1):
        say(progress, f"[{gi}/{len(groups)}] {M}x{K} N={N}: building")
        X = rng.integers(0, 256, (K, N), dtype=np.uint8)
        variants = {}
        for sp in sparsities:
            for bs in blocksizes[:1] if sp == 0 else blocksizes:
                variants[(sp, bs)] = _variant([M, K, len(variants)], M, K, sp, bs)
        # every contender at every thread count, interleaved in the same rounds
        contenders, threads_of, peers_at = {}, {}, {}
        for t in threads_list:
            for (sp, bs), W in variants.items():
                key = _ours_key(sp, bs, t)
                contenders[key] = (lambda W=W: W @ X)
                threads_of[key] = t
            fns, errors, info = dense_peers(M, K, N, t, wanted)
            peer_errors.update(errors)
            for name, entry in info.items():
                peer_info.setdefault(name, entry)
            peers_at[t] = info
            for name, fn in fns.items():
                contenders[f"{name} t{t}"] = fn
                threads_of[f"{name} t{t}"] = t
        say(progress, f"[{gi}/{len(groups)}] {M}x{K} N={N}: timing {len(contenders)} "
                      f"contenders")
        timed = interleave(contenders, rounds, calls, threads=threads_of, progress=progress)
        for t in threads_list:
            ceil = _ceiling.int8_ceiling(ceiling, t)
            peer_stats = {n: dict(contender_stats(timed[f"{n} t{t}"], M * K * N, ceil), **info)
                          for n, info in peers_at[t].items()}
            peer_timed = {n: timed[f"{n} t{t}"] for n in peers_at[t]}
            int8_names = [n for n, c in peer_stats.items() if c.get("kind") == "int8"]
            for (sp, bs), W in variants.items():
                key = _ours_key(sp, bs, t)
                mine = dict(contender_stats(timed[key], W.nnz * N, ceil), kind="ours")
                here = {OURS: mine, **peer_stats}
                fmt, kernel = _kernel(W)
                label = "dense" if fmt == "dense" else f"{bs[0]}x{bs[1]}"
                rec = {"case": f"{M}x{K} N={N} {sp:.0%} {label} t{t}", "format": fmt,
                       "kernel": kernel,
                       "M": M, "K": K, "N": N, "sparsity": sp, "blocksize": list(bs),
                       "threads": t, "isa": blocksparse.get_isa(), "dtype": "u8s8s32",
                       "form": "W@X", "density": W.density, "contenders": here,
                       "gops_eff": 2 * M * K * N / mine["median_s"] / 1e9,
                       "gops_actual": 2 * W.nnz * N / mine["median_s"] / 1e9}
                rec.update(ours_record(here, OURS, {OURS: timed[key], **peer_timed},
                                       int8_names))
                if t != threads_list[0]:
                    rec["thread_scaling"] = paired_ratio(
                        timed[key], timed[_ours_key(sp, bs, threads_list[0])])
                    rec["thread_scaling_from"] = threads_list[0]
                records.append(rec)
    say(progress, "measuring the ceilings again")
    ceiling = _ceiling.merge(ceiling, _ceiling.measure(threads_list, quick=quick))
    _refresh_fractions(records, ceiling)
    summary = summarize(records)
    result = {"name": "INT8 SpMM W @ X (u8 x s8 -> s32)", "machine": machine_description(),
              "ceiling": ceiling, "records": records, "summary": summary,
              "peer_errors": peer_errors, "peer_info": peer_info,
              "settings": {"rounds": rounds, "calls": calls, "quick": quick,
                           "ceiling_basis": "int8_macs_per_core x threads",
                           "speedup_basis": "median over rounds of best peer / ours"}}
    result["table"] = make_table(result)
    return result


def _refresh_fractions(records, ceiling):
    """Recompute every ceiling fraction with the merged (higher) ceiling."""
    for r in records:
        ceil = _ceiling.int8_ceiling(ceiling, r["threads"])
        for name, c in r["contenders"].items():
            if not ceil or c.get("kind") == "float":  # a float product is not INT8 work
                c.pop("ceiling_fraction", None)
                c.pop("ceiling_fraction_of_min", None)
                continue
            work = (r["density"] if name == OURS else 1.0) * r["M"] * r["K"] * r["N"]
            c["ceiling_fraction"] = work / c["median_s"] / ceil
            c["ceiling_fraction_of_min"] = work / c["min_s"] / ceil
        mine = r["contenders"][OURS]
        r["ceiling_fraction"] = mine.get("ceiling_fraction")
        r["ceiling_fraction_of_min"] = mine.get("ceiling_fraction_of_min")
        if r.get("best_peer"):
            r["peer_ceiling_fraction"] = r["contenders"][r["best_peer"]].get("ceiling_fraction")


def summarize(records):
    """Geometric means per (sparsity, blocksize, threads): speedup, ceiling fractions,
    and the thread scaling (ours at the first thread count over ours at this one,
    paired round by round)."""
    out = []
    keys = sorted({(r["sparsity"], tuple(r["blocksize"]), r["threads"]) for r in records})
    for sparsity, bsz, threads in keys:
        sel = [r for r in records if r["sparsity"] == sparsity and
               tuple(r["blocksize"]) == bsz and r["threads"] == threads]
        entry = {"sparsity": sparsity, "blocksize": list(bsz), "threads": threads,
                 "cases": len(sel), "format": sel[0].get("format"),
                 "geomean_speedup": geomean([r["speedup"] for r in sel]),
                 "geomean_ceiling_fraction": geomean([r["ceiling_fraction"] for r in sel]),
                 "geomean_ceiling_fraction_of_min": geomean(
                     [r["ceiling_fraction_of_min"] for r in sel]),
                 "geomean_peer_ceiling_fraction": geomean(
                     [r.get("peer_ceiling_fraction") for r in sel])}
        if any(r.get("thread_scaling") for r in sel):
            entry["geomean_thread_scaling"] = geomean([r.get("thread_scaling") for r in sel])
        out.append(entry)
    return out


def _pct(v):
    return f"{100 * v:.0f}"


def make_table(result):
    """Every contender's min/median per case, then the geometric means and ceilings."""
    text = contenders_table(result["records"])
    rows = [dict(s, bs="dense" if s.get("format") == "dense" else
                 f"{s['blocksize'][0]}x{s['blocksize'][1]}") for s in result["summary"]]
    text += "\n\nGeometric means over the shapes (speedup: best INT8 peer / ours; % ceiling: " \
            "ours on the stored blocks, the peer on the dense product)\n"
    text += format_table(rows, [("sparsity", "sparsity", lambda v: f"{v:.0%}"),
                                ("block", "bs", "s"), ("threads", "threads", "d"),
                                ("cases", "cases", "d"),
                                ("speedup", "geomean_speedup", lambda v: f"{v:.2f}x"),
                                ("% ceil", "geomean_ceiling_fraction", _pct),
                                ("% ceil (min)", "geomean_ceiling_fraction_of_min", _pct),
                                ("peer % ceil", "geomean_peer_ceiling_fraction", _pct),
                                ("scaling vs 1st threads", "geomean_thread_scaling", ".2f")])
    text += "\n\nCeilings measured in this run:\n" + _ceiling.describe(result["ceiling"])
    for name, why in result.get("peer_errors", {}).items():
        text += f"\npeer {name} unavailable: {why}"
    return text
