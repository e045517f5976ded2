"""End-to-end BERT encoder benchmark: blocksparse.nn against the runtimes people use.

Models (random weights from their configs, vocabulary 30522): BERT-Tiny (2
layers, hidden 128, 2 heads, FFN 512; for smoke tests), BERT-Mini (4, 256, 4,
1024), DistilBERT (6, 768), BERT-Base (12, 768), BERT-Large (24, 1024).
blocksparse runs ``BertModel.from_config`` with every encoder Linear weight
pruned to sparsity 0 / 0.8 / 0.9 in (4, 1) blocks (four consecutive output
rows in one input column) and quantized to INT8 (activations per token,
dynamically), with INT8 attention (``attention="int8"``).  The peers (:mod:`.bert_peers`: PyTorch dynamic INT8, ONNX
Runtime dynamic and static QDQ INT8, OpenVINO on the static QDQ model; PyTorch
float32 on request) run the **same pruned weights**, copied from the float
model made from the same seed, so every contender computes the same function;
``cosine_to_fp32`` (per contender, batch-1 case) is the mean cosine of its
last hidden states to blocksparse's float32 model on the same input.

Cases: batch 1 x seq 128 latency and batch 8 x seq 128 throughput, at each
thread count.  Per (model, sparsity, case) every contender at every thread
count is timed in interleaved rounds (:func:`._common.interleave`, with a pause of
0.1 s before each contender, so that the previous library's threads have stopped
spinning);
``speedup`` is the median over rounds of (best INT8 peer / ours).  With
``contention`` levels (e.g. ``[0, 1, 2]``) the same rounds are repeated with
that many busy-looping processes beside them (:mod:`._contention`) and each
contender's ``slowdown`` (median under load / median without) is recorded in
the same run.  ``ceiling_fraction``: the encoder Linear products'
multiply-adds (stored blocks for ours, dense for the peers; attention not
counted) per second over the ``vpdpbusd`` ceiling (per core times threads).

Without ``quick``, a per-op time breakdown of one BERT-Base layer (90 %,
INT8, batch 1 x seq 128) follows: the four INT8 SpMMs, attention, the fused
add + LayerNorm (+ quantization) kernels, the per-token quantization of the
FFN1 output, and the rest ("python overhead", the layer's time minus its
pieces', each piece timed alone, fastest of >= 20 runs).
"""
import argparse
import time

import numpy as np

from . import ceiling as _ceiling
from ._common import (arg, contender_stats, contenders_table, format_table, interleave,
                      machine_description, ours_record, paired_ratio, say, thread_limits,
                      time_call)
from ._contention import busy_processes
from .bert_peers import INT8_PEERS, PEERS, BertPeers

VOCAB = 30522
MODELS = {
    "BERT-Tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                      intermediate_size=512),
    "BERT-Mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                      intermediate_size=1024),
    "DistilBERT": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12,
                       intermediate_size=3072),
    "BERT-Base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                      intermediate_size=3072),
    "BERT-Large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                       intermediate_size=4096),
}
DEFAULT_MODELS = ("BERT-Mini", "DistilBERT", "BERT-Base", "BERT-Large")
QUICK_MODELS = ("BERT-Mini", "BERT-Base")
DEFAULT_PEERS = INT8_PEERS          # torch_fp32 only when asked for: it is slow and not INT8
SPARSITY = [0.0, 0.8, 0.9]
THREADS = [1, 2]
SEQ = 128
BATCHES = {"latency": 1, "throughput": 8}
BLOCKSIZE = (4, 1)
OURS = "blocksparse"
# pause before each contender's turn: ONNX Runtime's threads spin for some 50 ms after
# a call, and a library starting while they do ran on one core's worth of time
SETTLE_S = 0.1


def bert_config(name):
    """The configuration dict of model `name` (a key of :data:`MODELS`)."""
    return dict(MODELS[name], model_type="bert", vocab_size=VOCAB, max_position_embeddings=512,
                type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)


def inputs(batch, seq, seed=0):
    """Random token ids (avoiding the low, special ids) and an all-ones mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(batch, seq))
    return ids, np.ones_like(ids)


def linear_macs(model, tokens, stored=True):
    """Multiply-adds of the encoder's Linear products for `tokens` tokens.

    `stored`: only the stored blocks' weights (what a block-sparse kernel
    does); else the dense weight shapes (what a dense library does).
    """
    total = 0
    for layer in model.encoder:
        for lin in layer.linears:
            w = lin.weight
            w = getattr(w, "weight", w)  # QuantizedMatrix -> its int8 BlockSparseMatrix
            total += (w.nnz if stored and hasattr(w, "nnz") else
                      lin.in_features * lin.out_features)
    return total * tokens


def _cosine(a, b):
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, np.float64).reshape(-1, b.shape[-1])
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


# ---- per-op breakdown -----------------------------------------------------------------

def layer_breakdown(threads, repeat, sparsity=0.9, seed=0):
    """Times (s) of the pieces of one BERT-Base layer, batch 1 x seq 128."""
    from blocksparse.nn import BertModel, _ops
    cfg = dict(bert_config("BERT-Base"), num_hidden_layers=2)
    model = BertModel.from_config(cfg, seed=seed, sparsity=sparsity, blocksize=BLOCKSIZE,
                                  dtype="int8", attention="int8")
    layer, nxt = model.encoder.layers
    H, N, B = 768, SEQ, 1
    ids, _ = inputs(B, SEQ)
    x, xq = model.embeddings._forward(ids, None, layer.input_spec)
    att = layer.attention
    qkv = att.qkv._forward(x, xq)
    ctx = np.empty((H, N), np.float32)
    int8 = att.precision == "int8"
    c, cq = _ops._attention(qkv, B, SEQ, att.num_heads, None, ctx, True, int8)
    a = att.out._forward(c, cq)
    h1, h1q = layer.ln1._forward(a, x, layer.ffn1.input_spec, out=np.empty_like(a))
    inter = layer.ffn1._forward(h1, h1q, layer.activation)
    iq = _ops._quantize_tokens(inter)
    o = layer.ffn2._forward(inter, iq)
    scratch = np.empty_like(o)
    ops = {
        "spmm_qkv": lambda: att.qkv._forward(x, xq),
        "attention": lambda: _ops._attention(qkv, B, SEQ, att.num_heads, None, ctx, True, int8),
        "spmm_attn_out": lambda: att.out._forward(c, cq),
        "add_layernorm_1": lambda: layer.ln1._forward(a, x, layer.ffn1.input_spec, out=scratch),
        "spmm_ffn1_gelu": lambda: layer.ffn1._forward(h1, h1q, layer.activation),
        "quantize_ffn1_out": lambda: _ops._quantize_tokens(inter),
        "spmm_ffn2": lambda: layer.ffn2._forward(inter, iq),
        "add_layernorm_2": lambda: layer.ln2._forward(o, h1, nxt.input_spec, out=scratch),
    }
    with thread_limits(threads):
        stats = {k: time_call(f, repeat=repeat, warmup=3) for k, f in ops.items()}
        whole = time_call(lambda: layer._forward(x, xq, None, B, SEQ, nxt.input_spec),
                          repeat=repeat, warmup=3)
    # attribution uses the fastest run of each piece: on a shared machine the
    # medians carry other processes' noise, which would land in "overhead"
    times = {k: v["min"] for k, v in stats.items()}
    total = whole["min"]
    groups = {
        "spmm": sum(v for k, v in times.items() if k.startswith("spmm")),
        "attention": times["attention"],
        "layernorm": times["add_layernorm_1"] + times["add_layernorm_2"],
        "quantize": times["quantize_ffn1_out"],
    }
    groups["python_overhead"] = total - sum(groups.values())
    return {"threads": threads, "sparsity": sparsity, "attention": att.precision,
            "layer_s": total,
            "layer_median_s": whole["median"], "ops_s": times,
            "ops_median_s": {k: v["median"] for k, v in stats.items()}, "groups_s": groups,
            "groups_fraction": {k: v / total for k, v in groups.items()},
            "timing": "min of the runs (medians in *_median_s)"}


# ---- the run -------------------------------------------------------------------------------

def _settings(args):
    quick = bool(arg(args, "quick", False))
    models = list(arg(args, "models", None) or (QUICK_MODELS if quick else DEFAULT_MODELS))
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; choose from {list(MODELS)}")
    peers = arg(args, "peers", None)
    peers = list(DEFAULT_PEERS if peers is None else [p for p in peers if p in PEERS])
    levels = sorted({0, *(int(c) for c in (arg(args, "contention", None) or [0]))})
    if levels[0] < 0:
        raise ValueError("contention: busy process counts must be >= 0")
    return {
        "quick": quick, "models": models,
        "sparsity": list(arg(args, "sparsity", None) or ([0.9] if quick else SPARSITY)),
        "threads": list(arg(args, "threads", None) or THREADS),
        "cases": {"latency": BATCHES["latency"]} if quick else dict(BATCHES),
        "seq": int(arg(args, "seq", None) or SEQ),
        "peers": peers, "contention": levels,
        # (rounds, calls per round) per case
        "timing": {"latency": (3, 3) if quick else (5, 4),
                   "throughput": (2, 1) if quick else (3, 2)},
        "breakdown": bool(arg(args, "breakdown", not quick)),
    }


def run(args=None, progress=None):
    """Run the suite.

    Parameters
    ----------
    args : argparse.Namespace, optional
        quick, models, sparsity, threads, peers (names from
        :data:`.bert_peers.PEERS`; None: the INT8 ones), contention (busy
        process counts, e.g. [0, 1, 2]), seq, breakdown; missing or None ones
        take the defaults.
    progress : callable, optional
        Called with a message per step.

    Returns
    -------
    dict
        ``{"name", "machine", "ceiling", "records", "breakdown", "peer_errors",
        "peer_info", "settings", "table"}``.
    """
    from blocksparse.nn import BertModel
    s = _settings(args or argparse.Namespace())
    threads_list, seq = s["threads"], s["seq"]
    say(progress, "measuring the ceilings")
    ceiling = _ceiling.measure(threads_list, quick=s["quick"])
    records, peer_errors, peer_info = [], {}, {}
    for name in s["models"]:
        cfg = bert_config(name)
        for sp in s["sparsity"]:
            say(progress, f"{name} {sp:g}: building blocksparse's model")
            kw = dict(seed=0, sparsity=None if sp == 0 else sp, blocksize=BLOCKSIZE)
            t0 = time.perf_counter()
            model = BertModel.from_config(cfg, dtype="int8", attention="int8", **kw)
            build_s = time.perf_counter() - t0
            reference = BertModel.from_config(cfg, dtype="float32", **kw)
            peers = BertPeers(reference, s["peers"], seq=seq, note=lambda m: say(progress, m)) \
                if s["peers"] else None
            try:
                for case, batch in s["cases"].items():
                    records += _time_case(name, cfg, sp, case, batch, s, model, reference,
                                          peers, ceiling, build_s, progress)
            finally:
                if peers is not None:
                    peer_errors.update({f"{name}/{k}": v for k, v in peers.errors.items()})
                    peer_info.update({f"{name}/{k}": v for k, v in peers.info.items()})
                    peers.close()
            model = reference = peers = None  # free them before the next model
    breakdown, breakdown_error = [], None
    if s["breakdown"]:
        say(progress, "per-op breakdown of one BERT-Base layer")
        try:
            breakdown = [layer_breakdown(t, repeat=20) for t in threads_list]
        except Exception as exc:  # noqa: BLE001  (internals changed: report, keep the rest)
            breakdown_error = f"{type(exc).__name__}: {exc}"
    say(progress, "measuring the ceilings again")
    ceiling = _ceiling.merge(ceiling, _ceiling.measure(threads_list, quick=s["quick"]))
    for r in records:
        ceil = _ceiling.int8_ceiling(ceiling, r["threads"])
        for cname, c in r["contenders"].items():
            work = r["linear_macs"] if cname == OURS else r["linear_macs_dense"]
            c["ceiling_fraction"] = work / c["median_s"] / ceil \
                if ceil and c["kind"] != "float" else None
        r["ceiling_fraction"] = r["contenders"][OURS]["ceiling_fraction"]
    result = {"name": "BERT encoder end to end (INT8, (4, 1) blocks)",
              "machine": machine_description(), "ceiling": ceiling, "records": records,
              "breakdown": breakdown, "breakdown_error": breakdown_error,
              "peer_errors": peer_errors, "peer_info": peer_info,
              "settings": dict(s, blocksize=list(BLOCKSIZE),
                               speedup_basis="median over rounds of best INT8 peer / ours",
                               ceiling_basis="encoder Linear MACs / (int8_macs_per_core x "
                                             "threads)")}
    result["table"] = make_table(result)
    return result


def _time_case(name, cfg, sp, case, batch, s, model, reference, peers, ceiling, build_s,
               progress):
    """Time one (model, sparsity, case) at every thread count and contention level."""
    threads_list, seq = s["threads"], s["seq"]
    ids, mask = inputs(batch, seq)
    contenders, threads_of, owner = {}, {}, {}
    for t in threads_list:
        key = f"{OURS} t{t}"
        contenders[key] = (lambda: model(ids, mask))
        threads_of[key], owner[key] = t, (OURS, t)
        for peer in (peers.names if peers is not None else []):
            fn = peers.runner(peer, ids, mask, t)
            if fn is not None:
                key = f"{peer} t{t}"
                contenders[key] = fn
                threads_of[key], owner[key] = t, (peer, t)
    # agreement on the same input: every contender against the float32 model
    cosines = {}
    if batch == 1:
        want = reference(ids, mask)
        for key, fn in contenders.items():
            if owner[key][1] == threads_list[0]:
                out = fn()
                out = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
                cosines[owner[key][0]] = _cosine(out, want)
    rounds, calls = s["timing"][case]
    timed_at = {}
    for level in s["contention"]:
        say(progress, f"{name} {sp:g} {case}: {len(contenders)} contenders, {level} busy "
                      f"process(es)")
        with busy_processes(level):
            timed_at[level] = interleave(contenders, rounds, calls, threads=threads_of,
                                         settle=SETTLE_S)
    timed = timed_at[0]
    macs = linear_macs(model, batch * seq)
    macs_dense = linear_macs(model, batch * seq, stored=False)
    out = []
    for t in threads_list:
        here, here_timed = {}, {}
        for key, (who, tt) in owner.items():
            if tt != t:
                continue
            kind = "ours" if who == OURS else peers.kind(who)
            here[who] = dict(contender_stats(timed[key]), kind=kind)
            if who in cosines:
                here[who]["cosine_to_fp32"] = cosines[who]
            here_timed[who] = timed[key]
        int8_names = [n for n, c in here.items() if c["kind"] == "int8"]
        rec = {"case": f"{name} s={sp:g} {case} b{batch}xs{seq} t{t}", "model": name,
               "shape": name, "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
               "sparsity": sp, "blocksize": list(BLOCKSIZE), "dtype": "int8", "path": case,
               "batch": batch, "seq": seq, "N": batch * seq, "threads": t,
               "contenders": here, "linear_macs": macs, "linear_macs_dense": macs_dense,
               "build_s": build_s}
        rec.update(ours_record(here, OURS, here_timed, int8_names))
        rec["latency_ms"] = rec["time_s"] * 1e3 if case == "latency" else None
        rec["throughput_seq_s"] = batch / rec["time_s"]
        if t != threads_list[0]:
            rec["thread_scaling"] = paired_ratio(timed[f"{OURS} t{t}"],
                                                 timed[f"{OURS} t{threads_list[0]}"])
            rec["thread_scaling_from"] = threads_list[0]
        if len(s["contention"]) > 1:
            rec["contention"] = {}
            for level in s["contention"][1:]:
                entry = {}
                for key, (who, tt) in owner.items():
                    if tt == t:
                        st = contender_stats(timed_at[level][key])
                        entry[who] = {"median_s": st["median_s"], "min_s": st["min_s"],
                                      "slowdown": st["median_s"] / here[who]["median_s"]}
                rec["contention"][str(level)] = entry
        out.append(rec)
    return out


def make_table(result):
    """Contenders per case, contention slowdowns, the layer breakdown and the ceilings."""
    recs = result["records"]
    text = contenders_table(recs) if recs else "no records"
    cont = [r for r in recs if r.get("contention")]
    if cont:
        rows = []
        for r in cont:
            for level, entry in r["contention"].items():
                row = {"case": r["case"], "busy": int(level)}
                row.update({n: e["slowdown"] for n, e in entry.items()})
                rows.append(row)
        names = [n for n in r["contenders"]]
        text += ("\n\nSlowdown with busy-looping processes beside the run (median under load"
                 " / median without, same run)\n")
        text += format_table(rows, [("case", "case", "s"), ("busy", "busy", "d")] +
                             [(n, n, lambda v: f"{v:.2f}x") for n in names])
    cos = [r for r in recs if any("cosine_to_fp32" in c for c in r["contenders"].values())]
    if cos:
        names = list(cos[0]["contenders"])
        rows = [dict({"case": r["case"]}, **{n: c.get("cosine_to_fp32")
                                             for n, c in r["contenders"].items()})
                for r in cos if r["threads"] == cos[0]["threads"]]
        text += "\n\nMean cosine of the last hidden states to blocksparse's float32 model\n"
        text += format_table(rows, [("case", "case", "s")] +
                             [(n, n, lambda v: f"{v:.5f}") for n in names])
    for b in result.get("breakdown") or []:
        text += (f"\n\none BERT-Base layer, sparsity {b['sparsity']:g}, INT8, b1 x s{SEQ}, "
                 f"{b['threads']} thread(s): {b['layer_s'] * 1e3:.3f} ms (fastest run; "
                 f"median {b['layer_median_s'] * 1e3:.3f} ms)")
        for k, v in b["ops_s"].items():
            text += f"\n  {k:<20} {v * 1e3:8.3f} ms"
        for k, v in b["groups_s"].items():
            text += f"\n  = {k:<18} {v * 1e3:8.3f} ms  {b['groups_fraction'][k]:6.1%}"
    if result.get("breakdown_error"):
        text += f"\n\nlayer breakdown failed: {result['breakdown_error']}"
    text += "\n\nCeilings measured in this run:\n" + _ceiling.describe(result["ceiling"])
    for k, v in result.get("peer_errors", {}).items():
        text += f"\npeer {k} unavailable: {v}"
    for k, v in result.get("peer_info", {}).items():
        text += f"\npeer {k}: {v}"
    return text
