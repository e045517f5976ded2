"""File-level faults (issue 11, classes 2 and 5).

- save_pretrained is atomic: 50+ kill -9 at random moments leave a directory that
  loads as the old or the new model; readers during saves always load one of them;
- writes never go through a symlink; reads never leave the directory (symlinks,
  '..', absolute index paths), except a Hugging Face cache snapshot into its blobs;
- the own format is validated like the Hugging Face path (NaN, dtypes, metadata);
- load_npz reads only the entries it needs, each bounded by the bytes it holds;
  from_config refuses sizes beyond memory before allocating.
"""
import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import blocksparse
from blocksparse import BlockSparseMatrix

nn = pytest.importorskip("blocksparse.nn")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
BertModel = nn.BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           vocab_size=100, max_position_embeddings=16)
IDS = np.array([[1, 5, 9, 2, 7, 3]])
KILLS = 60
DURATIONS = {}


@pytest.fixture(autouse=True, scope="module")
def _report(safety_summary):
    safety_summary["faults-files"] = lambda: "faults/files: " + (
        "; ".join(f"{k}: {v}" for k, v in sorted(DURATIONS.items())) or "none ran")
    yield


def models():
    """Two different small models with every tensor kind (float, int8, sparse)."""
    a = BertModel.from_config(CFG, seed=1, sparsity=0.5, dtype="int8", add_pooling_layer=True)
    b = BertModel.from_config(CFG, seed=2, sparsity=0.25, dtype="int8",
                              add_pooling_layer=True)
    return a, b


def which(directory, outputs):
    """Load `directory` and say which of the models it is ("a" or "b")."""
    got = BertModel.from_pretrained(directory)(IDS)
    for name, out in outputs.items():
        if np.array_equal(got, out):
            return name
    raise AssertionError("the directory loaded as neither the old nor the new model")


def files(directory):
    return sorted(os.listdir(directory))


# ---- kill -9 during save_pretrained -----------------------------------------------------

ZYGOTE = """
import os, sys, signal, time
sys.path.insert(0, {root!r})
from tests.test_faults_files import models
a, b = models()
directory = {directory!r}
t = time.perf_counter()
for _ in range(3):
    b.save_pretrained(directory)
    a.save_pretrained(directory)
print("ready", (time.perf_counter() - t) / 6, flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "go":            # a child saving the other model first, then both in turn
        pid = os.fork()
        if pid == 0:
            i = 0 if cmd[1] == "b" else 1
            while True:
                (b if i % 2 == 0 else a).save_pretrained(directory)
                i += 1
        print(pid, flush=True)
    elif cmd[0] == "wait":
        os.waitpid(int(cmd[1]), 0)
        print("reaped", flush=True)
"""


def _readline(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no answer within {timeout} s")
    return proc.stdout.readline().strip()


@pytest.fixture
def saver(tmp_path):
    """A subprocess that forks children which save in a loop; killed at the end."""
    directory = str(tmp_path / "ckpt")
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE.format(root=ROOT, directory=directory)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        ready = _readline(proc, 60).split()
        assert ready[:1] == ["ready"], proc.stderr.read()
        DURATIONS["one save"] = f"{float(ready[1]) * 1e3:.1f} ms"
        yield proc, directory, float(ready[1])
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes the pipes


def test_kill_9_during_save_pretrained_leaves_a_loadable_checkpoint(saver):
    proc, directory, save_seconds = saver
    a, b = models()
    outputs = {"a": a(IDS), "b": b(IDS)}
    rng = random.Random(11)
    seen, debris, t0 = {"old": 0, "new": 0}, 0, time.perf_counter()
    current = which(directory, outputs)
    # each round: a child starts replacing the current model by the other one and is
    # killed at a random moment of a window of about two saves (its fork and start
    # included); on a loaded machine the child starts late, so the window widens while
    # no kill lands after the switch (and narrows while none lands before it)
    window, outcomes, rounds = 2.0 * save_seconds, [], 0
    while rounds < KILLS or (not (seen["old"] and seen["new"]) and rounds < KILLS + 60):
        new = "b" if current == "a" else "a"
        proc.stdin.write(f"go {new}\n")
        pid = int(_readline(proc, 30))
        time.sleep(rng.uniform(0.0, window))
        os.kill(pid, signal.SIGKILL)
        proc.stdin.write(f"wait {pid}\n")
        assert _readline(proc, 30) == "reaped"
        t = time.perf_counter()
        got = which(directory, outputs)
        assert time.perf_counter() - t < 10
        outcomes.append("new" if got == new else "old")
        seen[outcomes[-1]] += 1
        debris += len(files(directory)) > 2  # a temporary or not yet removed weights file
        current, rounds = got, rounds + 1
        if rounds % 10 == 0:
            window *= 2.0 if "new" not in outcomes[-10:] else \
                0.5 if "old" not in outcomes[-10:] else 1.0
    DURATIONS["kill -9"] = f"{rounds} kills in {time.perf_counter() - t0:.1f} s, loaded {seen}, " \
                           f"{debris} with leftovers"
    assert seen["old"] and seen["new"], seen  # the kills did land before and after the switch
    # the next save cleans up whatever the kills left behind
    a.save_pretrained(directory)
    assert len(files(directory)) == 2, files(directory)
    assert which(directory, outputs) == "a"


def test_readers_during_saves_always_load_old_or_new(saver):
    proc, directory, _ = saver
    a, b = models()
    outputs = {"a": a(IDS), "b": b(IDS)}
    proc.stdin.write("go b\n")
    pid = int(_readline(proc, 30))
    try:
        loads, end = 0, time.perf_counter() + 1.5
        while time.perf_counter() < end:
            which(directory, outputs)  # raises if a load fails or is torn
            loads += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.stdin.write(f"wait {pid}\n")
        _readline(proc, 30)
    DURATIONS["readers"] = f"{loads} loads during saves"
    assert loads >= 5


# ---- symlinks and paths -----------------------------------------------------------------------

@pytest.fixture
def model():
    return models()[0]


def test_save_replaces_a_symlinked_config_and_leaves_its_target(tmp_path, model):
    """The Hugging Face cache links config.json to a blob; saving must not overwrite it."""
    outside = tmp_path / "blob.json"
    outside.write_text('{"untouched": true}')
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").symlink_to(outside)
    (d / "model.safetensors").symlink_to(outside)
    model.save_pretrained(d)
    assert outside.read_text() == '{"untouched": true}'
    assert not (d / "config.json").is_symlink()
    assert not os.path.lexists(d / "model.safetensors")  # the old weights name is removed
    np.testing.assert_array_equal(BertModel.from_pretrained(d)(IDS), model(IDS))


def test_save_npz_replaces_a_symlink_and_refuses_a_directory(tmp_path):
    W = BlockSparseMatrix(np.eye(4, dtype=np.float32))
    outside = tmp_path / "precious.npz"
    outside.write_bytes(b"keep")
    link = tmp_path / "w.npz"
    link.symlink_to(outside)
    blocksparse.save_npz(link, W)
    assert outside.read_bytes() == b"keep" and not link.is_symlink()
    np.testing.assert_array_equal(blocksparse.load_npz(link).toarray(), np.eye(4))
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        blocksparse.save_npz(tmp_path / "d.npz", W)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def hf(tmp_path):
    """A Hugging Face checkpoint directory of a float model, and the model."""
    from tests.test_nn_checkpoint import hf_tensors, write_hf  # the existing HF writer
    m = BertModel.from_config(CFG, seed=3)
    return write_hf(str(tmp_path / "hf"), CFG, hf_tensors(m)), m


def test_weights_symlink_out_of_the_directory_is_refused(tmp_path, hf):
    d, _ = hf
    os.replace(os.path.join(d, "model.safetensors"), tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", os.path.join(d, "model.safetensors"))
    with pytest.raises(ValueError, match=r"weights file 'model.safetensors' .* resolves to .*"
                                         r"outside the checkpoint directory"):
        BertModel.from_pretrained(d)


def test_config_symlink_out_of_the_directory_is_refused(tmp_path, hf):
    d, _ = hf
    os.replace(os.path.join(d, "config.json"), tmp_path / "c.json")
    os.symlink(tmp_path / "c.json", os.path.join(d, "config.json"))
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        BertModel.from_pretrained(d)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors",
                                   "sub/../../outside.safetensors", 5])
def test_index_paths_out_of_the_directory_are_refused(tmp_path, hf, shard):
    d, _ = hf
    t = safetensors_numpy.load_file(os.path.join(d, "model.safetensors"))
    os.unlink(os.path.join(d, "model.safetensors"))
    safetensors_numpy.save_file(t, str(tmp_path / "outside.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {k: shard for k in t}}, f)
    with pytest.raises(ValueError, match=r"shard .* (relative path inside|file name)"):
        BertModel.from_pretrained(d)


def test_sharded_checkpoint_inside_the_directory_loads(tmp_path, hf):
    d, m = hf
    t = safetensors_numpy.load_file(os.path.join(d, "model.safetensors"))
    os.unlink(os.path.join(d, "model.safetensors"))
    keys = sorted(t)
    os.mkdir(os.path.join(d, "shards"))
    halves = {"model-00001-of-00002.safetensors": keys[::2],
              "shards/model-00002-of-00002.safetensors": keys[1::2]}
    for fn, ks in halves.items():
        safetensors_numpy.save_file({k: t[k] for k in ks}, os.path.join(d, fn))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {k: fn for fn, ks in halves.items() for k in ks}}, f)
    np.testing.assert_array_equal(BertModel.from_pretrained(d)(IDS), m(IDS))


def test_hugging_face_cache_layout_loads(tmp_path, hf):
    """snapshots/<rev>/x -> ../../blobs/<hash>: links inside the model's cache folder."""
    d, m = hf
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(d))):
        os.replace(os.path.join(d, name), repo / "blobs" / f"blob{i}")
        (snap / name).symlink_to(f"../../blobs/blob{i}")
    np.testing.assert_array_equal(BertModel.from_pretrained(snap)(IDS), m(IDS))


# ---- the own format: as strict as the Hugging Face path ----------------------------------------

def _own(tmp_path, model):
    d = tmp_path / "own"
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    return d, cfg, d / cfg["blocksparse"]["weights"]


def test_own_format_nan_weights_refused(tmp_path, model):
    d, _, weights = _own(tmp_path, model)
    t = safetensors_numpy.load_file(str(weights))
    for key in ("embeddings.word", "layers.0.ln1.weight", "layers.1.ffn2.bias",
                "layers.0.qkv.scale", "pooler.weight"):
        bad = dict(t)
        bad[key] = t[key].copy()
        bad[key].reshape(-1)[0] = np.nan
        safetensors_numpy.save_file(bad, str(weights))
        with pytest.raises(ValueError, match=rf"tensor '{key}' has NaN or Inf values"):
            BertModel.from_pretrained(d)
    bad = dict(t, **{"layers.0.o.indices": t["layers.0.o.indices"].astype(np.float32)})
    safetensors_numpy.save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"'layers.0.o.indices' has dtype float32, expected an "
                                         r"integer"):
        BertModel.from_pretrained(d)
    bad = dict(t, **{"embeddings.word": t["embeddings.word"].astype(np.float64)})
    safetensors_numpy.save_file(bad, str(weights))
    with pytest.raises(ValueError, match=r"'embeddings.word' has dtype float64, expected float32"):
        BertModel.from_pretrained(d)


META_CASES = [
    ("sparsity", "half", r"'sparsity' must be null or a number in \[0, 1\]"),
    ("sparsity", 1.5, r"'sparsity' must be null or a number"),
    ("sparsity", True, r"'sparsity' must be null or a number"),
    ("smoothing", "x", r"'smoothing' must be null or a number"),
    ("blocksize", "4,1", r"'blocksize' must be two positive integers"),
    ("blocksize", [0, 1], r"'blocksize' must be two positive integers"),
    ("blocksize", [4.0, 1], r"'blocksize' must be two positive integers"),
    ("balanced", "yes", r"'balanced' must be true or false"),
    ("dtype", 5, r"'dtype' must be 'float32' or 'int8'"),
    ("dtype", "float32", r"'dtype' is 'float32' but the Linear layers are int8"),
    ("format_version", True, r"format version True"),
    ("format_version", 99, r"format version 99"),
    ("weights", "../model-0123456789abcdef.safetensors", r"'weights' must be a file name"),
    ("weights", "/etc/passwd", r"'weights' must be a file name"),
    ("weights", ["x"], r"'weights' must be a file name"),
    ("linears", [], r"'linears' must be an object"),
]


@pytest.mark.parametrize("key,value,match", META_CASES,
                         ids=[f"{k}={v!r}" for k, v, _ in META_CASES])
def test_own_format_ill_typed_metadata_refused(tmp_path, model, key, value, match):
    d, cfg, _ = _own(tmp_path, model)
    cfg["blocksparse"][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        BertModel.from_pretrained(d)


@pytest.mark.parametrize("edit,match", [
    (lambda ls: ls.pop("layers.1.ffn1"), r"has no entry 'layers.1.ffn1'"),
    (lambda ls: ls.update({"layers.7.o": ls["layers.0.o"]}), r"no layer for: 'layers.7.o'"),
    (lambda ls: ls["layers.0.o"].update(kind="weird"), r"unknown kind 'weird'"),
    (lambda ls: ls["layers.0.o"].update(shape=[32, 64]), r"has shape \[32, 64\], expected"),
    (lambda ls: ls["layers.0.o"].update(shape="32x32"), r"must be two positive integers"),
    (lambda ls: ls["layers.0.o"].update(blocksize=None), r"blocksize' must be two positive"),
    (lambda ls: ls.__setitem__("layers.0.o", "dense"), r"has no entry 'layers.0.o'"),
], ids=["missing", "extra", "kind", "shape", "shape type", "blocksize", "not an object"])
def test_own_format_linear_descriptions_checked(tmp_path, model, edit, match):
    d, cfg, _ = _own(tmp_path, model)
    edit(cfg["blocksparse"]["linears"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        BertModel.from_pretrained(d)


def test_format_1_directories_still_load(tmp_path, model):
    d, cfg, weights = _own(tmp_path, model)
    os.replace(weights, d / "model.safetensors")
    cfg["blocksparse"]["format_version"] = 1
    del cfg["blocksparse"]["weights"]
    (d / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(BertModel.from_pretrained(d)(IDS), model(IDS))


def test_missing_weights_file_is_a_clear_error(tmp_path, model):
    d, _, weights = _own(tmp_path, model)
    os.unlink(weights)
    with pytest.raises(FileNotFoundError, match=r"the weights file 'model-[0-9a-f]{16}"
                                                r"\.safetensors' named by config.json is missing"):
        BertModel.from_pretrained(d)


# ---- load_npz: only what the format needs, bounded by what the entry holds ------------------

def _npz_with(entries, extra_zero_bytes=0):
    """An .npz of `entries` (name -> array) plus an unused entry of zeros, streamed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in entries.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(arr))
        if extra_zero_bytes:
            with zf.open("unused.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f8", "fortran_order": False,
                        "shape": (extra_zero_bytes // 8,)})
                chunk = bytes(1 << 20)
                for _ in range(extra_zero_bytes // len(chunk)):
                    f.write(chunk)
    return buf.getvalue()


BSR = dict(data=np.ones((1, 2, 2)), indices=np.array([0], np.int32),
           indptr=np.array([0, 1, 1], np.int32), shape=np.array([4, 4]), format=np.array(b"bsr"))


def test_load_npz_reads_only_the_entries_it_needs():
    """A 200 MB entry of zeros (a few hundred kB compressed) is never decompressed."""
    raw = _npz_with(BSR, extra_zero_bytes=200 << 20)
    assert len(raw) < 2 << 20
    tracemalloc.start()
    try:
        W = blocksparse.load_npz(io.BytesIO(raw))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert W.nnzb == 1 and peak < 8 << 20, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("entry,declared", [("data", (10**9, 2, 2)), ("indices", (10**12,)),
                                            ("shape", (2**40,))])
def test_load_npz_declared_entry_shapes_must_match_their_bytes(entry, declared):
    raw = _npz_with(BSR)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == entry + ".npy":  # same bytes, a header that claims far more
                arr = np.lib.format.read_array(io.BytesIO(data))
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": arr.dtype.str, "fortran_order": False, "shape": declared})
                data = head.getvalue() + arr.tobytes()
            dst.writestr(name, data)
    with pytest.raises(ValueError, match=rf"entry '{entry}' declares shape"):
        blocksparse.load_npz(io.BytesIO(buf.getvalue()))


def test_load_npz_declared_matrix_shape_must_be_backed():
    coo = dict(data=np.ones(1), row=np.array([0]), col=np.array([0]),
               shape=np.array([10**12, 4]), format=np.array(b"coo"))
    with pytest.raises(ValueError, match=r"cannot read the 'coo' sparse matrix file: .*not "
                                         r"backed by data"):
        blocksparse.load_npz(io.BytesIO(_npz_with(coo)))
    csr = dict(data=np.ones(1), indices=np.array([10**7]), indptr=np.array([0, 1, 1, 1, 1]),
               shape=np.array([4, 4]), format=np.array(b"csr"))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        blocksparse.load_npz(io.BytesIO(_npz_with(csr)))


# ---- from_config: sizes bounded before allocation --------------------------------------------

@pytest.mark.parametrize("change,match", [
    ({"num_hidden_layers": 10**9}, r"'num_hidden_layers' must be at most 1024"),
    ({"hidden_size": 2**20, "num_attention_heads": 1, "intermediate_size": 2**20},
     r"config describes a model of about .* more than the .* of memory available"),
    ({"vocab_size": 10**12}, r"more than the .* of memory available"),
])
def test_from_config_refuses_absurd_sizes_at_once(change, match):
    """In a subprocess under a 2 GB address-space limit, within seconds."""
    code = f"""
    import resource, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from blocksparse.nn import BertModel
    t = time.perf_counter()
    try:
        BertModel.from_config(dict({CFG!r}, **{change!r}))
    except ValueError as exc:
        print("ValueError", exc)
    print(round(time.perf_counter() - t, 2))
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    first, seconds = res.stdout.strip().splitlines()
    assert first.startswith("ValueError") and float(seconds) < 5, res.stdout
    import re
    assert re.search(match, first), first


def test_allocations_sized_by_a_declared_shape_are_checked_first():
    """A tiny file may declare a legal but huge shape: it loads, and what would need more
    memory than the machine has (transpose, dense copy, products) fails at once."""
    wide = dict(data=np.ones((1, 4, 1)), indices=np.array([5]), indptr=np.array([0, 1]),
                shape=np.array([4, 10**13]), format=np.array(b"bsr"))
    W = blocksparse.load_npz(io.BytesIO(_npz_with(wide)))
    assert W.shape == (4, 10**13) and W.nnzb == 1
    for call, what in [(lambda: W.T, r"the transpose of a \(4, 10000000000000\) matrix"),
                       (W.toarray, r"the dense \(4, 10000000000000\) array"),
                       (lambda: np.ones((2, 4)) @ W, r"the transpose of a \(4, 1[0-9]*\) matrix")]:
        t = time.perf_counter()
        with pytest.raises(MemoryError, match=rf"{what} needs .* more than the .* available"):
            call()
        assert time.perf_counter() - t < 1
