"""What the task pipelines share: model and tokenizer from one directory, padded batches.

A task pipeline loads the model with :func:`blocksparse.nn.from_pretrained`
(checking that it is of the pipeline's task) and the directory's
``tokenizer.json`` with the ``tokenizers`` package, encodes texts (or text
pairs) without padding, and runs the model on length-sorted batches of at
most ``max_batch_tokens`` padded tokens (:func:`~blocksparse.pipelines.plan_batches`,
the embedding pipeline's planner).  Token type ids go to the model only
when it has more than one token type (BERT, ELECTRA; not RoBERTa or
XLM-RoBERTa, whose tokenizers do not make them either).
"""
from pathlib import Path

import numpy as np

from .embedding import DEFAULT_MAX_BATCH_TOKENS, _positive, _text_list, plan_batches

__all__ = ["TaskPipeline", "pad_batch", "WrongTaskError"]


class WrongTaskError(ValueError):
    """The checkpoint holds a model of another task than the pipeline's."""


def softmax(x, axis=-1):
    """Softmax along `axis`, in the dtype of `x` (float32 logits stay float32, as transformers')."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def pad_batch(encodings, pad_id, types=True):
    """(input_ids, attention_mask, token_type_ids or None), int64 (batch, longest).

    Parameters
    ----------
    encodings : sequence of tokenizers.Encoding (or objects with ``ids`` and
        ``type_ids``)
    pad_id : int
    types : bool, optional
        Also return the token type ids (else None).
    """
    S = max((len(e.ids) for e in encodings), default=0)
    ids = np.full((len(encodings), S), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), S), dtype=np.int64)
    tt = np.zeros((len(encodings), S), dtype=np.int64) if types else None
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = 1
        if types:
            tt[row, :n] = e.type_ids
    return ids, mask, tt


def _pairs(texts, text_pairs):
    """The tokenizer's inputs: texts, or (text, pair) tuples."""
    texts = _text_list(texts)
    if text_pairs is None:
        return texts
    pairs = _text_list(text_pairs)
    if len(pairs) != len(texts):
        raise ValueError(f"text_pairs must have one text per text: {len(texts)} texts, "
                         f"{len(pairs)} pairs")
    return list(zip(texts, pairs))


class TaskPipeline:
    """Model + tokenizer of one checkpoint directory, for the task models' pipelines.

    Parameters
    ----------
    model_dir : str or os.PathLike
        A checkpoint directory (transformers or ``save_pretrained``) with
        ``tokenizer.json``.
    dtype, sparsity, blocksize
        As in :func:`blocksparse.nn.from_pretrained`.
    max_length : int, optional
        Truncate at this many tokens (special tokens included); at most and
        by default the model's :attr:`max_length`.
    max_batch_tokens : int, optional
        Padded tokens per forward pass (default 8192).
    model : callable, optional
        A loaded task model to use instead of loading one.
    **load
        Further :func:`blocksparse.nn.from_pretrained` options
        (``architecture``, ``strict``, ``smoothing``...).

    Attributes
    ----------
    model_dir : pathlib.Path
    model
    tokenizer : tokenizers.Tokenizer
    max_length : int
    max_batch_tokens : int
    pad_id : int
    """

    task_model = None   # the blocksparse.nn class the pipeline runs
    name = "pipeline"

    def __init__(self, model_dir, *, dtype=None, sparsity=None, blocksize=(4, 1),
                 max_length=None, max_batch_tokens=DEFAULT_MAX_BATCH_TOKENS, model=None,
                 **load):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model_dir {str(model_dir)!r} is not a directory")
        if model is None:
            from .. import nn
            model = nn.from_pretrained(self.model_dir, dtype=dtype, sparsity=sparsity,
                                       blocksize=blocksize, **load)
        if not isinstance(model, self.task_model):
            what = getattr(model, "architecture", type(model).__name__)
            raise WrongTaskError(f"{self.name} needs a model for {self.task_model.task}; "
                                 f"{str(model_dir)!r} holds a {what}")
        self.model = model
        self.max_batch_tokens = _positive(max_batch_tokens, "max_batch_tokens")
        self.max_length = model.max_length if max_length is None else \
            min(_positive(max_length, "max_length"), model.max_length)
        self.tokenizer = self._load_tokenizer()
        self.pad_id = self._pad_token_id()
        self._types = model.config.get("type_vocab_size", 0) > 1

    def __repr__(self):
        return (f"<{type(self).__name__} {self.model_dir.name}: {self.model.architecture}, "
                f"{self.model.dtype}, max_length {self.max_length}>")

    def _load_tokenizer(self):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(f"{self.name} needs the 'tokenizers' package "
                              f"(pip install 'blocksparse[models]')") from None
        from ..nn._checkpoint import confined
        path = Path(confined(str(self.model_dir), "tokenizer.json", "tokenizer file"))
        if not path.is_file():
            raise FileNotFoundError(f"model_dir {str(self.model_dir)!r} has no tokenizer.json")
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()  # each batch is padded to its longest sequence
        # set once: calls do not change the tokenizer, so threads may share the pipeline
        tok.enable_truncation(self.max_length, strategy="longest_first")
        return tok

    def _pad_token_id(self):
        # the embedding pipeline's rule (the tokenizer's padding, else [PAD] or <pad>, else 0)
        from .embedding import EmbeddingPipeline
        return EmbeddingPipeline._pad_token_id(self)

    def _specials(self, pair):
        proc = self.tokenizer.post_processor
        return proc.num_special_tokens_to_add(pair) if proc is not None else 0

    def encode(self, texts, text_pairs=None):
        """tokenizers Encodings of texts (or pairs), truncated at :attr:`max_length`.

        Pairs are truncated longest first, as transformers does by default.

        Parameters
        ----------
        texts : str or sequence of str
        text_pairs : str or sequence of str, optional
            The second text of each pair (one per text).

        Returns
        -------
        list of tokenizers.Encoding

        Raises
        ------
        ValueError
            If the special tokens leave no room for text, or `text_pairs`
            does not match `texts`.
        TypeError
            If a text is not a string.
        """
        inputs = _pairs(texts, text_pairs)
        special = self._specials(text_pairs is not None)
        if self.max_length <= special:
            raise ValueError(f"max_length {self.max_length} leaves no room for text: the "
                             f"model adds {special} special tokens")
        return self.tokenizer.encode_batch(inputs) if inputs else []

    def run(self, encodings):
        """Model outputs for each encoding, in input order.

        The encodings are grouped into length-sorted batches of at most
        :attr:`max_batch_tokens` padded tokens; the model's output rows of a
        batch are handed back per encoding, trimmed to its length for
        token-level outputs.

        Returns
        -------
        list
            One output per encoding: for sequence-level models the logits
            row, else arrays of (its length, ...).
        """
        out = [None] * len(encodings)
        lengths = [len(e.ids) for e in encodings]
        for batch in plan_batches(lengths, self.max_batch_tokens):
            ids, mask, tt = pad_batch([encodings[i] for i in batch], self.pad_id, self._types)
            y = self.model(ids, attention_mask=mask, token_type_ids=tt)
            for row, i in enumerate(batch):
                out[i] = self._row(y, row, lengths[i])
        return out

    @staticmethod
    def _row(y, row, length):
        return y[row] if y.ndim == 2 else y[row, :length]
