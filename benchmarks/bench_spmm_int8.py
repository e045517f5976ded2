"""INT8 block-sparse x dense benchmark against every dense and sparse peer installed.

Cases (asv-style grid): weights (M, K) in the BERT shapes, N tokens, sparsity,
blocksize (4, 1) (four consecutive output rows in one input column) and (1, 4)
(four consecutive weights of one row along K), threads.  blocksparse runs the
integer core ``W @ X`` (int8 (M, K) times uint8 (K, N), exact int32 out);
the peers run the same product in their own layout:

* ``torch_int_mm``      torch._int_mm, int8 x int8 -> int32 (oneDNN)
* ``torch_qlinear``     torch.ao quantized Linear, onednn engine (uint8 in and out)
* ``ort_matmulinteger`` ONNX Runtime MatMulInteger, uint8 x int8 -> int32
* ``numpy_f32``         dense float32 through NumPy's BLAS
* ``scipy_bsr_f32``     scipy.sparse.bsr_array float32 with the same blocks

Reported per case: median time, effective GOPS (2MNK/t, dense-equivalent),
actual GOPS (on the stored blocks only), the fraction of the vpdpbusd ceiling
(measured by vnni_ceiling.py, times the thread count) on the stored work, and
the ratio to the best dense INT8 peer of the same thread count.

Run ``python benchmarks/bench_spmm_int8.py [--quick] [--json PATH]`` or via
``python -m blocksparse bench``.
"""
import argparse
import math
import os
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import blocksparse  # noqa: E402
import vnni_ceiling  # noqa: E402
from _common import machine_description, report, time_call  # noqa: E402

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096)]
TOKENS = [128, 384]
SPARSITY = [0.7, 0.8, 0.9]
BLOCKSIZES = [(4, 1), (1, 4)]
THREADS = [1, 2]
INT8_PEERS = ("torch_int_mm", "torch_qlinear", "ort_matmulinteger")


def _sparse_int8(rng, M, K, sparsity, blocksize):
    W = rng.standard_normal((M, K)).astype(np.float32)
    return blocksparse.quantize(blocksparse.prune(W, sparsity, blocksize=blocksize))


# ---- peers ----------------------------------------------------------------------


def _torch_peers(M, K, N, threads):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    peers = {}
    a = torch.randint(-128, 127, (N, K), dtype=torch.int8)
    b = torch.randint(-127, 127, (K, M), dtype=torch.int8)
    peers["torch_int_mm"] = lambda: torch._int_mm(a, b)
    try:
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        torch.backends.quantized.engine = "onednn"
        ql = torch.ao.nn.quantized.Linear(K, M, dtype=torch.qint8)
        wq = torch.quantize_per_tensor(torch.randn(M, K), 0.05, 0, torch.qint8)
        ql.set_weight_bias(wq, None)
        ql.scale, ql.zero_point = 1.0, 0
        xq = torch.quantize_per_tensor(torch.rand(N, K), 1 / 255, 0, torch.quint8)
        peers["torch_qlinear"] = lambda: ql(xq)
    except (RuntimeError, AttributeError):
        pass
    return peers


def _ort_peer(M, K, N, threads):
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {}
    rng = np.random.default_rng(0)
    B = helper.make_tensor("B", TensorProto.INT8, [K, M],
                           rng.integers(-127, 128, (K, M), dtype=np.int8).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "spmm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [N, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [N, M])], [B])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (N, K), dtype=np.uint8)
    del onnx
    return {"ort_matmulinteger": lambda: sess.run(None, {"A": a})}


def _dense_peers(M, K, N, threads):
    peers = {}
    peers.update(_torch_peers(M, K, N, threads))
    peers.update(_ort_peer(M, K, N, threads))
    Wf = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    Xf = np.ones((K, N), dtype=np.float32)
    peers["numpy_f32"] = lambda: Wf @ Xf
    return peers


# ---- the run ----------------------------------------------------------------------


def _grid(args):
    quick = getattr(args, "quick", False)
    shapes = getattr(args, "shapes", None) or (SHAPES[:3] if quick else SHAPES)
    tokens = getattr(args, "tokens", None) or ([128] if quick else TOKENS)
    sparsity = getattr(args, "sparsity", None) or SPARSITY
    threads = getattr(args, "threads", None) or THREADS
    blocksizes = getattr(args, "blocksizes", None) or BLOCKSIZES
    return shapes, tokens, sparsity, threads, blocksizes


def run(args=None, progress=None):
    """Run the grid; returns {"name", "machine", "ceiling", "records", "summary", "table"}.

    Parameters
    ----------
    args : argparse.Namespace, optional
        Attributes quick, shapes, tokens, sparsity, threads, blocksizes
        (missing ones take the defaults).
    progress : callable, optional
        Called with a short string before each case.
    """
    shapes, tokens, sparsities, threads_list, blocksizes = _grid(args or argparse.Namespace())
    reps = 15 if getattr(args, "quick", False) else 30
    ceiling = vnni_ceiling.measure()
    macs_per_s = ceiling["avx512_vnni_macs"] or ceiling["avx_vnni_macs"]
    rng = np.random.default_rng(0)
    records = []
    saved_threads = blocksparse.get_num_threads()
    try:
        for M, K in shapes:
            for N in tokens:
                X = rng.integers(0, 256, (K, N), dtype=np.uint8)
                for threads in threads_list:
                    blocksparse.set_num_threads(threads)
                    peer_times = {}
                    for name, fn in _dense_peers(M, K, N, threads).items():
                        if progress:
                            progress(f"{M}x{K} N={N} t={threads} {name}")
                        peer_times[name] = time_call(fn, repeat=reps)["median"]
                    int8_peers = {k: v for k, v in peer_times.items() if k in INT8_PEERS}
                    best_name = min(int8_peers, key=int8_peers.get) if int8_peers else "numpy_f32"
                    best = peer_times[best_name]
                    for sparsity in sparsities:
                        for bsz in blocksizes:
                            if progress:
                                progress(f"{M}x{K} N={N} t={threads} {sparsity:.0%} {bsz}")
                            Q = _sparse_int8(rng, M, K, sparsity, bsz)
                            W = Q.weight
                            t = time_call(lambda: W @ X, repeat=reps)["median"]
                            S = W.astype(np.float32).to_scipy()
                            Xf = X.astype(np.float32)
                            t_sp = time_call(lambda: S @ Xf, repeat=max(3, reps // 5))["median"] \
                                if threads == threads_list[0] else None
                            actual = W.nnz * N
                            records.append({
                                "case": f"{M}x{K} N={N} {sparsity:.0%} {bsz[0]}x{bsz[1]} t{threads}",
                                "M": M, "K": K, "N": N, "sparsity": sparsity,
                                "blocksize": list(bsz), "threads": threads,
                                "isa": blocksparse.get_isa(), "dtype": "u8s8s32",
                                "time_s": t,
                                "gops_eff": 2 * M * K * N / t / 1e9,
                                "gops_actual": 2 * actual / t / 1e9,
                                "ceiling_fraction": (actual / t) / (macs_per_s * threads)
                                if macs_per_s else None,
                                "peer_times_s": peer_times,
                                "best_peer": best_name,
                                "speedup": best / t,
                                "ratio_to_best_int8": t / best if int8_peers else None,
                                "scipy_bsr_f32_s": t_sp,
                            })
    finally:
        blocksparse.set_num_threads(saved_threads)
    summary = summarize(records)
    return {"name": "spmm_int8", "machine": machine_description(), "ceiling": ceiling,
            "records": records, "summary": summary, "table": format_table(records, summary)}


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(records):
    """Geometric means of time / best dense INT8 peer per (sparsity, blocksize, threads),
    and the 2-thread over 1-thread speedup."""
    out = []
    keys = sorted({(r["sparsity"], tuple(r["blocksize"]), r["threads"]) for r in records})
    for sparsity, bsz, threads in keys:
        sel = [r for r in records if r["sparsity"] == sparsity and tuple(r["blocksize"]) == bsz
               and r["threads"] == threads]
        entry = {"sparsity": sparsity, "blocksize": list(bsz), "threads": threads,
                 "cases": len(sel),
                 "geomean_ratio_to_best_int8": _geomean([r["ratio_to_best_int8"] for r in sel]),
                 "geomean_ceiling_fraction": _geomean([r["ceiling_fraction"] for r in sel])}
        if threads != 1:
            pairs = []
            for r in sel:
                one = [q for q in records if q["threads"] == 1 and q["M"] == r["M"] and
                       q["K"] == r["K"] and q["N"] == r["N"] and q["sparsity"] == sparsity and
                       tuple(q["blocksize"]) == bsz]
                if one:
                    pairs.append(one[0]["time_s"] / r["time_s"])
            entry["geomean_thread_speedup"] = _geomean(pairs)
        out.append(entry)
    return out


def format_table(records, summary):
    lines = [f"{'case':<34} {'time us':>9} {'best peer':>18} {'peer us':>9} {'ratio':>6} "
             f"{'ceil%':>6} {'eff GOPS':>9}"]
    for r in records:
        peer = r["peer_times_s"][r["best_peer"]]
        ceil = f"{100 * r['ceiling_fraction']:.0f}" if r["ceiling_fraction"] else "-"
        lines.append(f"{r['case']:<34} {r['time_s'] * 1e6:9.1f} {r['best_peer']:>18} "
                     f"{peer * 1e6:9.1f} {r['time_s'] / peer:6.3f} {ceil:>6} {r['gops_eff']:9.0f}")
    lines.append("")
    lines.append(f"{'sparsity':>8} {'block':>6} {'thr':>4} {'n':>3} {'geomean t/best':>15} "
                 f"{'ceil%':>6} {'2t/1t':>6}")
    for s in summary:
        g = s["geomean_ratio_to_best_int8"]
        c = s["geomean_ceiling_fraction"]
        sp_ = s.get("geomean_thread_speedup")
        lines.append(f"{s['sparsity']:8.0%} {s['blocksize'][0]}x{s['blocksize'][1]:<4} "
                     f"{s['threads']:>4} {s['cases']:>3} {'-' if g is None else f'{g:.3f}':>15} "
                     f"{'-' if c is None else f'{100 * c:.0f}':>6} "
                     f"{'-' if sp_ is None else f'{sp_:.2f}':>6}")
    return "\n".join(lines)


def _parse_list(text, conv):
    return [conv(t) for t in text.split(",") if t.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 shapes, N=128 only")
    parser.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in x.split("x"))
                                                    for x in s.split(",")])
    parser.add_argument("--tokens", type=lambda s: _parse_list(s, int))
    parser.add_argument("--sparsity", type=lambda s: _parse_list(s, float))
    parser.add_argument("--threads", type=lambda s: _parse_list(s, int))
    parser.add_argument("--blocksizes", type=lambda s: [tuple(int(v) for v in x.split("x"))
                                                        for x in s.split(",")])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    result = run(args, progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
