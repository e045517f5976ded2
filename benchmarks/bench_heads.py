"""What a task head costs on top of the encoder: task model time / bare encoder time.

A BERT-Base sequence classifier (random weights from ``BertForSequenceClassification``'s
shapes: 12 layers, hidden 768, FFN 3072, vocabulary 30522, 2 labels), every
encoder Linear weight pruned to 90 % in (4, 1) blocks (four consecutive output
rows in one input column) and quantized to INT8, batch 1 x 128 tokens, 2
threads.  The contenders share one encoder object: ``encoder`` is
``model.base(ids, mask)`` (the last hidden state, (1, 128, 768)), ``classifier``
``model(ids, mask)`` (logits (1, 2): pooler and classifier on the [CLS] row
only), and with ``--heads`` also token classification (9 labels over every
token) and question answering (start/end logits), each on the same encoder.
They run in interleaved rounds (:func:`blocksparse.bench._common.interleave`:
the order rotates, a burst of other work lands in one round of each), and
the overhead of a head is the median over rounds of (head round median /
encoder round median) - 1.  The target of issue 14: the classifier within
5 % of the encoder.

Printed: every round's medians and head / encoder ratio; per contender the
minimum and median over all timed calls, median / minimum, the paired ratio
and the range of the round ratios; whether the machine was quiet (other
processes' CPU time, load average, noisy timings).

Run in a quiet window::

    python benchmarks/bench_heads.py [--threads 2] [--rounds 30] [--calls 10]
        [--sparsity 0.9] [--heads seq,token,qa] [--json PATH] [--quick]

``--quick`` is a smoke run (BERT-Mini shapes, 3 rounds of 2 calls).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blocksparse  # noqa: E402
from blocksparse import nn  # noqa: E402
from blocksparse.bench._common import (LoadMonitor, contender_stats, interleave,  # noqa: E402
                                       paired_ratio, quiet_verdict, write_json)
from _common import format_table, machine_description  # noqa: E402

BERT_BASE = dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
BERT_MINI = dict(BERT_BASE, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024)
HEADS = ("seq", "token", "qa")


def models(cfg, sparsity, heads, seed=0):
    """{head: task model}, every one on the sequence classifier's encoder."""
    seq = nn.ModelForSequenceClassification.from_config(
        cfg, num_labels=2, seed=seed, sparsity=sparsity, dtype="int8", smoothing=None)
    rng = np.random.default_rng(seed + 1)
    out = {"seq": seq}
    for name, cls, arch, labels in (("token", nn.ModelForTokenClassification,
                                     "BertForTokenClassification", 9),
                                    ("qa", nn.ModelForQuestionAnswering,
                                     "BertForQuestionAnswering", 2)):
        linear = nn.Linear(rng.standard_normal((labels, cfg["hidden_size"]), np.float32) * 0.02,
                           np.zeros(labels, np.float32))
        config = dict(seq.base.config, architectures=[arch],
                      id2label={str(i): f"LABEL_{i}" for i in range(labels)})
        out[name] = cls(arch, seq.base, nn.Head(linear, rows="all"), config)
    return {h: out[h] for h in heads}


def round_table(timed, names):
    """One row per round: the encoder's round median, each head's and head / encoder."""
    base = timed["encoder"]["rounds"]
    rows = []
    for r, enc in enumerate(base):
        row = {"round": r + 1, "encoder_ms": enc * 1e3}
        for name in names:
            t = timed[name]["rounds"][r]
            row[f"{name}_ms"] = t * 1e3
            row[f"{name}_ratio"] = t / enc if enc > 0 else None
        rows.append(row)
    columns = [("round", "round", "d"), ("encoder ms", "encoder_ms", ".3f")]
    for name in names:
        columns += [(f"{name} ms", f"{name}_ms", ".3f"),
                    (f"{name} / encoder", f"{name}_ratio", ".4f")]
    return rows, format_table(rows, columns)


def run(threads=2, rounds=30, calls=10, sparsity=0.9, heads=("seq", "token", "qa"),
        quick=False):
    cfg = BERT_MINI if quick else BERT_BASE
    ms = models(cfg, sparsity, heads)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg["vocab_size"], size=(1, 128))
    mask = np.ones_like(ids)
    encoder = next(iter(ms.values())).base   # one encoder object under every head
    contenders = {"encoder": lambda: encoder(ids, mask)}
    for name, m in ms.items():
        contenders[name] = (lambda m=m: m(ids, mask))
    monitor = LoadMonitor().start()
    timed = interleave(contenders, rounds, calls, threads={n: threads for n in contenders})
    load = monitor.stop()
    records, stats = [], {}
    base = timed["encoder"]
    for name in contenders:
        stats[name] = contender_stats(timed[name])
        ratio = paired_ratio(base, timed[name]) if name != "encoder" else 1.0
        per_round = [t / e for e, t in zip(base["rounds"], timed[name]["rounds"]) if e > 0]
        records.append({"contender": name, "threads": threads, "sparsity": sparsity,
                        "min_ms": stats[name]["min_s"] * 1e3,
                        "median_ms": stats[name]["median_s"] * 1e3,
                        "spread": stats[name]["spread"],
                        "ratio_to_encoder": ratio, "overhead_pct": (ratio - 1) * 100,
                        "round_ratio_min": min(per_round), "round_ratio_max": max(per_round),
                        "calls": stats[name]["calls"]})
    table = format_table(records, [("contender", "contender", str),
                                   ("threads", "threads", "d"),
                                   ("min ms", "min_ms", ".3f"),
                                   ("median ms", "median_ms", ".3f"),
                                   ("median/min", "spread", ".3f"),
                                   ("paired ratio", "ratio_to_encoder", ".4f"),
                                   ("round ratios min", "round_ratio_min", ".4f"),
                                   ("max", "round_ratio_max", ".4f"),
                                   ("overhead %", "overhead_pct", "+.2f")])
    rows, rounds_table = round_table(timed, list(ms))
    seq = next((r for r in records if r["contender"] == "seq"), None)
    return {"name": "task head overhead", "model": "BERT-Mini" if quick else "BERT-Base",
            "batch": 1, "seq": 128, "isa": blocksparse.get_isa(),
            "machine": machine_description(), "records": records, "table": table,
            "rounds": rows, "rounds_table": rounds_table, "load": load,
            "quiet": quiet_verdict(load, [{"contenders": stats}]),
            "target": "sequence classifier within 5 % of the encoder (paired ratio <= 1.05)",
            "met": None if seq is None else seq["ratio_to_encoder"] <= 1.05}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=10, help="timed calls per contender and round")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--heads", default="seq,token,qa", help="comma-separated: seq, token, qa")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--quick", action="store_true", help="BERT-Mini, 3 rounds of 2 calls")
    args = p.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if not heads or any(h not in HEADS for h in heads):
        p.error(f"--heads must list some of {', '.join(HEADS)}")
    if args.quick:
        args.rounds, args.calls = 3, 2
    result = run(args.threads, args.rounds, args.calls, args.sparsity, heads, args.quick)
    print(f"blocksparse {blocksparse.__version__}, ISA {result['isa']}, {result['model']} "
          f"batch 1 x 128, sparsity {args.sparsity:g}, INT8")
    print("per round (median of the round's calls, ms) and head / encoder:")
    print(result["rounds_table"])
    print("summary over all calls (min, median) and the paired ratio (median over rounds "
          "of head / encoder):")
    print(result["table"])
    print(result["quiet"]["note"])
    if result["met"] is not None:
        busy = "" if result["quiet"]["quiet"] else " (busy machine: not conclusive)"
        print(f"sequence classifier within 5 % of the encoder: "
              f"{'yes' if result['met'] else 'NO'}{busy}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
