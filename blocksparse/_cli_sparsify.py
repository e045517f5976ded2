"""``blocksparse sparsify`` with data, and the quality it reports.

:func:`prepare` checks everything that can be checked before the long work
(the method, the calibration file, the tokenizer, the sparsity), so that bad
input fails in a second with exit status 2.  :func:`build` prunes;
:func:`report` measures the result against the dense source on held-out
texts, prints it, warns below a mean cosine of 0.95 and writes it into the
checkpoint's ``config.json``.  :func:`warn_on_the_fly` is ``embed
--sparsity``'s warning.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._cli import UsageError

__all__ = ["prepare", "build", "report", "warn_on_the_fly", "read_calibration"]

BUILTIN = "builtin"
ESTIMATE_TEXTS = 32  # texts embed --sparsity compares against the dense model


def read_calibration(path, method="obs"):
    """Texts of a calibration file: UTF-8, one text per line, blank lines skipped.

    ``"builtin"`` stands for the package's own offline corpus (its
    ``"calibration"`` split, see :func:`blocksparse.nn.offline_texts`; for
    ``method="distill"`` its ``"train"`` split too).

    Raises
    ------
    UsageError
        If the file is missing, not UTF-8, or holds too few texts.
    """
    from .nn._sparsify import MIN_CALIBRATION_TEXTS
    if path == BUILTIN:
        from .nn import offline_texts
        texts = offline_texts("calibration")
        return texts + offline_texts("train") if method == "distill" else texts
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--calibration {path!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"--calibration {path!r} is not UTF-8 text (line {line}, byte "
                         f"{exc.start}: {raw[exc.start:exc.start + 1]!r}); save it as UTF-8, "
                         f"one text per line") from None
    texts = [t.strip() for t in text.splitlines() if t.strip()]
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise UsageError(f"--calibration {path!r} holds {len(texts)} non-blank lines; give at "
                         f"least {MIN_CALIBRATION_TEXTS} texts, one per line (a few hundred "
                         f"lines of real text are typical), or --calibration {BUILTIN}")
    return texts


def prepare(args, src):
    """The pruning plan, with every cheap check done; raises UsageError."""
    method = args.method or ("obs" if args.calibration else "magnitude")
    if method in ("obs", "distill") and not args.calibration:
        raise UsageError(f"--method {method} needs --calibration TEXTS.txt (one text per line) "
                         f"or --calibration {BUILTIN}")
    if method != "distill" and (args.steps or args.time_budget):
        raise UsageError("--steps and --time-budget are for --method distill")
    if method == "distill":
        from .train import require_torch
        try:
            require_torch()
        except ImportError as exc:
            raise UsageError(f"--method distill: {exc}") from None
    if args.sparsity >= 1.0:
        raise UsageError("--sparsity 1 removes every weight of the encoder, which then ignores "
                         "its input: give a fraction below 1")
    has_tokenizer = (src / "tokenizer.json").is_file()
    if args.calibration and not has_tokenizer:
        raise UsageError(f"SRC {str(src)!r} has no tokenizer.json: --calibration text cannot "
                         f"be turned into tokens for this model")
    try:
        raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"SRC config.json cannot be read: {exc}") from None
    own = raw.get("blocksparse") if isinstance(raw, dict) else None
    if isinstance(own, dict) and (own.get("sparsity") or own.get("dtype") == "int8"):
        raise UsageError(f"SRC {str(src)!r} is already pruned or quantized (sparsity "
                         f"{own.get('sparsity')}, {own.get('dtype')}): sparsify the dense "
                         f"checkpoint it came from")
    from .nn._checkpoint import normalize_config
    from .nn._sparsify import _check_blocksize_fits, _check_enough_tokens
    try:
        cfg = normalize_config({k: v for k, v in raw.items() if k != "blocksparse"})
        _check_blocksize_fits(cfg, args.blocksize)
    except (ValueError, TypeError) as exc:
        if method != "magnitude" or isinstance(own, dict):
            raise UsageError(f"SRC {str(src)!r}: {exc}") from None
        # other families: magnitude pruning through nn.from_pretrained, which checks them
        return {"src": src, "method": method, "texts": None, "has_tokenizer": has_tokenizer}
    if args.eval_texts < 20:
        raise UsageError(f"--eval-texts must be at least 20 (recall@10 needs neighbours), got "
                         f"{args.eval_texts}")
    texts = read_calibration(args.calibration, method) if args.calibration else None
    if texts is not None:
        from .nn._text import token_batches
        try:
            limit = min(128, cfg["max_position_embeddings"])
            _check_enough_tokens(token_batches(src, texts, max_length=limit), cfg)
        except ValueError as exc:
            raise UsageError(f"--calibration {args.calibration!r}: {exc}") from None
    return {"src": src, "method": method, "texts": texts, "has_tokenizer": has_tokenizer}


def _progress(layers):
    """log callback of sparsify: one line per encoder layer on stderr."""
    state = {"t0": time.perf_counter(), "errors": []}

    def log(rec):
        state["errors"].append(rec.get("error_obs", rec.get("error_masked", 0.0)))
        if rec["layer"].endswith("ffn2"):
            i = int(rec["layer"].split(".")[0])
            print(f"  layer {i + 1}/{layers} pruned ({rec['method']}): mean relative output "
                  f"error {np.mean(state['errors']):.4f}, "
                  f"{time.perf_counter() - state['t0']:.1f} s", file=sys.stderr, flush=True)
            state["errors"] = []
    return log


def _distill(plan, args):
    """The pruned and distilled BertModel; the training record goes into `plan`."""
    from .train import distill
    from .train._distill import DEFAULT_STEPS, OBS_START_TEXTS
    steps = args.steps or (None if args.time_budget else DEFAULT_STEPS)
    losses, record = [], {"steps_budget": steps, "time_budget": args.time_budget}

    def log(rec):
        if rec.get("event") == "start":
            record["start_seconds"] = round(rec["seconds"], 1)
            print(f"one-shot start: {rec['seconds']:.1f} s; training on {len(plan['texts'])} "
                  f"texts", file=sys.stderr, flush=True)
        else:
            losses.append(rec["loss"])
            record.update(steps=rec["step"], train_seconds=round(rec["seconds"], 1))

    budget = " or ".join(([f"{steps} steps"] if steps else [])
                         + ([f"{args.time_budget:g} s"] if args.time_budget else []))
    print(f"pruning with OBS on {min(len(plan['texts']), OBS_START_TEXTS)} texts, then "
          f"distilling ({budget})", file=sys.stderr, flush=True)
    model = distill(plan["src"], args.sparsity, plan["texts"], blocksize=args.blocksize,
                    steps=steps, time_budget=args.time_budget,
                    dtype="int8" if args.int8 else "float32", log=log)
    n = min(20, len(losses))  # single batches are noisy: means of the first and last steps
    record.update(loss_first=round(float(np.mean(losses[:n])), 6),
                  loss_last=round(float(np.mean(losses[-n:])), 6))
    plan["training"] = record
    print(f"trained {record['steps']} steps in {record['train_seconds']:.0f} s: loss "
          f"{record['loss_first']:.4f} (first {n} steps) -> {record['loss_last']:.4f} (last "
          f"{n})", file=sys.stderr, flush=True)
    return model


def build(plan, args):
    """The pruned BertModel (the long work)."""
    from .nn import sparsify
    from .nn._checkpoint import normalize_config, read_config
    if plan["method"] == "distill":
        return _distill(plan, args)
    layers = normalize_config(read_config(plan["src"])[0])["num_hidden_layers"]
    if plan["method"] == "obs":
        print(f"pruning {layers} layers with OBS on {len(plan['texts'])} calibration texts",
              file=sys.stderr, flush=True)
    return sparsify(plan["src"], args.sparsity, method=plan["method"],
                    calibration=plan["texts"], blocksize=args.blocksize,
                    dtype="int8" if args.int8 else "float32", balanced=args.balanced,
                    damping=args.damping, log=_progress(layers))


def _eval_texts(n, exclude):
    from .nn import offline_texts
    texts = [t for t in offline_texts("eval") if t not in exclude]
    return texts[:n]


def write_metadata(dst, section):
    """Add `section` to the 'blocksparse' part of DST/config.json, atomically."""
    path = Path(dst) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.setdefault("blocksparse", {}).update(section)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def report(plan, args, model, dst, seconds):
    """Measure, print, warn and record the quality of the pruned model."""
    from .nn import BertModel, fidelity
    from .nn._fidelity import WARN_BELOW
    info = {"method": plan["method"], "seconds": round(seconds, 1)}
    if plan["texts"] is not None:
        info.update(calibration_texts=len(plan["texts"]), damping=args.damping,
                    calibration=(BUILTIN if args.calibration == BUILTIN
                                 else os.path.basename(args.calibration)))
    if "training" in plan:
        info["training"] = plan["training"]
    if not plan["has_tokenizer"]:
        print("warning: quality not measured: SRC has no tokenizer.json", file=sys.stderr)
        write_metadata(dst, {"sparsify": info})
        return None
    if type(model) is not BertModel:  # the report compares sentence embeddings of encoders
        print(f"warning: quality not measured: the report covers BERT-family encoders, not "
              f"{type(model).__name__}", file=sys.stderr)
        write_metadata(dst, {"sparsify": info})
        return None
    texts = _eval_texts(args.eval_texts, set(plan["texts"] or ()))
    print(f"measuring quality on {len(texts)} held-out texts ...", file=sys.stderr, flush=True)
    try:
        dense = BertModel.from_pretrained(plan["src"])
        q = fidelity(model, dense, texts, plan["src"])
    except Exception as exc:  # noqa: BLE001  (DST is written: say why quality is missing)
        print(f"warning: quality not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        write_metadata(dst, {"sparsify": info})
        return None
    q = {"reference": "source model, float32", "texts_from": "blocksparse.nn.offline_texts"
         "('eval')", **q}
    info["quality"] = q
    write_metadata(dst, {"sparsify": info})
    print(f"quality vs the dense source on {q['texts']} held-out texts: mean cosine "
          f"{q['mean_cosine']:.4f}, min {q['min_cosine']:.4f}, recall@10 "
          f"{q['recall_at_10']:.3f}")
    if q["mean_cosine"] < WARN_BELOW:
        hint = (" (one-shot magnitude pruning; --method obs --calibration TEXTS.txt keeps more)"
                if plan["method"] == "magnitude" else " (try a lower --sparsity)")
        print(f"warning: mean cosine {q['mean_cosine']:.3f} is below {WARN_BELOW}: this "
              f"model's embeddings differ noticeably from the source's{hint}",
              file=sys.stderr)
    return q


def warn_on_the_fly(model_dir, sparsity, texts, embeddings, max_length):
    """``embed --sparsity``: warn that magnitude pruning on the fly degrades the model.

    The estimate compares `embeddings` (mean-pooled, not normalized) of the
    first texts with the dense model's.
    """
    from .nn import BertModel, encode_texts
    n = min(len(texts), ESTIMATE_TEXTS)
    dense = encode_texts(BertModel.from_pretrained(model_dir), texts[:n], model_dir,
                         max_length=max_length)
    a, b = np.asarray(embeddings[:n], np.float64), dense
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                        1e-300)
    print(f"warning: --sparsity {sparsity:g} prunes the dense model by magnitude on the fly, "
          f"which degrades it: the embeddings of {'these' if n == len(texts) else 'the first'} "
          f"{n} text{'s' if n > 1 else ''} have mean cosine {cos.mean():.3f} (min "
          f"{cos.min():.3f}) to the dense model's.  Pruning with data keeps more: "
          f"'blocksparse sparsify SRC DST --sparsity S --method obs --calibration TEXTS.txt' "
          f"measures and reports what it keeps; then embed with --model DST.",
          file=sys.stderr)
    return float(cos.mean())
