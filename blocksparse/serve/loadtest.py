"""A bounded load generator for OpenAI-compatible embeddings servers.

Closed loop: at concurrency ``C``, ``C`` clients each send a request, wait
for its answer and send the next, for ``duration`` seconds (and at most
``max_requests`` requests).  Each level reports throughput (requests and
inputs per second), the latency percentiles p50/p90/p99 and the errors.
The paper's metric is the highest throughput whose p90 latency stays
within a budget (for example 10 ms or 50 ms): :func:`best_under_budget`.

Several servers are measured in one run, interleaved: each concurrency
level runs against every target in turn, so slow drifts of the machine
(other processes, frequency) touch all of them alike.  Every response is
checked: status 200, one embedding per input, each of the expected length.
"""
import asyncio
import json
import os
import random
import time

import numpy as np

__all__ = ["make_texts", "run_level", "run_sweep", "best_under_budget", "summarize"]

_WORDS = ("the a of to and in is that for it with as was on be by this are from at or an "
          "which have not has but were they their one all been more when there can if will "
          "would about than other into time only some could its these new two may first "
          "after also most over made such years where between many through world people "
          "market system water company research data model network energy city school "
          "service health policy light music story power science history language").split()


def make_texts(n, words=(8, 32), seed=0):
    """`n` reproducible pseudo-sentences of `words` (min, max) words each.

    Parameters
    ----------
    n : int
    words : tuple of int, optional
    seed : int, optional

    Returns
    -------
    list of str
    """
    lo, hi = words
    if not 1 <= lo <= hi:
        raise ValueError(f"words must be (min, max) with 1 <= min <= max, got {words!r}")
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."
            for _ in range(n)]


def _percentiles(latencies):
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    a = np.asarray(latencies) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def _check(response, n_inputs, dimension):
    """None if the response is a full answer, else what is wrong."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError):
        return "not an embeddings response"
    if len(data) != n_inputs:
        return f"{len(data)} embeddings for {n_inputs} inputs"
    if dimension is not None and any(len(d.get("embedding", ())) != dimension for d in data):
        return "wrong embedding length"
    if [d.get("index") for d in data] != list(range(n_inputs)):
        return "indices out of order"
    return None


async def run_level(client, url, bodies, concurrency, *, duration, max_requests, dimension=None,
                    tick=None):
    """One closed-loop measurement at `concurrency`.

    Parameters
    ----------
    client : httpx.AsyncClient
    url : str
        The ``/v1/embeddings`` URL.
    bodies : list of (bytes, int)
        Request bodies and their input counts, used in turn.
    concurrency : int
    duration : float
        Seconds during which new requests start.
    max_requests : int
        Upper bound on requests started.
    dimension : int, optional
        Expected embedding length (checked when given).
    tick : callable, optional
        Called with no argument after each response.

    Returns
    -------
    dict
        ``concurrency``, ``requests`` (answered correctly), ``errors``,
        ``error_examples``, ``seconds``, ``rps``, ``inputs_per_s`` and
        the latency figures of :func:`_percentiles` (ms).
    """
    import httpx
    latencies, errors, examples = [], 0, []
    counter = {"started": 0, "inputs": 0}
    t0 = time.perf_counter()
    stop_at = t0 + duration
    headers = {"Content-Type": "application/json"}

    async def client_loop():
        nonlocal errors
        while time.perf_counter() < stop_at and counter["started"] < max_requests:
            body, n = bodies[counter["started"] % len(bodies)]
            counter["started"] += 1
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                problem = _check(response, n, dimension)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                latencies.append(time.perf_counter() - start)
                counter["inputs"] += n
            else:
                errors += 1
                if len(examples) < 5:
                    examples.append(problem)
            if tick is not None:
                tick()

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    result = {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
              "error_examples": examples, "seconds": seconds,
              "rps": len(latencies) / seconds if seconds > 0 else 0.0,
              "inputs_per_s": counter["inputs"] / seconds if seconds > 0 else 0.0}
    result.update(_percentiles(latencies))
    return result


def _bodies(texts, inputs_per_request, model):
    out = []
    for i in range(0, len(texts) - inputs_per_request + 1, inputs_per_request):
        chunk = texts[i:i + inputs_per_request]
        payload = {"input": chunk[0] if inputs_per_request == 1 else chunk, "model": model}
        out.append((json.dumps(payload).encode(), len(chunk)))
    if not out:
        raise ValueError("fewer texts than inputs_per_request")
    return out


async def _describe(client, base):
    try:
        r = await client.get(base + "/v1/models")
        return r.json()["data"][0]
    except Exception:  # a peer without /v1/models still gets measured
        return {}


async def run_sweep(targets, *, concurrency=(1, 2, 4, 8, 16, 32), duration=10.0, warmup=1.0,
                    max_requests=100_000, texts=None, inputs_per_request=1, timeout=60.0,
                    progress=None, transport=None):
    """Measure every target at every concurrency level, interleaved.

    Parameters
    ----------
    targets : dict of {str: str}
        Label -> base URL (``http://127.0.0.1:8000``; ``/v1/embeddings`` is
        appended).
    concurrency : sequence of int, optional
    duration : float, optional
        Seconds per level and target.
    warmup : float, optional
        Seconds of unrecorded load before each level.
    max_requests : int, optional
        Bound on requests per level and target.
    texts : list of str, optional
        Inputs, sent in order; :func:`make_texts` (1000 texts of 8-32
        words) by default.
    inputs_per_request : int, optional
    timeout : float, optional
        Seconds before one request counts as an error.
    progress : callable, optional
        ``progress(done, total, desc)``, after each level and every 0.25 s.
    transport : httpx.AsyncBaseTransport, optional
        For tests (``httpx.ASGITransport``).

    Returns
    -------
    dict
        ``targets`` (label -> ``{"url", "model", "levels": [...]}``) and
        ``settings``.
    """
    import httpx
    texts = make_texts(1000) if texts is None else list(texts)
    levels = [int(c) for c in concurrency]
    if not levels or min(levels) < 1:
        raise ValueError(f"concurrency must hold positive integers, got {concurrency!r}")
    out = {label: {"url": url.rstrip("/"), "levels": []} for label, url in targets.items()}
    total = len(levels) * len(targets)
    done, last = 0, [0.0]

    def report(desc):
        if progress is not None:
            progress(done, total, desc)

    for k, c in enumerate(levels):
        order = list(out.items())
        for label, entry in (order if k % 2 == 0 else order[::-1]):  # alternate who goes first
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            async with httpx.AsyncClient(limits=limits, timeout=timeout,
                                         transport=transport) as client:
                if "model" not in entry:
                    entry["model"] = await _describe(client, entry["url"])
                model = entry["model"]
                bodies = _bodies(texts, inputs_per_request, model.get("id", "default"))
                url = entry["url"] + "/v1/embeddings"
                dim = model.get("dimension")
                if warmup > 0:
                    await run_level(client, url, bodies, c, duration=warmup,
                                    max_requests=max_requests, dimension=dim)
                count = [0]

                def tick(desc=f"{label} c={c}"):
                    count[0] += 1
                    now = time.monotonic()
                    if now - last[0] >= 0.25:
                        last[0] = now
                        report(f"{desc} {count[0]} req")

                level = await run_level(client, url, bodies, c, duration=duration,
                                        max_requests=max_requests, dimension=dim, tick=tick)
            entry["levels"].append(level)
            done += 1
            report(f"{label} c={c}: {level['rps']:.0f} req/s, p90 "
                   f"{level['p90_ms'] or float('nan'):.1f} ms")
    settings = {"concurrency": levels, "duration_s": duration, "warmup_s": warmup,
                "max_requests": max_requests, "inputs_per_request": inputs_per_request,
                "texts": len(texts), "timeout_s": timeout}
    return {"targets": out, "settings": settings}


def best_under_budget(levels, budget_ms, percentile="p90_ms"):
    """The level with the highest throughput whose `percentile` latency is within budget.

    Parameters
    ----------
    levels : list of dict
        From :func:`run_level`.
    budget_ms : float
    percentile : str, optional

    Returns
    -------
    dict or None
        None when no level without errors meets the budget.

    Examples
    --------
    >>> levels = [{"concurrency": 1, "rps": 100, "p90_ms": 8, "errors": 0},
    ...           {"concurrency": 4, "rps": 300, "p90_ms": 15, "errors": 0}]
    >>> best_under_budget(levels, 10)["concurrency"], best_under_budget(levels, 50)["rps"]
    (1, 300)
    """
    ok = [lv for lv in levels if not lv["errors"] and lv.get(percentile) is not None
          and lv[percentile] <= budget_ms]
    return max(ok, key=lambda lv: lv["rps"]) if ok else None


def summarize(result, budgets_ms):
    """Per target and budget: the best level's throughput (or None); stored in `result`.

    Parameters
    ----------
    result : dict
        From :func:`run_sweep`.
    budgets_ms : sequence of float

    Returns
    -------
    dict
        ``{label: {"p90<=10ms": {"rps", "inputs_per_s", "concurrency", "p90_ms"} or None}}``
    """
    summary = {}
    for label, entry in result["targets"].items():
        row = {}
        for b in budgets_ms:
            best = best_under_budget(entry["levels"], b)
            row[f"p90<={b:g}ms"] = None if best is None else {
                k: best[k] for k in ("rps", "inputs_per_s", "concurrency", "p90_ms")}
        summary[label] = row
    result["summary"] = summary
    result["budgets_ms"] = list(budgets_ms)
    result["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return summary


def plot(result, path=None, ax=None, title=None):
    """Throughput against p90 latency per target, with the budgets as vertical lines.

    Parameters
    ----------
    result : dict
        From :func:`run_sweep` after :func:`summarize`.
    path : str or os.PathLike, optional
        Write a figure of this one plot here.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes instead (one panel of a larger figure).
    title : str, optional

    Raises
    ------
    ImportError
        Without matplotlib.
    """
    import matplotlib
    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, entry in result["targets"].items():
        pts = [(lv["p90_ms"], lv["rps"], lv["concurrency"]) for lv in entry["levels"]
               if lv["p90_ms"] is not None]
        if not pts:
            continue
        x, y, c = zip(*pts)
        ax.plot(x, y, marker="o", label=label)
        for xi, yi, ci in pts:
            ax.annotate(str(ci), (xi, yi), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
    for b in result.get("budgets_ms", []):
        ax.axvline(b, color="grey", linestyle=":", linewidth=1)
        ax.text(b, ax.get_ylim()[1], f" p90 {b:g} ms", fontsize=7, va="top", color="grey")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, 50, not 2x10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("p90 latency (ms, log scale)")
    ax.set_ylabel("throughput (requests/s)")
    s = result.get("settings", {})
    ax.set_title(title or f"embeddings server, {s.get('inputs_per_request', 1)} input(s)/"
                 f"request; labels: concurrency", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if fig is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
