"""Float32 against INT8 attention (``bsk_attention_f32`` / ``bsk_attention_q8``).

``python benchmarks/bench_attention_int8.py [--threads 1,2] [--seqs 128,384]
[--batches 1,8] [--rounds 9] [--calls 5] [--mask] [--layer] [--json FILE]``

BERT-Base attention shapes (12 heads x 64), the call the encoder makes:
``(3 * 768, batch * seq)`` float32 Q/K/V in, the (768, batch * seq) float32
output and its per-token uint8 codes for the output projection out.  The two
kernels are timed in interleaved rounds (:func:`blocksparse.bench._common.
interleave`: the order rotates, each round starts with an untimed call); the
table gives each one's fastest and median call and ``float / int8``, the
median over rounds of the per-round ratio (> 1: INT8 is faster).  ``--mask``
pads every sequence to 3/4 of its length (the INT8 kernel skips the padded
keys as the float one does); ``--layer`` adds one whole BERT-Base layer (90 %
sparse INT8 weights, batch x seq tokens) with each attention.  The machine
description and whether it was quiet come with the table.
"""
import argparse
import sys

import numpy as np

import blocksparse
from blocksparse.bench._common import (LoadMonitor, contender_stats, format_table, interleave,
                                       machine_description, paired_ratio, quiet_verdict,
                                       write_json)
from blocksparse.nn import _ops

HEADS, HEAD_DIM = 12, 64


def attention_contenders(batch, seq, mask):
    H, N = HEADS * HEAD_DIM, batch * seq
    rng = np.random.default_rng(seq * 10 + batch)
    # a trained model's scores are far less peaked than N(0, 1) inputs give; the
    # time does not depend on the values
    qkv = np.ascontiguousarray((rng.standard_normal((3 * H, N)) * 0.5).astype(np.float32))
    m = None
    if mask:
        m = np.zeros((batch, seq), np.uint8)
        m[:, :max(1, 3 * seq // 4)] = 1
    out = {k: np.empty((H, N), np.float32) for k in ("float32", "int8")}
    return {k: (lambda k=k: _ops._attention(qkv, batch, seq, HEADS, m, out[k], True,
                                            int8=k == "int8"))
            for k in ("float32", "int8")}


def layer_contenders(batch, seq, mask):
    """One BERT-Base layer (90 % sparse INT8) with float32 and with INT8 attention."""
    from blocksparse.bench.bert import bert_config
    from blocksparse.nn import BertModel
    cfg = dict(bert_config("BERT-Base"), num_hidden_layers=1,
               max_position_embeddings=max(512, seq))
    model = BertModel.from_config(cfg, seed=0, sparsity=0.9, blocksize=(4, 1), dtype="int8")
    layer = model.encoder.layers[0]
    ids = np.random.default_rng(1).integers(1000, cfg["vocab_size"], size=(batch, seq))
    x, xq = model.embeddings._forward(ids, None, layer.input_spec)
    m = None
    if mask:
        m = np.zeros((batch, seq), np.uint8)
        m[:, :max(1, 3 * seq // 4)] = 1

    def run(precision):
        layer.attention.precision = precision
        layer._forward(x, xq, m, batch, seq)

    return {"float32": lambda: run("float32"), "int8": lambda: run("int8")}


def measure(make, batch, seq, threads, rounds, calls, mask):
    contenders = make(batch, seq, mask)
    timed = interleave(contenders, rounds, calls, threads={k: threads for k in contenders})
    row = {"batch": batch, "seq": seq, "threads": threads,
           "contenders": {k: contender_stats(v) for k, v in timed.items()}}
    for k in ("float32", "int8"):
        row[f"{k}_min_us"] = row["contenders"][k]["min_s"] * 1e6
        row[f"{k}_median_us"] = row["contenders"][k]["median_s"] * 1e6
    row["float_over_int8"] = paired_ratio(timed["int8"], timed["float32"])
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seqs", default="128,384")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--mask", action="store_true", help="pad each sequence to 3/4 of its length")
    p.add_argument("--layer", action="store_true", help="also time a whole BERT-Base layer")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    monitor = LoadMonitor().start()
    tables = {"attention": [], "layer": []}
    for what, make in (("attention", attention_contenders), ("layer", layer_contenders)):
        if what == "layer" and not args.layer:
            continue
        for t in threads:
            for b in batches:
                for s in seqs:
                    print(f"{what}: threads {t}, batch {b}, seq {s}", file=sys.stderr)
                    tables[what].append(measure(make, b, s, t, args.rounds, args.calls,
                                                args.mask))
    load = monitor.stop()
    verdict = quiet_verdict(load, tables["attention"] + tables["layer"])
    cols = [("threads", "threads", "d"), ("batch", "batch", "d"), ("seq", "seq", "d"),
            ("float32 min us", "float32_min_us", ".0f"),
            ("float32 median us", "float32_median_us", ".0f"),
            ("int8 min us", "int8_min_us", ".0f"), ("int8 median us", "int8_median_us", ".0f"),
            ("float/int8 (paired)", "float_over_int8", ".2f")]
    print(f"isa {blocksparse.get_isa()}, {HEADS} heads x {HEAD_DIM}"
          + (", sequences padded to 3/4" if args.mask else ""))
    for what, rows in tables.items():
        if rows:
            print(f"\n{what}:")
            print(format_table(rows, cols))
    print("\n" + verdict["note"])
    if args.json:
        write_json(args.json, {"machine": machine_description(), "load": load,
                               "verdict": verdict, "mask": args.mask, **tables})
    return 0


if __name__ == "__main__":
    sys.exit(main())
