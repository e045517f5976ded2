"""One loader for every supported checkpoint: :func:`from_pretrained`.

``config.json`` names the model: ``architectures[0]`` (for example
``"RobertaForSequenceClassification"``) and ``model_type`` (the encoder
family).  :data:`ARCHITECTURES` maps each supported architecture to its
encoder class and, for a task model, its head: where transformers keeps the
head's tensors, its activation and its LayerNorm.  A checkpoint without
``architectures`` loads as the encoder of its ``model_type``.
"""
import os
from typing import NamedTuple

import numpy as np

from . import _checkpoint as ckpt
from .bert import _RELOADS, BertModel, default_attention
from .electra import ElectraModel
from .heads import (PROBLEM_TYPES, Head, ModelForMaskedLM, ModelForPreTraining,
                    ModelForQuestionAnswering, ModelForSequenceClassification,
                    ModelForTokenClassification)
from .layers import LayerNorm, Linear, _check_dtype_name
from .roberta import RobertaModel

__all__ = ["from_pretrained", "ARCHITECTURES", "supported_architectures"]


class HeadSpec(NamedTuple):
    """Where a transformers head keeps its tensors and what it computes.

    Names are the checkpoint's (without ``.weight``/``.bias``).  `dense`
    ``"pooler"`` is the encoder's pooler (BERT); `activation` ``"config"``
    the encoder's ``hidden_act``; `norm_eps` None the config's
    ``layer_norm_eps``; `width` ``"embedding"`` ELECTRA's embedding size
    (its generator head maps back to it), else the hidden size.
    """

    model: type
    out: str
    dense: str = None
    activation: str = None
    norm: str = None
    norm_eps: float = None
    bias_aliases: tuple = ()
    width: str = "hidden"

    @property
    def rows(self):
        return "first" if self.model is ModelForSequenceClassification else "all"

    @property
    def tied(self):
        return self.model is ModelForMaskedLM


class Architecture(NamedTuple):
    """A supported transformers architecture: its family, encoder class and head (or None)."""

    model_type: str
    encoder: type
    head: HeadSpec = None


_SEQ, _TOK, _QA = ModelForSequenceClassification, ModelForTokenClassification, \
    ModelForQuestionAnswering


def _family(name, model_type, encoder, heads):
    return {(name + suffix if suffix else name + "Model"): Architecture(model_type, encoder, h)
            for suffix, h in heads.items()}


_COMMON = {"": None, "ForTokenClassification": HeadSpec(_TOK, "classifier"),
           "ForQuestionAnswering": HeadSpec(_QA, "qa_outputs")}
_ROBERTA = dict(_COMMON, **{
    "ForSequenceClassification": HeadSpec(_SEQ, "classifier.out_proj", "classifier.dense",
                                          "tanh"),
    "ForMaskedLM": HeadSpec(ModelForMaskedLM, "lm_head.decoder", "lm_head.dense", "gelu",
                            "lm_head.layer_norm", bias_aliases=("lm_head.bias",))})

#: Supported ``architectures`` values: name -> :class:`Architecture`.
ARCHITECTURES = {
    **_family("Bert", "bert", BertModel, dict(_COMMON, **{
        "ForSequenceClassification": HeadSpec(_SEQ, "classifier", "pooler", "tanh"),
        "ForMaskedLM": HeadSpec(ModelForMaskedLM, "cls.predictions.decoder",
                                "cls.predictions.transform.dense", "config",
                                "cls.predictions.transform.LayerNorm",
                                bias_aliases=("cls.predictions.bias",))})),
    **_family("DistilBert", "distilbert", BertModel, dict(_COMMON, **{
        "ForSequenceClassification": HeadSpec(_SEQ, "classifier", "pre_classifier", "relu"),
        "ForMaskedLM": HeadSpec(ModelForMaskedLM, "vocab_projector", "vocab_transform",
                                "config", "vocab_layer_norm", norm_eps=1e-12)})),
    **_family("Roberta", "roberta", RobertaModel, _ROBERTA),
    **_family("XLMRoberta", "xlm-roberta", RobertaModel, _ROBERTA),
    # the pre-LayerNorm variants: the same heads on PreNormBertLayer stacks
    **_family("RobertaPreLayerNorm", "roberta-prelayernorm", RobertaModel, _ROBERTA),
    **_family("XLMRobertaXL", "xlm-roberta-xl", RobertaModel, _ROBERTA),
    **_family("Electra", "electra", ElectraModel, dict(_COMMON, **{
        "ForSequenceClassification": HeadSpec(_SEQ, "classifier.out_proj", "classifier.dense",
                                              "gelu"),
        "ForPreTraining": HeadSpec(ModelForPreTraining,
                                   "discriminator_predictions.dense_prediction",
                                   "discriminator_predictions.dense", "config"),
        "ForMaskedLM": HeadSpec(ModelForMaskedLM, "generator_lm_head",
                                "generator_predictions.dense", "gelu",
                                "generator_predictions.LayerNorm", width="embedding")})),
}
_BASE = {a.model_type: name for name, a in ARCHITECTURES.items() if a.head is None}
# checkpoints of BERT pre-training carry the next-sentence head besides the masked-LM one
_IGNORED = {"BertForMaskedLM": ("cls.seq_relationship.",)}


def supported_architectures():
    """The ``architectures`` values :func:`from_pretrained` loads, sorted.

    Returns
    -------
    list of str
    """
    return sorted(ARCHITECTURES)


# ---- configuration ---------------------------------------------------------------

def resolve_architecture(raw, architecture=None):
    """The architecture name to load: `architecture`, else ``architectures[0]``, else the base.

    Raises
    ------
    ValueError
        Naming the architecture when it is not supported, the key when it
        is malformed, or ``model_type`` when it contradicts the
        architecture's family.
    """
    model_type = raw.get("model_type")
    if architecture is not None:
        name, where = architecture, "architecture"
    elif "architectures" in raw:
        archs = raw["architectures"]
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str)
                                                               for a in archs):
            raise ValueError(f"config key 'architectures' must be a non-empty list of names, "
                             f"got {archs!r}")
        name, where = archs[0], "config key 'architectures'"
    else:
        if model_type is None:
            model_type = "distilbert" if "n_layers" in raw or "dim" in raw else "bert"
        if model_type not in _BASE:
            ckpt.normalize_config(raw, ckpt.FAMILIES)  # names the model_type
        return _BASE[model_type]
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"{where} names {name!r}, which blocksparse.nn does not support; "
                         f"supported: {', '.join(supported_architectures())} (pass "
                         f"architecture=... to load the checkpoint as one of them)")
    family = ARCHITECTURES[name].model_type
    if model_type is not None and model_type != family:
        raise ValueError(f"config key 'model_type' is {model_type!r} but {name} is a "
                         f"{family!r} architecture")
    return name


def _labels(raw):
    """id2label as {int: str}, from ``id2label`` (or ``num_labels`` alone)."""
    if "id2label" not in raw:
        n = raw.get("num_labels")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("config has no key 'id2label' (nor 'num_labels'): the "
                             "classification head's labels are unknown")
        return {i: f"LABEL_{i}" for i in range(n)}
    raw_map = raw["id2label"]
    if not isinstance(raw_map, dict) or not raw_map:
        raise ValueError(f"config key 'id2label' must map label ids to names, got {raw_map!r}")
    out = {}
    for k, v in raw_map.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            i = -1
        if isinstance(k, bool) or str(i) != str(k).strip() or not isinstance(v, str):
            raise ValueError(f"config key 'id2label' must map ids '0', '1', ... to label "
                             f"names, got {k!r}: {v!r}")
        out[i] = v
    if sorted(out) != list(range(len(out))):
        raise ValueError(f"config key 'id2label' must hold the ids 0 to {len(out) - 1}, got "
                         f"{sorted(out)}")
    n = raw.get("num_labels")
    if n is not None and n != len(out):
        raise ValueError(f"config key 'num_labels' = {n!r} does not match the {len(out)} "
                         f"labels of 'id2label'")
    return out


def head_config(name, raw):
    """The head's part of the configuration: architectures, labels, problem type, tying."""
    spec = ARCHITECTURES[name].head
    out = {"architectures": [name]}
    if spec is None:
        return out
    if spec.model in (ModelForSequenceClassification, ModelForTokenClassification):
        labels = _labels(raw)
        out["id2label"] = {str(i): labels[i] for i in range(len(labels))}
        out["label2id"] = {v: i for i, v in labels.items()}
    if spec.model is ModelForSequenceClassification:
        pt = raw.get("problem_type")
        if pt is not None and pt not in PROBLEM_TYPES:
            raise ValueError(f"config key 'problem_type' must be null or one of "
                             f"{', '.join(map(repr, PROBLEM_TYPES))}, got {pt!r}")
        out["problem_type"] = pt
    if spec.tied:
        tie = raw.get("tie_word_embeddings", True)
        if not isinstance(tie, bool):
            raise ValueError(f"config key 'tie_word_embeddings' must be true or false, got "
                             f"{tie!r}")
        out["tie_word_embeddings"] = tie
    return out


def _head_shapes(spec, cfg, head_cfg):
    """(dense shape or None, out shape) of a head."""
    H = cfg["hidden_size"]
    D = cfg.get("embedding_size", H) if spec.width == "embedding" else H
    if spec.model is ModelForQuestionAnswering:
        n = 2
    elif spec.model is ModelForPreTraining:
        n = 1
    elif spec.model is ModelForMaskedLM:
        n = cfg["vocab_size"]
    else:
        n = len(head_cfg["id2label"])
    return ((D, H) if spec.dense else None), (n, D)


def own_head_linears(name, raw, cfg):
    """The own format's head Linear layers of architecture `name`: {"head.dense": shape, ...}.

    Used by :func:`blocksparse.nn._checkpoint.open_own` to validate a saved
    task model.

    Raises
    ------
    ValueError
        If `name` is not a supported architecture of the config's family,
        or the head's configuration (labels) is missing.
    """
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"config 'blocksparse' key 'architecture' names {name!r}, which "
                         f"blocksparse.nn does not support")
    arch = ARCHITECTURES[name]
    if arch.model_type != cfg["model_type"]:
        raise ValueError(f"config 'blocksparse' key 'architecture' is {name}, a "
                         f"{arch.model_type!r} architecture, but 'model_type' is "
                         f"{cfg['model_type']!r}")
    if arch.head is None:
        return {}
    head_cfg = head_config(name, raw)
    dense, out = _head_shapes(arch.head, cfg, head_cfg)
    shapes = {}
    if arch.head.dense == "pooler":
        shapes["pooler"] = dense
    elif dense:
        shapes["head.dense"] = dense
    if not (arch.head.tied and head_cfg["tie_word_embeddings"]):
        shapes["head.out"] = out
    return shapes


# ---- building --------------------------------------------------------------------

def _head_eps(spec, cfg):
    return cfg["layer_norm_eps"] if spec.norm_eps is None else spec.norm_eps


def _activation(spec, cfg):
    return cfg["hidden_act"] if spec.activation == "config" else spec.activation


def _make_head(spec, cfg, head_cfg, base, dense, norm_wb, out_wb):
    """A Head from its arrays (`dense` a Linear or None; norm and out (weight, bias) pairs)."""
    tied = spec.tied and head_cfg["tie_word_embeddings"]
    norm = LayerNorm(*norm_wb, _head_eps(spec, cfg)) if norm_wb else None
    out = Linear(base.embeddings.word if tied else out_wb[0], out_wb[1])
    return Head(out, dense, _activation(spec, cfg) if spec.dense else None, norm, spec.rows,
                tied=tied, shared_dense=spec.dense == "pooler")


def _hf_head_arrays(spec, tensors, cfg, head_cfg):
    """(dense (weight, bias) or None, norm (weight, bias) or None, out (weight, bias)) of a
    Hugging Face checkpoint's head, every tensor checked; a tied decoder's weight is None."""
    dense_shape, out_shape = _head_shapes(spec, cfg, head_cfg)
    D = out_shape[1]
    dense_wb = None
    if spec.dense and spec.dense != "pooler":
        dense_wb = (tensors.take(spec.dense + ".weight", dense_shape),
                    tensors.take(spec.dense + ".bias", (D,)))
    norm_wb = None
    if spec.norm:
        norm_wb = (tensors.take(spec.norm + ".weight", (D,), alt=spec.norm + ".gamma"),
                   tensors.take(spec.norm + ".bias", (D,), alt=spec.norm + ".beta"))
    bias_names = (spec.out + ".bias",) + spec.bias_aliases
    bias = None
    for n in bias_names:
        if bias is None and n in tensors:
            bias = tensors.take(n, (out_shape[0],))
        else:
            tensors.mark_used(n, (out_shape[0],))  # a tied copy of the same vector
    if bias is None:
        raise ValueError(f"checkpoint is missing the tensor {bias_names[-1]!r}")
    weight = None
    if spec.tied and head_cfg["tie_word_embeddings"]:
        # transformers ties it to the embeddings
        tensors.mark_used(spec.out + ".weight", out_shape)
    else:
        weight = tensors.take(spec.out + ".weight", out_shape)
    return dense_wb, norm_wb, (weight, bias)


def _own_head(spec, cfg, head_cfg, base, meta, get):
    _, out_shape = _head_shapes(spec, cfg, head_cfg)
    D = out_shape[1]
    dense = base.pooler if spec.dense == "pooler" else \
        ckpt.own_linear(meta, get, "head.dense") if spec.dense else None
    norm_wb = (get("head.norm.weight", (D,)), get("head.norm.bias", (D,))) if spec.norm \
        else None
    if spec.tied and head_cfg["tie_word_embeddings"]:
        out_wb = (None, get("head.out.bias", (out_shape[0],), optional=True))
    else:
        out = ckpt.own_linear(meta, get, "head.out")
        out_wb = (out.weight, out.bias)
    return _make_head(spec, cfg, head_cfg, base, dense, norm_wb, out_wb)


def _check_strict(name, tensors, strict):
    """The tensors nothing read; refused when `strict` (the checkpoint is not a `name`)."""
    unused = tensors.unused()
    extra = [k for k in unused if not k.startswith(_IGNORED.get(name, ()))]
    if extra and strict:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ValueError(f"checkpoint has tensors a {name} does not use: "
                         f"{', '.join(map(repr, extra[:3]))}{more} (pass strict=False to "
                         f"load it anyway, leaving them out)")
    return unused


def _load_hf(name, raw, directory, sparsity, blocksize, dtype, balanced, smoothing,
             calibration, strict, float_features, float_weights, attention):
    arch = ARCHITECTURES[name]
    cfg = ckpt.normalize_config(dict(raw, model_type=arch.model_type), ckpt.FAMILIES)
    head_cfg = head_config(name, raw)
    dtype = "float32" if dtype is None else _check_dtype_name(dtype)
    attention = default_attention(attention)
    tensors = ckpt.HFTensors(directory)
    weights = ckpt.load_hf_weights(directory, cfg, tensors)
    ckpt.check_encoder_extras(tensors, cfg)
    spec = arch.head
    if spec is not None and spec.dense == "pooler" and "pooler.weight" not in weights:
        raise ValueError(f"checkpoint is missing the tensor "
                         f"{tensors.prefix + 'pooler.dense.weight'!r} (the pooler of the "
                         f"classification head)")
    # every tensor is read and checked before the (slow) pruning and quantization
    arrays = _hf_head_arrays(spec, tensors, cfg, head_cfg) if spec is not None else None
    unused = _check_strict(name, tensors, strict)
    base = arch.encoder._build(cfg, weights, lambda i: weights, sparsity, blocksize, dtype,
                               balanced, smoothing, calibration, float_features, float_weights,
                               ckpt.special_token_ids(directory), attention)
    if spec is None:
        base.unused_tensors = unused
        return base
    dense_wb, norm_wb, out_wb = arrays
    dense = base.pooler if spec.dense == "pooler" else Linear(*dense_wb) if dense_wb else None
    head = _make_head(spec, cfg, head_cfg, base, dense, norm_wb, out_wb)
    model = spec.model(name, base, head, dict(cfg, **head_cfg))
    model.unused_tensors = unused
    return model


def _load_own(raw, directory, sparsity, dtype, architecture, attention):
    section = raw["blocksparse"]
    name = section.get("architecture") if isinstance(section, dict) else None
    model_type = raw.get("model_type", "bert")
    if name is None:
        name = _BASE.get(model_type)
        if name is None:
            ckpt.normalize_config(raw, ckpt.FAMILIES)  # names the model_type
    if architecture is not None and architecture != name:
        raise ValueError(f"this checkpoint was saved by blocksparse as a {name}; load it "
                         f"with architecture=None (or {name!r})")
    arch = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if arch is None:  # open_own names it
        arch = Architecture(model_type, BertModel)
    elif arch.model_type != model_type:
        raise ValueError(f"config 'blocksparse' key 'architecture' is {name}, a "
                         f"{arch.model_type!r} architecture, but 'model_type' is "
                         f"{model_type!r}")
    cfg, meta, get = ckpt.open_own(arch.encoder._normalize_config, raw, directory, sparsity,
                                   dtype)
    base = ckpt.build_own_base(arch.encoder, cfg, meta, get, attention)
    if arch.head is None:
        base.unused_tensors = []
        return base
    head_cfg = head_config(name, raw)
    head = _own_head(arch.head, cfg, head_cfg, base, meta, get)
    return arch.head.model(name, base, head, dict(cfg, **head_cfg))


def from_pretrained(path, dtype=None, sparsity=None, blocksize=(4, 1), balanced=False,
                    smoothing=0.5, calibration=None, *, float_features=None, float_weights=None,
                    architecture=None, strict=True, attention=None):
    """Load the model a checkpoint directory holds, with its task head.

    ``config.json``'s ``architectures`` (for example
    ``["XLMRobertaForTokenClassification"]``) chooses the model class; see
    :func:`supported_architectures`.  The encoder is pruned and quantized
    on the way in as :meth:`BertModel.from_pretrained
    <blocksparse.nn.BertModel.from_pretrained>` does (every encoder Linear
    layer; the head stays dense float32).  Every tensor is read and checked
    before anything is built: a failure returns nothing.

    Parameters
    ----------
    path : str or os.PathLike
        A Hugging Face directory (``config.json`` + ``model.safetensors`` or
        shards) or one written by ``save_pretrained``.
    dtype : {None, "float32", "int8"}, optional
    sparsity : float in [0, 1], optional
    blocksize : tuple of int, optional
        (4, 1) (default) is four consecutive output rows in one input column
        of a weight (out_features, in_features); (1, 4) four consecutive
        weights of one row along the input features.
    balanced : bool, optional
    smoothing : float in (0, 1] or None, optional
    calibration : array_like of int, or (input_ids, attention_mask), optional
    float_features : int, optional
    float_weights : float in [0, 1), optional
        As in :meth:`BertModel.from_pretrained
        <blocksparse.nn.BertModel.from_pretrained>` (INT8 only: the outlier
        input features and the largest weights of each row kept in float32).
    architecture : str, optional
        Load as this architecture instead of the one ``config.json`` names
        (for example a checkpoint whose ``architectures`` is a custom class
        around a ``BertForMaskedLM``).
    strict : bool, optional
        Refuse tensors the model does not use (default).  With False they
        are left out and listed in the model's ``unused_tensors``.
        Tensors inside the encoder's own name space that the configuration
        has no place for (a layer more than ``num_hidden_layers``) are
        refused either way.
    attention : {None, "float32", "int8"}, optional
        Precision of the attention's products ``Q K^T`` and ``P V``
        (:func:`blocksparse.nn.attention`).  None: the one saved with an
        own-format checkpoint, else "float32" ("int8" is faster on long
        sequences, see docs/nn.rst).

    Returns
    -------
    BertModel, RobertaModel, ElectraModel or a task model
        :class:`~blocksparse.nn.ModelForSequenceClassification`,
        :class:`~blocksparse.nn.ModelForTokenClassification`,
        :class:`~blocksparse.nn.ModelForQuestionAnswering`,
        :class:`~blocksparse.nn.ModelForMaskedLM` or
        :class:`~blocksparse.nn.ModelForPreTraining`.

    Raises
    ------
    FileNotFoundError
        Without ``config.json`` or weights.
    ValueError
        Naming the architecture that is not supported, the config key that
        is missing or wrong (``id2label`` for a classification head), or the
        tensor that is missing, has the wrong shape, or is not used.
    ImportError
        Without the ``safetensors`` package (the ``models`` extra).

    Examples
    --------
    >>> from blocksparse.nn import from_pretrained
    >>> model = from_pretrained("path/to/roberta-sentiment", dtype="int8",
    ...                         sparsity=0.9)                           # doctest: +SKIP
    >>> model.id2label, model(input_ids, attention_mask).shape         # doctest: +SKIP
    ({0: 'negative', 1: 'positive'}, (8, 2))
    """
    if architecture is not None and not isinstance(architecture, str):
        raise TypeError(f"architecture must be a string, got {type(architecture).__name__}")
    for _ in range(_RELOADS):
        raw, directory = ckpt.read_config(path)
        if "blocksparse" not in raw:
            break
        try:
            return _load_own(raw, directory, sparsity, dtype, architecture, attention)
        except ckpt.CheckpointChanged:  # a concurrent save_pretrained switched it
            continue
    else:
        raise RuntimeError(f"{os.fspath(path)!r} changed {_RELOADS} times while loading")
    if directory is None:
        raise TypeError("path must be a checkpoint directory or its config.json")
    name = resolve_architecture(raw, architecture)
    return _load_hf(name, raw, directory, sparsity, blocksize, dtype, balanced, smoothing,
                    calibration, strict, float_features, float_weights, attention)


def random_task_model(cls, config, architecture, num_labels, seed, options):
    """A task model `cls` with random weights (``from_config`` of the task models)."""
    raw, _ = ckpt.read_config(config)
    if architecture is None:
        model_type = raw.get("model_type") or \
            ("distilbert" if "n_layers" in raw or "dim" in raw else "bert")
        candidates = [n for n, a in ARCHITECTURES.items()
                      if a.model_type == model_type and a.head is not None and
                      a.head.model is cls]
        if not candidates:
            raise ValueError(f"no {cls.__name__} architecture for model_type {model_type!r}")
        architecture = candidates[0]
    name = resolve_architecture(raw, architecture)
    arch = ARCHITECTURES[name]
    if arch.head is None or arch.head.model is not cls:
        raise ValueError(f"architecture {name!r} is not a {cls.__name__}")
    head_raw = dict(raw, id2label={str(i): f"LABEL_{i}" for i in range(int(num_labels))}) \
        if "id2label" not in raw else raw
    spec = arch.head
    base = arch.encoder.from_config(dict(raw, model_type=arch.model_type), seed=seed,
                                    add_pooling_layer=spec.dense == "pooler", **options)
    cfg = base.config
    head_cfg = head_config(name, head_raw)
    rng = np.random.default_rng(seed + 1)
    dense_shape, out_shape = _head_shapes(spec, cfg, head_cfg)

    def normal(*shape, loc=0.0):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02) + np.float32(loc)

    dense = base.pooler if spec.dense == "pooler" else \
        Linear(normal(*dense_shape), normal(dense_shape[0])) if spec.dense else None
    D = out_shape[1]
    norm_wb = (normal(D, loc=1.0), normal(D)) if spec.norm else None
    head = _make_head(spec, cfg, head_cfg, base, dense, norm_wb,
                      (normal(*out_shape), normal(out_shape[0])))
    return cls(name, base, head, dict(cfg, **head_cfg))
