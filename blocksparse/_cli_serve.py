"""``blocksparse serve`` and ``blocksparse loadtest``: the embeddings server and its load test.

The parsers are added by :func:`add_parsers` (called from ``_cli``); the
commands import Starlette, uvicorn and httpx only when they run.
"""
import asyncio
import sys
import time
from pathlib import Path

from ._cli import UsageError, blocksize, fraction, positive_int, thread_list

__all__ = ["add_parsers", "run_serve", "run_loadtest"]


def _nonnegative(text):
    from argparse import ArgumentTypeError
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _budgets(text):
    from argparse import ArgumentTypeError
    values = [_nonnegative(t) for t in text.split(",") if t.strip()]
    if not values or min(values) <= 0:
        raise ArgumentTypeError(f"budgets must be positive milliseconds, e.g. 10,50, got "
                                f"{text!r}")
    return values


def _add_serve(sub, formatter):
    p = sub.add_parser(
        "serve", formatter_class=formatter,
        help="an OpenAI-compatible embeddings server with dynamic batching",
        description=(
            "Serve sentence embeddings over HTTP: POST /v1/embeddings (the OpenAI API, so the\n"
            "official openai client works unchanged), GET /v1/models, GET /health and\n"
            "GET /metrics (Prometheus).  Concurrent requests are packed into forward passes\n"
            "of at most --max-batch-tokens tokens; a request waits at most --max-wait-ms for\n"
            "others to join.  SIGTERM stops accepting, answers every accepted request, then\n"
            "exits.  Needs the 'serve' extra (pip install 'blocksparse[serve]').\n\n"
            "Threads: --workers inference threads share one model (each runs one batch at a\n"
            "time); --threads kernel threads work on each batch.  workers x threads should\n"
            "not exceed the cores.  For more processes, run more servers (or Ray Serve\n"
            "replicas) behind a load balancer."),
        epilog=("examples:\n"
                "  python -m blocksparse serve --int8\n"
                "  python -m blocksparse serve --model ./minilm-90 --port 8080 --max-wait-ms 5\n"
                "  curl -s localhost:8000/v1/embeddings -d '{\"input\": \"A cat sits.\"}'"))
    p.add_argument("--model", metavar="DIR", help="model directory (default: packaged MiniLM)")
    p.add_argument("--name", metavar="NAME",
                   help="model name in responses (default: the directory's name)")
    p.add_argument("--int8", action="store_true", help="INT8 weights and activations")
    p.add_argument("--sparsity", type=fraction, metavar="S",
                   help="prune the encoder's Linear weights to this block sparsity at load")
    p.add_argument("--blocksize", type=blocksize, default=(4, 1), metavar="R,C",
                   help="block shape for --sparsity (default: 4,1: four output rows in one "
                        "input column)")
    p.add_argument("--max-length", type=positive_int, metavar="N",
                   help="truncate inputs to N tokens (default: the model's max_seq_length)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on "
                   "(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 "
                   "picks a free one and prints it)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="inference threads sharing the model (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="kernel threads per batch (default: BLOCKSPARSE_NUM_THREADS, else "
                        "all cores)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=8192, metavar="N",
                   help="tokens per batch (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=_nonnegative, default=0.0, metavar="MS",
                   help="longest wait of an idle worker for a batch to fill (default: 0: "
                        "take what is queued)")
    p.add_argument("--max-request-bytes", type=positive_int, default=4 * 1024 * 1024,
                   metavar="N", help="largest request body (default: %(default)s)")
    p.add_argument("--max-inputs", type=positive_int, default=2048, metavar="N",
                   help="inputs per request (default: %(default)s)")
    p.add_argument("--max-queue-tokens", type=positive_int, default=2_000_000, metavar="N",
                   help="queued tokens before new requests get 429 (default: %(default)s)")
    p.add_argument("--graceful-timeout", type=_nonnegative, default=30.0, metavar="S",
                   help="seconds to finish open requests after SIGTERM (default: %(default)s)")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: %(default)s)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(command_module="_cli_serve", command_func="run_serve")


def _add_loadtest(sub, formatter):
    p = sub.add_parser(
        "loadtest", formatter_class=formatter,
        help="measure embeddings servers: throughput and latency against concurrency",
        description=(
            "A bounded closed-loop load test of OpenAI-compatible embeddings servers: at each\n"
            "concurrency C, C clients send requests back to back for --duration seconds.\n"
            "Reports throughput, p50/p90/p99 latency and, per --budget, the highest throughput\n"
            "whose p90 latency is within it.  Several URLs are measured in one run,\n"
            "interleaved level by level.  Writes JSON and a plot (matplotlib).  Needs httpx\n"
            "(the 'serve' extra)."),
        epilog=("examples:\n"
                "  python -m blocksparse loadtest http://127.0.0.1:8000\n"
                "  python -m blocksparse loadtest blocksparse=http://127.0.0.1:8000 "
                "ort=http://127.0.0.1:8001 --budget 10,50"))
    p.add_argument("urls", nargs="+", metavar="[LABEL=]URL",
                   help="server base URLs, optionally labelled (label=http://host:port)")
    p.add_argument("--concurrency", type=thread_list, default=[1, 2, 4, 8, 16, 32],
                   metavar="LIST", help="concurrency levels (default: 1,2,4,8,16,32)")
    p.add_argument("--duration", type=_nonnegative, default=10.0, metavar="S",
                   help="seconds per level and server (default: %(default)s)")
    p.add_argument("--warmup", type=_nonnegative, default=1.0, metavar="S",
                   help="unrecorded seconds before each level (default: %(default)s)")
    p.add_argument("--max-requests", type=positive_int, default=100_000, metavar="N",
                   help="requests per level and server at most (default: %(default)s)")
    p.add_argument("--inputs-per-request", type=positive_int, default=1, metavar="N",
                   help="texts in each request (default: %(default)s)")
    p.add_argument("--words", type=thread_list, default=[8, 32], metavar="MIN,MAX",
                   help="words per generated text (default: 8,32)")
    p.add_argument("-f", "--file", metavar="PATH",
                   help="texts to send instead, one per line")
    p.add_argument("--budget", type=_budgets, default=[10.0, 50.0], metavar="MS",
                   help="p90 latency budgets in ms (default: 10,50)")
    p.add_argument("--timeout", type=_nonnegative, default=60.0, metavar="S",
                   help="seconds before a request counts as failed (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default="loadtest-results/loadtest.json",
                   help="results file (default: %(default)s)")
    p.add_argument("--plot", metavar="PATH",
                   help="plot file (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no bar")
    p.set_defaults(command_module="_cli_serve", command_func="run_loadtest")


def add_parsers(sub, formatter):
    """Add ``serve`` and ``loadtest`` to the subparsers of ``python -m blocksparse``."""
    _add_serve(sub, formatter)
    _add_loadtest(sub, formatter)


# ---- serve ----------------------------------------------------------------------------------

def run_serve(args):
    """Serve embeddings until SIGTERM (``blocksparse serve``)."""
    try:
        from .serve import ServerSettings, bind, create_app, run
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"serve needs the 'serve' extra: pip install 'blocksparse[serve]' "
                         f"({exc})") from None
    from ._cli_model import _model_dir
    from .pipelines import EmbeddingPipeline
    settings = ServerSettings(max_batch_tokens=args.max_batch_tokens,
                              max_wait=args.max_wait_ms / 1e3, workers=args.workers,
                              max_request_bytes=args.max_request_bytes,
                              max_inputs=args.max_inputs,
                              max_queue_tokens=args.max_queue_tokens)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
    if args.threads:
        import blocksparse
        blocksparse.set_num_threads(args.threads)
    model_dir = _model_dir(args.model)
    name = args.name or (None if args.model else "all-MiniLM-L6-v2")
    t0 = time.perf_counter()
    pipeline = EmbeddingPipeline(model_dir, dtype="int8" if args.int8 else None,
                                 sparsity=args.sparsity, blocksize=args.blocksize,
                                 max_length=args.max_length,
                                 max_batch_tokens=args.max_batch_tokens, name=name)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"blocksparse serve: {pipeline!r} loaded in {time.perf_counter() - t0:.1f} s; "
          f"listening on http://{shown}:{port} (workers {args.workers}, max batch "
          f"{args.max_batch_tokens} tokens, max wait {args.max_wait_ms:g} ms)", flush=True)
    run(create_app(pipeline, settings), sock, log_level=args.log_level,
        access_log=args.access_log, graceful_timeout=args.graceful_timeout)
    print("blocksparse serve: stopped", flush=True)
    return 0


# ---- loadtest -------------------------------------------------------------------------------

def _targets(urls):
    targets = {}
    for i, item in enumerate(urls):
        label, sep, url = item.partition("=")
        if not sep or "://" in label:
            label, url = (f"server{i + 1}" if len(urls) > 1 else "server"), item
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"URL {url!r} must start with http:// or https://")
        if label in targets:
            raise UsageError(f"label {label!r} is given twice")
        targets[label] = url
    return targets


def _table(result):
    from ._cli_report import _plain_table
    rows = []
    for label, entry in result["targets"].items():
        for lv in entry["levels"]:
            f = (lambda v: "-" if v is None else f"{v:.1f}")  # noqa: E731
            rows.append([label, str(lv["concurrency"]), f"{lv['rps']:.1f}",
                         f"{lv['inputs_per_s']:.1f}", f(lv["p50_ms"]), f(lv["p90_ms"]),
                         f(lv["p99_ms"]), str(lv["errors"])])
    _plain_table("load test", ["server", "concurrency", "req/s", "inputs/s", "p50 ms",
                               "p90 ms", "p99 ms", "errors"], rows, sys.stdout)
    print()
    header = ["server"] + [f"p90 <= {b:g} ms" for b in result["budgets_ms"]]
    rows = []
    for label, row in result["summary"].items():
        cells = [label]
        for best in row.values():
            cells.append("none" if best is None else
                         f"{best['rps']:.1f} req/s (c={best['concurrency']})")
        rows.append(cells)
    _plain_table("highest throughput within the latency budget", header, rows, sys.stdout)


def run_loadtest(args):
    """Load-test embeddings servers (``blocksparse loadtest``)."""
    try:
        import httpx  # noqa: F401
        from .serve import loadtest
    except ImportError as exc:
        raise UsageError(f"loadtest needs httpx: pip install 'blocksparse[serve]' ({exc})") \
            from None
    from ._cli_bench import _write_json
    from ._cli_report import Progress
    from ._cli_info import collect_info
    targets = _targets(args.urls)
    if len(args.words) != 2 or args.words[0] > args.words[1]:
        raise UsageError("--words must be MIN,MAX with MIN <= MAX")
    if args.file:
        from ._cli_model import read_texts
        texts = read_texts([], args.file)
    else:
        texts = loadtest.make_texts(max(1000, 4 * args.inputs_per_request), tuple(args.words))
    if len(texts) < args.inputs_per_request:
        raise UsageError(f"--inputs-per-request {args.inputs_per_request} is more than the "
                         f"{len(texts)} texts")
    progress = Progress(plain=args.plain)
    with progress.suite("loadtest", 1, 1, f"{len(targets)} server(s)") as report:
        result = asyncio.run(loadtest.run_sweep(
            targets, concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
            max_requests=args.max_requests, texts=texts,
            inputs_per_request=args.inputs_per_request, timeout=args.timeout,
            progress=report))
    loadtest.summarize(result, args.budget)
    result["client_machine"] = collect_info()
    _table(result)
    path = Path(args.json)
    _write_json(path, result)
    print(f"\nwrote {path}", file=sys.stderr)
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else path.with_suffix(".png")
        try:
            loadtest.plot(result, plot_path)
            print(f"wrote {plot_path}", file=sys.stderr)
        except ImportError:
            print("no plot: matplotlib is not installed", file=sys.stderr)
    failed = sum(lv["errors"] for e in result["targets"].values() for lv in e["levels"])
    return 1 if failed else 0
