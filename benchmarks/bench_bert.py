"""End-to-end BERT encoder benchmark: blocksparse.nn against the runtimes people use.

Models (random weights from their configs, vocabulary 30522): BERT-Mini (4
layers, hidden 256, 4 heads, FFN 1024), DistilBERT (6, 768), BERT-Base (12,
768), BERT-Large (24, 1024).  blocksparse runs ``BertModel.from_config`` with
every encoder Linear weight pruned to sparsity 0 / 0.8 / 0.9 in (4, 1) blocks
(four consecutive output rows in one input column) and quantized to INT8
(activations per token, dynamically).  Peers, when importable, run the same
configuration in the same process:

* ``torch_fp32``  transformers BertModel, float32, torch.inference_mode
* ``torch_int8``  the same after torch.ao.quantization.quantize_dynamic (qint8 Linear)
* ``ort_int8``    ONNX Runtime on that model exported to ONNX and quantized with
                  onnxruntime.quantization.quantize_dynamic (QInt8 weights)

Cases: batch 1 x seq 128 latency (median of >= 20 runs) and batch 8 x seq
128 throughput (sequences/s from the median batch time), for 1 and 2
threads.  ``speedup`` is the best peer's time over ours.  Also a per-op time
breakdown of one BERT-Base layer (90 %, INT8, batch 1 x seq 128): the four
INT8 SpMMs, attention, the fused add + LayerNorm (+ quantization) kernels,
the per-token quantization of the FFN1 output, and the rest ("python
overhead": the layer's time minus its pieces', each piece timed alone
through its own Python call, so the rest can come out slightly negative when
the pieces gain from warm caches inside the layer).  The breakdown uses the
fastest of >= 20 runs of each piece (medians are in the JSON): on a shared
machine the medians carry other processes' noise.

On a machine with 2 cores shared with other work, 2-thread times can jump
by orders of magnitude (every OpenMP region waits for a descheduled
thread); compare 2-thread numbers only from a quiet run.

Run ``python benchmarks/bench_bert.py [--quick] [--threads 1 2] [--json PATH]``
or via ``python -m blocksparse bench``.  The machine is described in every
result (CPU, ISA, threads, library versions): compare numbers only within one
run on one machine.
"""
import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import blocksparse  # noqa: E402
from _common import machine_description, time_call, write_json  # noqa: E402
from blocksparse.nn import BertModel  # noqa: E402
from blocksparse.nn import _ops  # noqa: E402

VOCAB = 30522
MODELS = {
    "BERT-Mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                      intermediate_size=1024),
    "DistilBERT": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12,
                       intermediate_size=3072),
    "BERT-Base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                      intermediate_size=3072),
    "BERT-Large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                       intermediate_size=4096),
}
SPARSITY = [0.0, 0.8, 0.9]
THREADS = [1, 2]
SEQ = 128
BATCHES = {"latency": 1, "throughput": 8}
BLOCKSIZE = (4, 1)
LATENCY_RUNS = 20
THROUGHPUT_RUNS = 5
PEERS = ("torch_fp32", "torch_int8", "ort_int8")


def bert_config(name):
    return dict(MODELS[name], model_type="bert", vocab_size=VOCAB, max_position_embeddings=512,
                type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)


@contextlib.contextmanager
def bs_threads(n):
    saved = blocksparse.get_num_threads()
    blocksparse.set_num_threads(n)
    try:
        yield
    finally:
        blocksparse.set_num_threads(saved)


def inputs(batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(batch, seq))
    return ids, np.ones_like(ids)


# ---- peers -----------------------------------------------------------------------

class Peers:
    """The peer runtimes for one model configuration, built once, timed per case."""

    def __init__(self, name, enabled, note):
        self.fns, self.errors = {}, {}
        self._tmp = None
        try:
            import torch
            import transformers
        except ImportError as exc:
            self.errors["torch"] = f"not importable: {exc}"
            return
        self.torch = torch
        cfg = bert_config(name)
        tcfg = transformers.BertConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
        torch.manual_seed(0)
        model = transformers.BertModel(tcfg, add_pooling_layer=False).eval()
        self.model = model
        if "torch_fp32" in enabled:
            self.fns["torch_fp32"] = self._torch_fn(model)
        if "torch_int8" in enabled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                           dtype=torch.qint8)
            self.fns["torch_int8"] = self._torch_fn(q)
        if "ort_int8" in enabled:
            try:
                self._ort_path = self._export_ort(model, note)
                self.fns["ort_int8"] = None  # sessions are per thread count
            except Exception as exc:  # export or quantization failed: say why, go on
                self.errors["ort_int8"] = f"{type(exc).__name__}: {exc}"[:300]

    def _torch_fn(self, model):
        torch = self.torch

        def make(ids, mask):
            ti, tm = torch.tensor(ids), torch.tensor(mask)

            def run():
                with torch.inference_mode():
                    return model(input_ids=ti, attention_mask=tm).last_hidden_state
            return run
        return make

    def _export_ort(self, model, note):
        import onnxruntime  # noqa: F401
        from _onnx import export_bert_int8
        self._tmp = tempfile.TemporaryDirectory(prefix="bench_bert_")
        note("exporting to ONNX")
        return export_bert_int8(model, self._tmp.name)

    def runner(self, peer, ids, mask, threads):
        """A no-argument callable running the peer on (ids, mask) with `threads`."""
        if peer == "ort_int8":
            from _onnx import session
            sess = session(self._ort_path, threads)
            feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
            return lambda: sess.run(None, feed)
        self.torch.set_num_threads(threads)
        return self.fns[peer](ids, mask)

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()


# ---- per-op breakdown -----------------------------------------------------------------

def layer_breakdown(threads, repeat, sparsity=0.9, seed=0):
    """Times (s) of the pieces of one BERT-Base layer, batch 1 x seq 128."""
    cfg = dict(bert_config("BERT-Base"), num_hidden_layers=2)
    model = BertModel.from_config(cfg, seed=seed, sparsity=sparsity, blocksize=BLOCKSIZE,
                                  dtype="int8")
    layer, nxt = model.encoder.layers
    H, N, B = 768, SEQ, 1
    ids, _ = inputs(B, SEQ)
    x, xq = model.embeddings._forward(ids, None, layer.attention.qkv)
    att = layer.attention
    qkv = att.qkv._forward(x, xq)
    ctx = np.empty((H, N), np.float32)
    c, cq = _ops._attention(qkv, B, SEQ, att.num_heads, None, ctx, True)
    a = att.out._forward(c, cq)
    h1, h1q = layer.ln1._forward(a, x, layer.ffn1, out=np.empty_like(a))
    inter = layer.ffn1._forward(h1, h1q, layer.activation)
    iq = _ops._quantize_tokens(inter)
    o = layer.ffn2._forward(inter, iq)
    scratch = np.empty_like(o)
    ops = {
        "spmm_qkv": lambda: att.qkv._forward(x, xq),
        "attention": lambda: _ops._attention(qkv, B, SEQ, att.num_heads, None, ctx, True),
        "spmm_attn_out": lambda: att.out._forward(c, cq),
        "add_layernorm_1": lambda: layer.ln1._forward(a, x, layer.ffn1, out=scratch),
        "spmm_ffn1_gelu": lambda: layer.ffn1._forward(h1, h1q, layer.activation),
        "quantize_ffn1_out": lambda: _ops._quantize_tokens(inter),
        "spmm_ffn2": lambda: layer.ffn2._forward(inter, iq),
        "add_layernorm_2": lambda: layer.ln2._forward(o, h1, nxt.attention.qkv, out=scratch),
    }
    with bs_threads(threads):
        stats = {k: time_call(f, repeat=repeat, warmup=3) for k, f in ops.items()}
        layer = time_call(lambda: layer._forward(x, xq, None, B, SEQ, nxt.attention.qkv),
                          repeat=repeat, warmup=3)
    # attribution uses the fastest run of each piece: on a shared machine the
    # medians carry other processes' noise, which would land in "overhead"
    times = {k: v["min"] for k, v in stats.items()}
    total = layer["min"]
    groups = {
        "spmm": sum(v for k, v in times.items() if k.startswith("spmm")),
        "attention": times["attention"],
        "layernorm": times["add_layernorm_1"] + times["add_layernorm_2"],
        "quantize": times["quantize_ffn1_out"],
    }
    groups["python_overhead"] = total - sum(groups.values())
    return {"threads": threads, "sparsity": sparsity, "layer_s": total,
            "layer_median_s": layer["median"], "ops_s": times,
            "ops_median_s": {k: v["median"] for k, v in stats.items()}, "groups_s": groups,
            "groups_fraction": {k: v / total for k, v in groups.items()},
            "timing": "min of the runs (medians in *_median_s)"}


# ---- the run -------------------------------------------------------------------------------

def _arg(args, name, default):
    value = getattr(args, name, None)
    return default if value is None else value


def run(args, progress=None):
    """Run the suite; returns {"name", "machine", "records", "breakdown", "table"}.

    `args` is an argparse.Namespace (see the module's command line, or the
    ``blocksparse bench`` contract): quick, threads, sparsity, models,
    peers, no_peers, json.
    """
    quick = bool(_arg(args, "quick", False))
    say = progress if callable(progress) else (lambda *a, **k: None)

    def note(msg):
        try:
            say(msg)
        except TypeError:
            pass

    models = _arg(args, "models", None) or (["BERT-Mini", "BERT-Base"] if quick else list(MODELS))
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    sparsities = _arg(args, "sparsity", None) or ([0.9] if quick else SPARSITY)
    threads = _arg(args, "threads", None) or THREADS
    cases = {"latency": BATCHES["latency"]} if quick else dict(BATCHES)
    lat_runs = max(LATENCY_RUNS, int(_arg(args, "repeat", LATENCY_RUNS)))
    peers_wanted = [] if _arg(args, "no_peers", False) else list(PEERS)
    records, peer_errors = [], {}
    total = len(models) * (len(sparsities) + 1)
    done = 0
    for name in models:
        cfg = bert_config(name)
        note(f"{name}: building peers")
        peers = Peers(name, peers_wanted, note) if peers_wanted else None
        if peers is not None:
            peer_errors.update({f"{name}/{k}": v for k, v in peers.errors.items()})
        peer_times = {}
        for case, batch in cases.items():
            ids, mask = inputs(batch, SEQ)
            runs = lat_runs if case == "latency" else THROUGHPUT_RUNS
            for t in threads:
                for peer in (peers.fns if peers is not None else {}):
                    note(f"{name}: {peer} {case} {t} thread(s)")
                    fn = peers.runner(peer, ids, mask, t)
                    peer_times[(case, t, peer)] = time_call(fn, repeat=runs, warmup=2)["median"]
        if peers is not None:
            peers.close()
        done += 1
        for sp in sparsities:
            note(f"{name}: blocksparse sparsity {sp:g} (pruning, quantizing)")
            t0 = time.perf_counter()
            model = BertModel.from_config(cfg, seed=0, sparsity=None if sp == 0 else sp,
                                          blocksize=BLOCKSIZE, dtype="int8")
            build_s = time.perf_counter() - t0
            for case, batch in cases.items():
                ids, mask = inputs(batch, SEQ)
                runs = lat_runs if case == "latency" else THROUGHPUT_RUNS
                for t in threads:
                    with bs_threads(t):
                        tm = time_call(functools.partial(model, ids, mask), repeat=runs,
                                       warmup=2)
                    pt = {p: v for (c, tt, p), v in peer_times.items() if c == case and tt == t}
                    best = min(pt, key=pt.get) if pt else None
                    rec = {
                        "case": f"{name} s={sp:g} {case} b{batch}xs{SEQ} t{t}",
                        "model": name, "shape": name, "layers": cfg["num_hidden_layers"],
                        "hidden": cfg["hidden_size"], "sparsity": sp,
                        "blocksize": list(BLOCKSIZE), "dtype": "int8", "path": case,
                        "batch": batch, "seq": SEQ, "N": batch * SEQ, "threads": t,
                        "time_s": tm["median"], "time_min_s": tm["min"], "repeat": runs,
                        "latency_ms": tm["median"] * 1e3 if case == "latency" else None,
                        "throughput_seq_s": batch / tm["median"],
                        "peer_times_s": pt, "best_peer": best,
                        "peer_time_s": pt[best] if best else None,
                        "speedup": (pt[best] / tm["median"]) if best else None,
                        "build_s": build_s,
                    }
                    records.append(rec)
            model = None  # free it before the next one is built
            done += 1
            note(f"{done}/{total}")
    note("per-op breakdown of one BERT-Base layer")
    breakdown = [layer_breakdown(t, repeat=max(20, lat_runs)) for t in threads]
    result = {"name": "BERT encoder end to end (INT8, (4, 1) blocks)",
              "machine": machine_description(), "records": records,
              "breakdown": breakdown, "peer_errors": peer_errors,
              "settings": {"seq": SEQ, "batches": cases, "latency_runs": lat_runs,
                           "throughput_runs": THROUGHPUT_RUNS, "blocksize": list(BLOCKSIZE),
                           "quick": quick}}
    result["table"] = format_table(result)
    return result


def format_table(result):
    lines = []
    head = (f"{'model':<11} {'sp':>4} {'case':<10} {'thr':>3} {'ours ms':>9} "
            f"{'seq/s':>8} " + " ".join(f"{p:>10}" for p in PEERS) + f" {'speedup':>8}")
    lines.append(head)
    for r in result["records"]:
        peers = " ".join(f"{r['peer_times_s'][p] * 1e3:>10.2f}" if p in r["peer_times_s"]
                         else f"{'-':>10}" for p in PEERS)
        sp = f"{r['speedup']:>7.2f}x" if r["speedup"] else f"{'-':>8}"
        lines.append(f"{r['model']:<11} {r['sparsity']:>4.1f} {r['path']:<10} {r['threads']:>3} "
                     f"{r['time_s'] * 1e3:>9.2f} {r['throughput_seq_s']:>8.1f} {peers} {sp}")
    lines.append("(peer columns: ms per call of the same batch)")
    for b in result.get("breakdown", []):
        lines.append("")
        lines.append(f"one BERT-Base layer, sparsity {b['sparsity']:g}, INT8, b1 x s{SEQ}, "
                     f"{b['threads']} thread(s): {b['layer_s'] * 1e3:.3f} ms (fastest run; "
                     f"median {b['layer_median_s'] * 1e3:.3f} ms)")
        for k, v in b["ops_s"].items():
            lines.append(f"  {k:<20} {v * 1e3:8.3f} ms")
        for k, v in b["groups_s"].items():
            lines.append(f"  = {k:<18} {v * 1e3:8.3f} ms  {b['groups_fraction'][k]:6.1%}")
    for k, v in result.get("peer_errors", {}).items():
        lines.append(f"peer {k} unavailable: {v}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="BERT-Mini and BERT-Base at 90 %% only, batch 1 only")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default 1 2)")
    p.add_argument("--sparsity", type=float, nargs="+", help="default 0 0.8 0.9")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="default: all four")
    p.add_argument("--no-peers", action="store_true", help="time blocksparse only")
    p.add_argument("--repeat", type=int, default=LATENCY_RUNS,
                   help="latency runs per case (at least 20)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = p.parse_args(argv)
    result = run(args, progress=lambda *a, **k: print(*(x for x in a if isinstance(x, str)),
                                                      file=sys.stderr))
    print(result["table"])
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
