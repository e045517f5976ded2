"""Texts in, sentence embeddings out: the tokenizer of a checkpoint directory.

Used by the pruning, distillation and quality-report code, which all go
from lines of text to token batches and to mean-pooled embeddings.
"""
import os

import numpy as np

__all__ = ["encode_texts", "load_tokenizer"]


def load_tokenizer(model_dir, max_length=128):
    """The ``tokenizer.json`` of a checkpoint directory, ready for batches.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A Hugging Face (or :meth:`BertModel.save_pretrained` +
        ``blocksparse sparsify``) directory.
    max_length : int, optional
        Texts are truncated to this many tokens.

    Returns
    -------
    tokenizers.Tokenizer

    Raises
    ------
    ValueError
        If the directory has no ``tokenizer.json``.
    ImportError
        Without the ``tokenizers`` package (the ``models`` extra).
    """
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("turning text into tokens needs the 'tokenizers' package; install "
                          "it with: pip install 'blocksparse[models]'") from None
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    path = os.path.join(os.fspath(model_dir), "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"model directory {os.fspath(model_dir)!r} has no tokenizer.json: "
                         f"text cannot be turned into tokens for this model")
    tok = Tokenizer.from_file(path)
    tok.no_padding()  # batches are padded by token_batches, to their own longest text
    tok.enable_truncation(max_length=max_length)
    return tok


def _as_tokenizer(tokenizer, max_length):
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer, max_length)
    if not hasattr(tokenizer, "encode_batch"):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or a model directory, got "
                        f"{type(tokenizer).__name__}")
    return tokenizer


def _pad_id(tok):
    pad = tok.padding or {}
    if "pad_id" in pad:
        return int(pad["pad_id"])
    pid = tok.token_to_id("[PAD]")
    return 0 if pid is None else int(pid)


def token_batches(tokenizer, texts, batch_size=32, max_length=128):
    """Tokenize texts into padded batches of similar length.

    Returns a list of ``(rows, input_ids, attention_mask, token_type_ids)``
    with `rows` the positions of the batch's texts in `texts` (texts are
    sorted by length so that little padding is computed).
    """
    tok = _as_tokenizer(tokenizer, max_length)
    texts = list(texts)
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings")
    enc = tok.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in enc])
    order = np.argsort(lengths, kind="stable")
    pad = _pad_id(tok)
    out = []
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        S = max(int(lengths[rows].max()), 1)
        ids = np.full((len(rows), S), pad, dtype=np.int64)
        mask = np.zeros((len(rows), S), dtype=np.int64)
        types = np.zeros((len(rows), S), dtype=np.int64)
        for r, i in enumerate(rows):
            e = enc[i]
            n = len(e.ids)
            ids[r, :n], mask[r, :n], types[r, :n] = e.ids, e.attention_mask, e.type_ids
        out.append((rows, ids, mask, types))
    return out


def _hidden(output):
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def pooled(model, batches, n):
    """(n, hidden) float64 mean-pooled embeddings of token batches."""
    from .layers import mean_pooling
    out = None
    for rows, ids, mask, types in batches:
        e = mean_pooling(np.asarray(_hidden(model(ids, mask, types)), dtype=np.float32), mask)
        if out is None:
            out = np.zeros((n, e.shape[1]), dtype=np.float64)
        out[rows] = e
    return out


def encode_texts(model, texts, tokenizer, batch_size=32, max_length=128):
    """Mean-pooled sentence embeddings of texts (not normalized).

    Parameters
    ----------
    model : BertModel or callable
        ``model(input_ids, attention_mask, token_type_ids)`` returning the
        last hidden state (batch, seq, hidden) (or an object with
        ``last_hidden_state``, or a tuple whose first item it is).
    texts : sequence of str
    tokenizer : tokenizers.Tokenizer or str or os.PathLike
        A tokenizer, or a model directory holding ``tokenizer.json``.
    batch_size : int, optional
    max_length : int, optional
        Tokens per text at most (truncation).

    Returns
    -------
    ndarray of shape (len(texts), hidden), float64
        In the order of `texts`.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("texts must not be empty")
    max_length = model_max_length(model, max_length)
    return pooled(model, token_batches(tokenizer, texts, batch_size, max_length), len(texts))


def model_max_length(model, max_length):
    """max_length, capped at the model's max_position_embeddings if it has a config."""
    cfg = getattr(model, "config", None)
    limit = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return min(max_length, limit) if limit else max_length
