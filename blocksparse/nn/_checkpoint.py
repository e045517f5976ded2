"""Reading Hugging Face checkpoints and the package's own saved format.

Hugging Face directories hold ``config.json`` and ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``).  BERT, MiniLM
(a BERT config) and DistilBERT name their configuration keys and tensors
differently; both are mapped here onto one canonical set:

==================  ===================================  =========================
canonical           BERT / MiniLM (``bert.`` optional)   DistilBERT
==================  ===================================  =========================
emb.word            embeddings.word_embeddings           (same)
emb.position        embeddings.position_embeddings       (same)
emb.token_type      embeddings.token_type_embeddings     absent
emb.ln              embeddings.LayerNorm                 (same)
layer.i.q / k / v   encoder.layer.i.attention.self.      transformer.layer.i.
                    query / key / value                  attention.q_lin / k_lin / v_lin
layer.i.o           ...attention.output.dense            ...attention.out_lin
layer.i.ln1         ...attention.output.LayerNorm        ...sa_layer_norm
layer.i.ffn1        ...intermediate.dense                ...ffn.lin1
layer.i.ffn2        ...output.dense                      ...ffn.lin2
layer.i.ln2         ...output.LayerNorm                  ...output_layer_norm
pooler              pooler.dense                         absent
==================  ===================================  =========================

RoBERTa, XLM-RoBERTa and ELECTRA use BERT's names under their own prefixes
(``roberta.``, ``electra.``).  The pre-LayerNorm variants name their
LayerNorms by place: RoBERTa-PreLayerNorm (``roberta_prelayernorm.``) has
``ln1`` = ``...attention.LayerNorm``, ``ln2`` = ``...intermediate.LayerNorm``
and ``final_ln`` = ``LayerNorm``; XLM-RoBERTa-XL (``roberta.``) has ``ln1``
= ``...attention.self_attn_layer_norm``, ``ln2`` = ``encoder.layer.i.LayerNorm``,
``final_ln`` = ``encoder.LayerNorm`` and no ``emb.ln``.

The package's own format (``BertModel.save_pretrained``) is a directory
with ``config.json`` (the canonical configuration plus a ``"blocksparse"``
section describing every Linear layer) and a weights file holding the
arrays as they are in memory: dense weights, block-sparse
``data``/``indices``/``indptr`` and INT8 ``data`` + ``scale`` (and an INT8
layer's float part, ``float.data``/``.indices``/``.indptr`` and
``float_features``, written as format version 3).  Format version 2 names
the weights file in ``config.json``
(``"weights": "model-<16 hex digits>.safetensors"``), a new name on every
save, so that a save is atomic: the new weights are written under their new
name first, then ``config.json`` is replaced (one rename) and only then are
the old weights removed.  Version 1 (``model.safetensors``) still loads.

Reading stays inside the checkpoint directory: every file name (the
weights, an index's shards) must be a relative path without ``..``, and
must not resolve (through symlinks) outside the directory -- or, for a
Hugging Face cache snapshot (``.../snapshots/<revision>/``), outside the
model's cache folder, whose ``blobs/`` the snapshot's links point into.
"""
import contextlib
import json
import math
import numbers
import os
import re
import secrets
import shutil
import tempfile

import numpy as np

from .._atomic import fsync_directory, replacing
from .activations import FFN_ACTIVATIONS, check_activation

__all__ = ["normalize_config", "read_config"]

# 3: INT8 layers may have a float part; 2: config.json names the weights file;
# 1: model.safetensors.  A save without float parts is written as version 2.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAX_LAYERS = 1024  # real BERT-family encoders have at most a few dozen
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PREFIXES = ("", "bert.", "distilbert.", "model.")
# where each family's transformers head models keep their encoder
_FAMILY_PREFIXES = {"roberta": ("", "roberta.", "model."),
                    "xlm-roberta": ("", "roberta.", "model."),
                    "roberta-prelayernorm": ("", "roberta_prelayernorm.", "model."),
                    "xlm-roberta-xl": ("", "roberta.", "model."),
                    "electra": ("", "electra.", "model.")}
_OWN_WEIGHTS = re.compile(r"model-[0-9a-f]{16}\.safetensors")
_OWN_TEMP = re.compile(r"\.config\.json\..+\.tmp")  # _atomic.replacing's temporary files
_OWN_TEMP_DIR = re.compile(r"\.blocksparse-[A-Za-z0-9_]+")  # where the weights are written
BASE_FAMILIES = ("bert", "distilbert")  # what BertModel itself loads
#: Every ``model_type`` :func:`blocksparse.nn.from_pretrained` loads.
FAMILIES = BASE_FAMILIES + ("roberta", "xlm-roberta", "electra", "roberta-prelayernorm",
                            "xlm-roberta-xl")
#: RoBERTa's position ids (counted after ``pad_token_id``), no token types as a rule.
ROBERTA_FAMILIES = ("roberta", "xlm-roberta", "roberta-prelayernorm", "xlm-roberta-xl")
#: Pre-LayerNorm encoders: a LayerNorm before attention and before the FFN of each layer,
#: one after the last layer (:class:`~blocksparse.nn.layers.PreNormBertLayer`).
PRE_NORM_FAMILIES = ("roberta-prelayernorm", "xlm-roberta-xl")
#: Families whose embeddings are summed without a LayerNorm (the first layer's makes up).
NO_EMBEDDING_NORM = ("xlm-roberta-xl",)
# BertModel.two_pass_max_tokens of a new model (saved only when set otherwise): opt-in,
# the second pass doubles the product work on those tokens
TWO_PASS_DEFAULT = 0


def _safetensors():
    try:
        from safetensors import safe_open
        from safetensors.numpy import save_file
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading and writing model checkpoints needs the 'safetensors' "
                          "package; install it with: pip install 'blocksparse[models]'") from exc
    return safe_open, save_file


# ---- configuration ------------------------------------------------------------

def _positive_int(cfg, key, default=None, allow_zero=False):
    if key not in cfg:
        if default is None:
            raise ValueError(f"config is missing the key {key!r}")
        return default
    v = cfg[key]
    lowest = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"config key {key!r} must be a {kind} integer, got {v!r}")
    return int(v)


def _hf_or_canonical(cfg, hf, canonical):
    """The Hugging Face key if the config has it, else the canonical one (own format)."""
    return hf if hf in cfg or canonical not in cfg else canonical


def normalize_config(cfg, families=BASE_FAMILIES):
    """Map a BERT-family configuration onto canonical keys.

    Parameters
    ----------
    cfg : dict
        A ``config.json`` as a dict (Hugging Face key names, or the
        canonical ones this function returns).
    families : tuple of str, optional
        The ``model_type`` values accepted: by default BERT (MiniLM is a
        BERT config) and DistilBERT, what :class:`BertModel` runs;
        :func:`blocksparse.nn.from_pretrained` passes :data:`FAMILIES`
        (also ``"roberta"``, ``"xlm-roberta"``, ``"electra"``,
        ``"roberta-prelayernorm"`` and ``"xlm-roberta-xl"``).

    Returns
    -------
    dict
        ``model_type``, ``vocab_size``, ``hidden_size``,
        ``num_hidden_layers``, ``num_attention_heads``,
        ``intermediate_size``, ``max_position_embeddings``,
        ``type_vocab_size`` (0 without token-type embeddings),
        ``layer_norm_eps``, ``hidden_act``; RoBERTa and XLM-RoBERTa (and
        their pre-LayerNorm variants) add ``pad_token_id`` (their position
        ids start after it), ELECTRA
        ``embedding_size`` (the width of its embeddings, projected to
        ``hidden_size`` when they differ).

    Raises
    ------
    ValueError
        Naming the key that is missing, has a bad value, or describes an
        architecture this encoder does not implement.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"config must be a dict, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type is None:
        model_type = "distilbert" if "n_layers" in cfg or "dim" in cfg else "bert"
    if model_type not in families:
        if tuple(families) == BASE_FAMILIES:
            raise ValueError(f"config key 'model_type' must be 'bert' or 'distilbert' (MiniLM "
                             f"checkpoints are 'bert'), got {model_type!r}; "
                             f"blocksparse.nn.from_pretrained also loads "
                             f"{', '.join(map(repr, FAMILIES[2:]))}")
        raise ValueError(f"config key 'model_type' must be one of "
                         f"{', '.join(map(repr, families))}, got {model_type!r}")
    if model_type == "distilbert":
        key = lambda hf, canonical: _hf_or_canonical(cfg, hf, canonical)  # noqa: E731
        out = {
            "model_type": "distilbert",
            "vocab_size": _positive_int(cfg, "vocab_size"),
            "hidden_size": _positive_int(cfg, key("dim", "hidden_size")),
            "num_hidden_layers": _positive_int(cfg, key("n_layers", "num_hidden_layers"),
                                               allow_zero=True),
            "num_attention_heads": _positive_int(cfg, key("n_heads", "num_attention_heads")),
            "intermediate_size": _positive_int(cfg, key("hidden_dim", "intermediate_size")),
            "max_position_embeddings": _positive_int(cfg, "max_position_embeddings", 512),
            "type_vocab_size": 0,
            "layer_norm_eps": 1e-12,
        }
        act_key = key("activation", "hidden_act")
        out["hidden_act"] = cfg.get(act_key, "gelu")
    else:
        roberta = model_type in ROBERTA_FAMILIES
        out = {
            "model_type": model_type,
            "vocab_size": _positive_int(cfg, "vocab_size"),
            "hidden_size": _positive_int(cfg, "hidden_size"),
            "num_hidden_layers": _positive_int(cfg, "num_hidden_layers", allow_zero=True),
            "num_attention_heads": _positive_int(cfg, "num_attention_heads"),
            "intermediate_size": _positive_int(cfg, "intermediate_size"),
            "max_position_embeddings": _positive_int(cfg, "max_position_embeddings", 512),
            # RoBERTa checkpoints say 1; its config class defaults to 2, as BERT's
            "type_vocab_size": _positive_int(cfg, "type_vocab_size", 2, allow_zero=True),
            "layer_norm_eps": cfg.get("layer_norm_eps", 1e-12),
            "hidden_act": cfg.get("hidden_act", "gelu"),
        }
        act_key = "hidden_act"
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"config key 'position_embedding_type' must be 'absolute', "
                             f"got {pet!r}")
        for flag in ("is_decoder", "add_cross_attention"):
            if cfg.get(flag):
                raise ValueError(f"config key {flag!r} must be false: blocksparse.nn runs "
                                 f"encoders (bidirectional self-attention) only")
        if roberta:
            pad = cfg.get("pad_token_id", 1)
            if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
                raise ValueError(f"config key 'pad_token_id' must be a non-negative integer "
                                 f"(RoBERTa's position ids start after it), got {pad!r}")
            out["pad_token_id"] = int(pad)
            if out["pad_token_id"] + 1 >= out["max_position_embeddings"]:
                raise ValueError(f"config key 'max_position_embeddings' = "
                                 f"{out['max_position_embeddings']} leaves no position after "
                                 f"'pad_token_id' = {pad}")
        if model_type == "electra":
            out["embedding_size"] = _positive_int(cfg, "embedding_size", 128)
    check_activation(out["hidden_act"], f"config key {act_key!r}", FFN_ACTIVATIONS)
    eps = out["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"config key 'layer_norm_eps' must be a small non-negative number, "
                         f"got {eps!r}")
    out["layer_norm_eps"] = float(eps)
    if out["num_hidden_layers"] > MAX_LAYERS:
        key = "n_layers" if model_type == "distilbert" else "num_hidden_layers"
        raise ValueError(f"config key {key!r} must be at most {MAX_LAYERS}, got "
                         f"{out['num_hidden_layers']}")
    H, heads = out["hidden_size"], out["num_attention_heads"]
    if H % heads:
        key = "n_heads" if model_type == "distilbert" else "num_attention_heads"
        raise ValueError(f"config key {key!r} = {heads} does not divide the hidden size {H}")
    return out


def check_model_memory(cfg, sparsity, dtype, pooler):
    """Refuse a configuration whose weights cannot fit in the memory available.

    The estimate counts the embeddings, the dense float32 weights of one
    layer (made, pruned and quantized one at a time) and what every layer
    keeps (float32 or int8 values of the unpruned fraction, plus index and
    scale overhead); the real peak is close to it.

    Raises
    ------
    ValueError
        Naming the configuration's sizes, before anything is allocated.
    """
    from .._memory import available_bytes, format_bytes
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    emb = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"] + 2) * H
    weights = 4 * H * H + 2 * H * I   # Q, K, V, O, FFN1, FFN2
    vectors = 10 * H + I              # biases and LayerNorm parameters
    ok = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool) and \
        0.0 <= float(sparsity) <= 1.0
    kept = 1.0 - float(sparsity) if ok else 1.0  # a bad value is refused later, by name
    per_weight = 1.25 if dtype == "int8" else 4.25  # value + its share of indices/scales
    need = 4 * (emb + weights + vectors + (H * H + H if pooler else 0)) + \
        L * (weights * kept * per_weight + 4 * vectors)
    avail = available_bytes()
    if avail is not None and need > avail:
        raise ValueError(f"config describes a model of about {format_bytes(need)} "
                         f"(vocab_size={cfg['vocab_size']}, hidden_size={H}, "
                         f"intermediate_size={I}, num_hidden_layers={L}), more than the "
                         f"{format_bytes(avail)} of memory available")


def _confinement_root(directory):
    real = os.path.realpath(directory)
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots":  # HF cache: links into ../../blobs
        return os.path.dirname(parent)
    return real


def confined(directory, name, what):
    """Path of `name` inside `directory`, refusing any way out of it.

    Parameters
    ----------
    directory : str
        The checkpoint directory.
    name : str
        A relative file name (an index may use subfolders), from a file.
    what : str
        For messages, e.g. ``"shard"``.

    Raises
    ------
    ValueError
        If `name` is not a string, is absolute, has a ``..`` component, or
        resolves (symlinks followed) outside the directory (see the module
        notes for the Hugging Face cache).
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{what} {name!r} must be a file name")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts:
        raise ValueError(f"{what} {name!r} must be a relative path inside the checkpoint "
                         f"directory (no '..', not absolute)")
    directory = directory or "."
    path = os.path.join(directory, *parts)
    real, root = os.path.realpath(path), _confinement_root(directory)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(f"{what} {name!r} in {directory!r} resolves to {real!r}, outside the "
                         f"checkpoint directory")
    return path


def read_config(path):
    """(raw config dict, directory) from a directory, a config.json path or a dict."""
    if isinstance(path, dict):
        return dict(path), None
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, file = path, os.path.join(path, CONFIG_NAME)
    else:
        directory, file = os.path.dirname(path), path
    if os.path.lexists(file):
        file = confined(directory, os.path.basename(file), "config file")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {CONFIG_NAME} at {file!r}: expected a Hugging Face model "
                                f"directory (config.json + model.safetensors)")
    try:
        with open(file, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file!r} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file!r} must hold a JSON object")
    return cfg, directory


# ---- tensors -------------------------------------------------------------------

class _TensorFile:
    """Lazy access to the tensors of model.safetensors (or its shards)."""

    def __init__(self, directory, weights=None):
        safe_open, _ = _safetensors()
        self._handles = {}
        if weights is not None:  # the own format names its file
            single, index = confined(directory, weights, "weights file"), None
            if not os.path.isfile(single):
                raise FileNotFoundError(f"the weights file {weights!r} named by config.json is "
                                        f"missing in {directory!r}")
        else:
            single = confined(directory, WEIGHTS_NAME, "weights file")
            index = confined(directory, INDEX_NAME, "index file")
        if os.path.isfile(single):
            files = {None: single}
        elif index is not None and os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f).get("weight_map", {})
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{INDEX_NAME} in {directory!r} is not a JSON object with a "
                                 f"'weight_map': {exc}") from None
            if not isinstance(weight_map, dict):
                raise ValueError(f"{INDEX_NAME}: 'weight_map' must map tensor names to files")
            files = {name: confined(directory, fn, "shard") for name, fn in weight_map.items()}
        else:
            bins = [n for n in ("pytorch_model.bin", "tf_model.h5")
                    if os.path.isfile(os.path.join(directory, n))]
            extra = (f" (found {bins[0]}: convert it to safetensors first, with "
                     f"'python -m blocksparse convert SRC DST')" if bins else "")
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory!r}{extra}")
        self._files = files
        self._open = safe_open
        if None in files:
            self.keys = set(self._handle(single).keys())
        else:
            self.keys = set(files)

    def _handle(self, file):
        h = self._handles.get(file)
        if h is None:
            h = self._open(file, framework="numpy")
            self._handles[file] = h
        return h

    def get(self, key):
        file = self._files.get(None) or self._files[key]
        try:
            return self._handle(file).get_tensor(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tensor {key!r} cannot be read as a NumPy array ({exc}); "
                             f"bfloat16 checkpoints need converting to float32") from None

    def shape(self, key):
        """The shape of tensor `key` from the file's header, without reading the tensor."""
        file = self._files.get(None) or self._files[key]
        return tuple(self._handle(file).get_slice(key).get_shape())


def _layer_names(model_type, i):
    if model_type == "distilbert":
        p = f"transformer.layer.{i}."
        return {"q": p + "attention.q_lin", "k": p + "attention.k_lin",
                "v": p + "attention.v_lin", "o": p + "attention.out_lin",
                "ln1": p + "sa_layer_norm", "ffn1": p + "ffn.lin1", "ffn2": p + "ffn.lin2",
                "ln2": p + "output_layer_norm"}
    p = f"encoder.layer.{i}."
    names = {"q": p + "attention.self.query", "k": p + "attention.self.key",
             "v": p + "attention.self.value", "o": p + "attention.output.dense",
             "ln1": p + "attention.output.LayerNorm", "ffn1": p + "intermediate.dense",
             "ffn2": p + "output.dense", "ln2": p + "output.LayerNorm"}
    # pre-LayerNorm layers: ln1 before attention, ln2 before the FFN
    if model_type == "roberta-prelayernorm":
        names.update(ln1=p + "attention.LayerNorm", ln2=p + "intermediate.LayerNorm")
    elif model_type == "xlm-roberta-xl":
        names.update(ln1=p + "attention.self_attn_layer_norm", ln2=p + "LayerNorm")
    return names


# where pre-LayerNorm encoders keep the LayerNorm after their last layer
_FINAL_NORM = {"roberta-prelayernorm": "LayerNorm", "xlm-roberta-xl": "encoder.LayerNorm"}


class HFTensors:
    """The float tensors of a Hugging Face checkpoint, read by name, checked, remembered.

    :meth:`take` reads one tensor as finite float32 of the expected shape
    (naming it in every error); :meth:`unused` lists what was never read,
    besides the position/token-type id buffers older transformers saved.
    """

    def __init__(self, directory):
        self._file = _TensorFile(directory)
        self.keys = self._file.keys
        self.used = set()
        self.prefix = ""

    def __contains__(self, key):
        return key in self.keys

    def take(self, key, shape, alt=None, optional=False):
        """float32 array of tensor `key` (or `alt`), of `shape`; None if optional and absent."""
        if key not in self.keys and alt is not None and alt in self.keys:
            key = alt
        if key not in self.keys:
            if optional:
                return None
            raise ValueError(f"checkpoint is missing the tensor {key!r}")
        a = self._file.get(key)
        if a.shape != tuple(shape):
            raise ValueError(f"tensor {key!r} has shape {a.shape}, expected {tuple(shape)} from "
                             f"config.json")
        if a.dtype.kind != "f":
            raise ValueError(f"tensor {key!r} has dtype {a.dtype}, expected floating point")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {key!r} has NaN or Inf values")
        self.used.add(key)
        return a

    def mark_used(self, key, shape=None):
        """Count `key` as read (a tied copy of a tensor read under another name).

        With `shape`, a copy that is there must have it: transformers would
        refuse a tied decoder of the wrong size, so it is no place to hide a
        checkpoint that does not match its config.
        """
        if key in self.keys:
            if shape is not None and self._file.shape(key) != tuple(shape):
                raise ValueError(f"tensor {key!r} has shape {self._file.shape(key)}, expected "
                                 f"{tuple(shape)} from config.json")
            self.used.add(key)

    def unused(self):
        """Sorted names of the tensors never read, buffers left out."""
        return sorted(k for k in self.keys - self.used if not _BUFFER.search(k))


_BUFFER = re.compile(r"(^|\.)(position_ids|token_type_ids)$")
_ENCODER_SCOPES = ("embeddings.", "encoder.", "transformer.", "embeddings_project.")


def encoder_extras(tensors):
    """Unread tensors inside the encoder's own name space (more layers than the config says...)."""
    p = tensors.prefix
    return [k for k in tensors.unused() if k.startswith(tuple(p + s for s in _ENCODER_SCOPES))]


def check_encoder_extras(tensors, cfg):
    """Refuse tensors in the encoder's name space that the configuration has no place for.

    Raises
    ------
    ValueError
        Naming (up to three of) them: the checkpoint does not match its
        config.json (more layers than ``num_hidden_layers``, say).
    """
    extra = encoder_extras(tensors)
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ValueError(f"checkpoint has tensors its config.json has no place for: "
                         f"{', '.join(map(repr, extra[:3]))}{more} (config: "
                         f"num_hidden_layers = {cfg['num_hidden_layers']}, model_type "
                         f"{cfg['model_type']!r})")


def load_hf_weights(directory, cfg, tensors=None):
    """Canonical name -> float32 array, with every shape checked.

    Returns a dict with keys ``emb.word``, ``emb.position``,
    ``emb.token_type`` (unless ``type_vocab_size`` is 0),
    ``emb.ln.weight``/``.bias`` (not XLM-RoBERTa-XL), ``emb.project.weight``/``.bias``
    (ELECTRA with ``embedding_size`` != ``hidden_size``),
    ``layer.{i}.{q,k,v,o,ffn1,ffn2}.{weight,bias}``,
    ``layer.{i}.{ln1,ln2}.{weight,bias}``, ``final_ln.weight``/``.bias``
    (pre-LayerNorm families) and, if present,
    ``pooler.weight``/``.bias``.  `tensors` (an :class:`HFTensors` of the
    directory) is read through when given, and its ``prefix`` set to the
    encoder's (``"bert."``, ``"roberta."``... or ``""``).
    """
    tf = HFTensors(directory) if tensors is None else tensors
    prefixes = _FAMILY_PREFIXES.get(cfg["model_type"], _PREFIXES)
    prefix = next((p for p in prefixes if p + "embeddings.word_embeddings.weight" in tf), None)
    if prefix is None:
        named = ", ".join(repr(p) for p in prefixes if p)
        raise ValueError(f"{WEIGHTS_NAME} in {directory!r} has no tensor "
                         f"'embeddings.word_embeddings.weight' (with or without a prefix "
                         f"{named}): not a BERT-family checkpoint of model_type "
                         f"{cfg['model_type']!r}")
    tf.prefix = prefix
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    E = cfg.get("embedding_size", H)
    out = {}

    def take(canon, key, shape, alt=None):
        out[canon] = tf.take(prefix + key, shape, alt=None if alt is None else prefix + alt)

    def take_ln(canon, key, width=H):
        take(canon + ".weight", key + ".weight", (width,), alt=key + ".gamma")
        take(canon + ".bias", key + ".bias", (width,), alt=key + ".beta")

    def take_linear(canon, key, shape):
        take(canon + ".weight", key + ".weight", shape)
        take(canon + ".bias", key + ".bias", (shape[0],))

    take("emb.word", "embeddings.word_embeddings.weight", (cfg["vocab_size"], E))
    take("emb.position", "embeddings.position_embeddings.weight",
         (cfg["max_position_embeddings"], E))
    if cfg["type_vocab_size"]:
        take("emb.token_type", "embeddings.token_type_embeddings.weight",
             (cfg["type_vocab_size"], E))
    if cfg["model_type"] not in NO_EMBEDDING_NORM:
        take_ln("emb.ln", "embeddings.LayerNorm", E)
    if E != H:
        take_linear("emb.project", "embeddings_project", (H, E))
    for i in range(cfg["num_hidden_layers"]):
        names = _layer_names(cfg["model_type"], i)
        for part in ("q", "k", "v", "o"):
            take_linear(f"layer.{i}.{part}", names[part], (H, H))
        take_linear(f"layer.{i}.ffn1", names["ffn1"], (I, H))
        take_linear(f"layer.{i}.ffn2", names["ffn2"], (H, I))
        take_ln(f"layer.{i}.ln1", names["ln1"])
        take_ln(f"layer.{i}.ln2", names["ln2"])
    if cfg["model_type"] in _FINAL_NORM:
        take_ln("final_ln", _FINAL_NORM[cfg["model_type"]])
    if cfg["model_type"] != "distilbert" and prefix + "pooler.dense.weight" in tf:
        take_linear("pooler", "pooler.dense", (H, H))
    return out


def special_token_ids(directory):
    """(prefix, suffix): the ids the directory's tokenizer puts around one text.

    Read from ``tokenizer.json`` (a ``TemplateProcessing`` or
    ``BertProcessing`` post-processor, as Hugging Face tokenizers write
    them); ``((), ())`` when the directory has no such file or it says
    nothing usable.  Used for the calibration pass of INT8 models: in BERT
    models the special tokens carry the largest activations.
    """
    try:
        path = confined(directory, "tokenizer.json", "tokenizer")
        with open(path, encoding="utf-8") as f:
            post = json.load(f).get("post_processor") or {}
    except (OSError, ValueError, AttributeError):
        return (), ()
    try:
        if post.get("type") == "BertProcessing":
            return (int(post["cls"][1]),), (int(post["sep"][1]),)
        if post.get("type") == "TemplateProcessing":
            ids = {k: [int(i) for i in v["ids"]] for k, v in post["special_tokens"].items()}
            out, before = ([], []), True
            for item in post["single"]:
                if "Sequence" in item:
                    before = False
                elif "SpecialToken" in item:
                    out[0 if before else 1].extend(ids[item["SpecialToken"]["id"]])
            return tuple(out[0]), tuple(out[1])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        pass
    return (), ()


# ---- the package's own format ----------------------------------------------------

def _block_sparse_arrays(prefix, m):
    return {prefix + "." + key: np.ascontiguousarray(getattr(m, key))
            for key in ("data", "indices", "indptr")}


def linear_tensors(name, lin):
    """(tensors, description) of one Linear layer for the own format."""
    t, w = {}, lin.weight
    desc = {"kind": lin.kind, "shape": [lin.out_features, lin.in_features]}
    if lin.kind == "dense":
        t[name + ".weight"] = np.ascontiguousarray(w)
    else:
        m = w.weight if lin.kind == "int8" else w
        desc["blocksize"] = list(m.blocksize)
        t.update(_block_sparse_arrays(name, m))
        if lin.kind == "int8":
            t[name + ".scale"] = np.ascontiguousarray(w.scale)
    if lin.bias is not None:
        t[name + ".bias"] = np.ascontiguousarray(lin.bias)
    if lin.input_scale is not None:
        t[name + ".input_scale"] = np.ascontiguousarray(lin.input_scale)
    f = getattr(lin, "float_weight", None)
    if f is not None:
        desc["float_blocksize"] = list(f.blocksize)
        t.update(_block_sparse_arrays(name + ".float", f))
        if lin.float_features is not None and lin.float_features.size:
            t[name + ".float_features"] = np.ascontiguousarray(lin.float_features)
    return t, desc


def _block_sparse_tensors(get, prefix, shape, blocksize, kind):
    """The BlockSparseMatrix stored as `prefix`.data/.indices/.indptr."""
    from .._matrix import BlockSparseMatrix
    data = get(prefix + ".data", kind=kind)
    indices, indptr = get(prefix + ".indices", kind="index"), get(prefix + ".indptr",
                                                                   kind="index")
    try:
        return BlockSparseMatrix((data, indices, indptr), shape=shape, blocksize=blocksize)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"tensors {prefix}.data/.indices/.indptr do not form a valid "
                         f"block-sparse matrix: {exc}") from None


def linear_from_tensors(name, desc, get):
    """Rebuild a Linear layer saved by linear_tensors (validated on the way in)."""
    from .._quant import QuantizedMatrix
    from .layers import Linear
    try:
        kind, shape = desc["kind"], tuple(desc["shape"])
    except (KeyError, TypeError):
        raise ValueError(f"config 'blocksparse.linears' entry {name!r} needs 'kind' and "
                         f"'shape'") from None
    if kind == "dense":
        w = get(name + ".weight", shape)
    elif kind in ("sparse", "int8"):
        blocksize = tuple(desc.get("blocksize", ()))
        if len(blocksize) != 2:
            raise ValueError(f"config 'blocksparse.linears' entry {name!r} needs a 'blocksize'")
        w = _block_sparse_tensors(get, name, shape, blocksize,
                                  "int8" if kind == "int8" else "float")
        if kind == "int8":
            w = QuantizedMatrix(w, get(name + ".scale", (shape[0],)))
    else:
        raise ValueError(f"config 'blocksparse.linears' entry {name!r} has unknown kind "
                         f"{kind!r}")
    bias = get(name + ".bias", (shape[0],), optional=True)
    input_scale = get(name + ".input_scale", (shape[1],), optional=True)
    float_weight = float_features = None
    if "float_blocksize" in desc:
        fb = _pair(desc["float_blocksize"], f"linears.{name}.float_blocksize")
        float_weight = _block_sparse_tensors(get, name + ".float", shape, fb, "float")
        float_features = get(name + ".float_features", optional=True, kind="index")
    try:
        return Linear(w, bias, input_scale, float_weight, float_features)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"Linear layer {name!r}: {exc}") from None


class CheckpointChanged(Exception):
    """config.json named weights that a concurrent save has replaced: read it again."""


def own_getter(directory, meta):
    """get(key, shape=None, optional=False, kind="float") over the own format's tensors.

    Every tensor is checked as strictly as the Hugging Face path checks its
    own: `kind` "float" must be finite float32, "int8" int8, "index" an
    integer array.  The weights file is opened here (it stays readable if a
    concurrent save removes it later); if it is gone because config.json
    changed meanwhile, :class:`CheckpointChanged` asks the caller to retry.
    """
    name = meta.get("weights", WEIGHTS_NAME)
    try:
        tf = _TensorFile(directory, weights=name)
    except FileNotFoundError:
        now, _ = read_config(directory)
        section = now.get("blocksparse")
        if isinstance(section, dict) and section.get("weights", WEIGHTS_NAME) != name:
            raise CheckpointChanged(name) from None
        raise

    def get(key, shape=None, optional=False, kind="float"):
        if key not in tf.keys:
            if optional:
                return None
            raise ValueError(f"checkpoint is missing the tensor {key!r}")
        a = tf.get(key)
        if shape is not None and a.shape != tuple(shape):
            raise ValueError(f"tensor {key!r} has shape {a.shape}, expected {tuple(shape)}")
        want = {"float": "float32", "int8": "int8"}.get(kind)
        if (a.dtype.name != want) if want else (a.dtype.kind not in "iu"):
            raise ValueError(f"tensor {key!r} has dtype {a.dtype}, expected "
                             f"{want or 'an integer dtype'}")
        if kind == "float" and not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {key!r} has NaN or Inf values")
        return a

    return get


def _pair(value, key):
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"config 'blocksparse' key {key!r} must be two positive integers, got "
                         f"{value!r}")
    return tuple(value)


def check_own_meta(meta, cfg, head_linears=None):
    """Validate the ``"blocksparse"`` section of an own-format config.json.

    Parameters
    ----------
    meta : dict
        The section.
    cfg : dict
        The canonical configuration (:func:`normalize_config`).
    head_linears : dict of str to tuple, optional
        The Linear layers of the task head named by the section's
        ``"architecture"`` (``"head.dense"``, ``"head.out"``...: shape),
        which must be present and dense.

    Returns
    -------
    dict
        ``version``, ``dtype``, ``sparsity`` (float or None), ``blocksize``
        (tuple), ``balanced`` (bool), ``smoothing`` (float or None),
        ``attention`` (the precision of the attention's products, or None:
        the default for the dtype; absent before it existed),
        ``linears`` (name -> description), ``weights`` (file name) and
        ``architecture`` (str, or None for an encoder without a head).

    Raises
    ------
    ValueError
        Naming the key that is missing or ill-typed, or a Linear layer whose
        kind or shape does not match the configuration.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"config key 'blocksparse' must be an object, got {meta!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(f"config key 'blocksparse' describes format version {version!r}; "
                         f"this version reads {', '.join(map(str, READABLE_VERSIONS))}")

    def number(key, low, high, default=None):
        v = meta.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or \
                not low <= v <= high:
            raise ValueError(f"config 'blocksparse' key {key!r} must be null or a number in "
                             f"[{low}, {high}], got {v!r}")
        return float(v)

    out = {"version": version, "sparsity": number("sparsity", 0, 1),
           "smoothing": number("smoothing", 0, 1),
           "float_weights": number("float_weights", 0, 1, 0.0),
           "blocksize": _pair(meta.get("blocksize", [4, 1]), "blocksize")}
    for key, default in (("float_features", 0), ("two_pass_max_tokens", TWO_PASS_DEFAULT)):
        v = meta.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"config 'blocksparse' key {key!r} must be a non-negative "
                             f"integer, got {v!r}")
        out[key] = v
    out["dtype"] = meta.get("dtype")
    if out["dtype"] not in ("float32", "int8"):
        raise ValueError(f"config 'blocksparse' key 'dtype' must be 'float32' or 'int8', got "
                         f"{out['dtype']!r}")
    out["attention"] = meta.get("attention")
    if out["attention"] not in (None, "float32", "int8"):
        raise ValueError(f"config 'blocksparse' key 'attention' must be null, 'float32' or "
                         f"'int8', got {out['attention']!r}")
    out["balanced"] = meta.get("balanced", False)
    if not isinstance(out["balanced"], bool):
        raise ValueError(f"config 'blocksparse' key 'balanced' must be true or false, got "
                         f"{out['balanced']!r}")
    out["architecture"] = meta.get("architecture")
    if out["architecture"] is not None and not isinstance(out["architecture"], str):
        raise ValueError(f"config 'blocksparse' key 'architecture' must be a string, got "
                         f"{out['architecture']!r}")
    if out["architecture"] is not None and head_linears is None:
        raise ValueError(f"config 'blocksparse' key 'architecture' names "
                         f"{out['architecture']!r}, whose head was not described")
    weights = meta.get("weights", WEIGHTS_NAME) if version >= 2 else WEIGHTS_NAME
    if version >= 2 and not (isinstance(weights, str) and _OWN_WEIGHTS.fullmatch(weights)):
        raise ValueError(f"config 'blocksparse' key 'weights' must be a file name "
                         f"'model-<16 hex digits>.safetensors', got {weights!r}")
    out["weights"] = weights
    linears = meta.get("linears")
    if not isinstance(linears, dict):
        raise ValueError(f"config 'blocksparse' key 'linears' must be an object, got "
                         f"{type(linears).__name__}")
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    E = cfg.get("embedding_size", H)
    expected = {"embeddings.project": (H, E)} if E != H else {}
    for i in range(cfg["num_hidden_layers"]):
        expected.update({f"layers.{i}.qkv": (3 * H, H), f"layers.{i}.o": (H, H),
                         f"layers.{i}.ffn1": (I, H), f"layers.{i}.ffn2": (H, I)})
    outside = {"pooler"} | set(head_linears or ())  # dense float32, not the encoder's dtype
    if "pooler" in linears:
        expected["pooler"] = (H, H)
    expected.update(head_linears or {})
    unknown = sorted(set(linears) - set(expected))
    if unknown:
        raise ValueError(f"config 'blocksparse.linears' has entries this configuration has no "
                         f"layer for: {', '.join(map(repr, unknown[:3]))}")
    kinds = set()
    for name, shape in expected.items():
        desc = linears.get(name)
        if not isinstance(desc, dict):
            raise ValueError(f"config 'blocksparse.linears' has no entry {name!r}")
        kind = desc.get("kind")
        if kind not in ("dense", "sparse", "int8") or \
                (kind != "dense" and name in outside and name != "pooler"):
            raise ValueError(f"config 'blocksparse.linears' entry {name!r} has unknown kind "
                             f"{kind!r}" + (" (head layers are dense)" if name in outside
                                            else ""))
        if _pair(desc.get("shape"), f"linears.{name}.shape") != shape:
            raise ValueError(f"config 'blocksparse.linears' entry {name!r} has shape "
                             f"{desc.get('shape')!r}, expected {list(shape)} from the config")
        if kind != "dense":
            _pair(desc.get("blocksize"), f"linears.{name}.blocksize")
        if name not in outside:
            kinds.add(kind)
    if ("int8" in kinds) != (out["dtype"] == "int8"):
        raise ValueError(f"config 'blocksparse' key 'dtype' is {out['dtype']!r} but the Linear "
                         f"layers are {', '.join(sorted(kinds)) or 'absent'}")
    out["linears"] = linears
    return out


@contextlib.contextmanager
def _locked(directory):
    """Serialize writers of one directory (advisory flock on the directory itself)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_checkpoint(directory, tensors, config):
    """Write an own-format checkpoint so that the directory always loads, old or new.

    The order makes every instant safe, for a killed process and for
    readers at the same time: (1) the tensors go to a new, uniquely named
    weights file (through a temporary file, fsynced, renamed); (2)
    ``config.json`` naming that file replaces the old one in one rename --
    the switch; (3) the files the old checkpoint used (older weights,
    ``model.safetensors``, an index and its shards) and temporary files of
    interrupted saves are removed.  Writers of one directory take turns
    (flock).  Symlinks are replaced, never written through.

    Parameters
    ----------
    directory : str
        Created if missing.
    tensors : dict of str to ndarray
    config : dict
        With a ``"blocksparse"`` section; its ``"weights"`` key is set here.
    """
    _, save = _safetensors()
    os.makedirs(directory, exist_ok=True)
    with _locked(directory):
        name = f"model-{secrets.token_hex(8)}.safetensors"
        # safetensors writes through temporary files of its own: in a private folder
        # inside the directory, so that everything a killed save leaves is recognisable
        work = tempfile.mkdtemp(dir=directory, prefix=".blocksparse-")
        try:
            part = os.path.join(work, name)
            save(tensors, part, metadata={"format": "blocksparse",
                                          "format_version": str(FORMAT_VERSION)})
            fd = os.open(part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, os.path.join(directory, name))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        config = dict(config, blocksparse=dict(config["blocksparse"], weights=name))
        with replacing(os.path.join(directory, CONFIG_NAME)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
        _remove_stale(directory, keep=name)


def _remove_stale(directory, keep):
    """Remove what the checkpoint just replaced (never anything else)."""
    stale = set()
    try:
        with open(os.path.join(directory, INDEX_NAME), encoding="utf-8") as f:
            shards = json.load(f).get("weight_map", {}).values()
        stale.update(fn for fn in shards if isinstance(fn, str) and fn.endswith(".safetensors")
                     and os.path.basename(fn) == fn)
        stale.add(INDEX_NAME)
    except (OSError, ValueError, AttributeError):
        pass
    for fn in os.listdir(directory):
        if fn == WEIGHTS_NAME or (_OWN_WEIGHTS.fullmatch(fn) and fn != keep) or \
                _OWN_TEMP.fullmatch(fn):
            stale.add(fn)
        elif _OWN_TEMP_DIR.fullmatch(fn) and not os.path.islink(os.path.join(directory, fn)):
            shutil.rmtree(os.path.join(directory, fn), ignore_errors=True)
    stale.discard(keep)
    for fn in sorted(stale):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(os.path.join(directory, fn))  # a symlink itself, not its target
    fsync_directory(directory)


def save_model(model, directory):
    """Write a model to `directory` (``save_pretrained``), atomically.

    `model` is a :class:`~blocksparse.nn.BertModel` (or a family subclass)
    or a task model with ``base``, ``head`` and ``architecture``; a head's
    tensors go under ``head.`` and ``config.json`` names the architecture.
    """
    base = getattr(model, "base", model)
    tensors, linears = {}, {}
    emb = base.embeddings
    tensors["embeddings.word"] = emb.word
    tensors["embeddings.position"] = emb.position
    if emb.token_type is not None:
        tensors["embeddings.token_type"] = emb.token_type
    if emb.ln is not None:
        tensors["embeddings.ln.weight"] = emb.ln.weight
        tensors["embeddings.ln.bias"] = emb.ln.bias
    final = base.encoder.final_ln
    if final is not None:
        tensors["encoder.ln.weight"] = final.weight
        tensors["encoder.ln.bias"] = final.bias
    named = [("embeddings.project", getattr(emb, "project", None))]
    for i, layer in enumerate(base.encoder):
        named += [(f"layers.{i}.{name}", lin)
                  for name, lin in zip(("qkv", "o", "ffn1", "ffn2"), layer.linears)]
        for name, ln in (("ln1", layer.ln1), ("ln2", layer.ln2)):
            tensors[f"layers.{i}.{name}.weight"] = ln.weight
            tensors[f"layers.{i}.{name}.bias"] = ln.bias
    named.append(("pooler", base.pooler))
    head = getattr(model, "head", None)
    if head is not None:
        head_linears, head_tensors = head.own_tensors()
        named += [(f"head.{name}", lin) for name, lin in head_linears.items()]
        tensors.update({f"head.{name}": t for name, t in head_tensors.items()})
    for name, lin in named:
        if lin is not None:
            t, desc = linear_tensors(name, lin)
            tensors.update(t)
            linears[name] = desc
    cfg = dict(model.config)
    has_float = any("float_blocksize" in d for d in linears.values())
    cfg["blocksparse"] = {"format_version": FORMAT_VERSION if has_float else 2,
                          "dtype": base.dtype,
                          "sparsity": base.sparsity, "blocksize": list(base.blocksize),
                          "balanced": base.balanced, "smoothing": base.smoothing,
                          "attention": base.attention, "linears": linears}
    if has_float:
        cfg["blocksparse"].update(float_features=base.float_features,
                                  float_weights=base.float_weights)
    if base.two_pass_max_tokens != TWO_PASS_DEFAULT:
        cfg["blocksparse"]["two_pass_max_tokens"] = base.two_pass_max_tokens
    if head is not None:
        cfg["blocksparse"]["architecture"] = model.architecture
    write_checkpoint(os.fspath(directory),
                     {k: np.ascontiguousarray(v) for k, v in tensors.items()}, cfg)


def open_own(normalize, raw, directory, sparsity, dtype):
    """(cfg, meta, get) of an own-format checkpoint, its metadata validated.

    `normalize` maps the stored configuration to the canonical one (and
    refuses families the caller does not run); a head named by the
    section's ``"architecture"`` is checked against the registry of
    :mod:`blocksparse.nn.auto`.  Raises :class:`CheckpointChanged` when a
    concurrent save replaced the weights the section names.
    """
    from .layers import _check_dtype_name
    cfg = normalize({k: v for k, v in raw.items() if k != "blocksparse"})
    section = raw["blocksparse"]
    head_linears = None
    if isinstance(section, dict) and section.get("architecture") is not None:
        from .auto import own_head_linears  # auto builds on this module
        head_linears = own_head_linears(section["architecture"], raw, cfg)
    meta = check_own_meta(section, cfg, head_linears)
    stored = meta["dtype"]
    if dtype is not None and _check_dtype_name(dtype) != stored:
        raise ValueError(f"this model was saved with dtype {stored!r}; load it with "
                         f"dtype=None (or {stored!r}), or sparsify the original checkpoint")
    if sparsity is not None and sparsity != meta["sparsity"]:
        raise ValueError(f"this model was saved already pruned (sparsity "
                         f"{meta['sparsity']!r}); load it with sparsity=None, or prune "
                         f"the original checkpoint")
    return cfg, meta, own_getter(directory, meta)


def own_linear(meta, get, name):
    """The Linear layer `name` of an own-format checkpoint."""
    linears = meta["linears"]
    if name not in linears:
        raise ValueError(f"config 'blocksparse.linears' has no entry {name!r}")
    return linear_from_tensors(name, linears[name], get)


def build_own_base(cls, cfg, meta, get, precision=None):
    """The encoder model `cls` (BertModel or a family subclass) of an opened checkpoint.

    `precision` is that of the attention's products (None: the saved one, else
    the dtype's default).
    """
    from .bert import default_attention
    from .layers import BertEncoder, BertLayer, LayerNorm, MultiHeadSelfAttention, \
        PreNormBertLayer
    linears = meta["linears"]
    layer_cls = PreNormBertLayer if cfg["model_type"] in PRE_NORM_FAMILIES else BertLayer
    H, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
    E = cfg.get("embedding_size", H)

    def ln(name, width=H):
        return LayerNorm(get(name + ".weight", (width,)), get(name + ".bias", (width,)), eps)

    def lin(name):
        return own_linear(meta, get, name)

    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        attention = MultiHeadSelfAttention(lin(p + "qkv"), lin(p + "o"),
                                           cfg["num_attention_heads"])
        layers.append(layer_cls(attention, ln(p + "ln1"), lin(p + "ffn1"), lin(p + "ffn2"),
                                ln(p + "ln2"), cfg["hidden_act"]))
    weights = {"emb.word": get("embeddings.word", (cfg["vocab_size"], E)),
               "emb.position": get("embeddings.position", (cfg["max_position_embeddings"], E))}
    if cfg["type_vocab_size"]:
        weights["emb.token_type"] = get("embeddings.token_type", (cfg["type_vocab_size"], E),
                                        optional=True)
    if cfg["model_type"] not in NO_EMBEDDING_NORM:
        emb_ln = ln("embeddings.ln", E)
        weights["emb.ln.weight"], weights["emb.ln.bias"] = emb_ln.weight, emb_ln.bias
    final = ln("encoder.ln") if cfg["model_type"] in PRE_NORM_FAMILIES else None
    project = lin("embeddings.project") if "embeddings.project" in linears else None
    emb = cls._make_embeddings(cfg, weights, project)
    pooler = lin("pooler") if "pooler" in linears else None
    model = cls(cfg, emb, BertEncoder(layers, final), pooler)
    model.sparsity = meta["sparsity"]
    model.blocksize = meta["blocksize"]
    model.balanced = meta["balanced"]
    model.smoothing = meta["smoothing"]
    model.float_features = meta["float_features"]
    model.float_weights = meta["float_weights"]
    model.two_pass_max_tokens = meta["two_pass_max_tokens"]
    model.dtype = meta["dtype"]
    model.attention = default_attention(meta["attention"] if precision is None else precision)
    return model


def load_own(cls, raw, directory, sparsity, dtype, precision=None):
    """The encoder `cls` of an own-format checkpoint (``from_pretrained``).

    `raw` is the parsed config.json of `directory`, which has a "blocksparse"
    section; a task head saved with the encoder is checked, not built.
    `precision` is that of the attention's products (see
    :func:`build_own_base`).  Raises :class:`CheckpointChanged` when a
    concurrent save replaced the weights it names.
    """
    cfg, meta, get = open_own(cls._normalize_config, raw, directory, sparsity, dtype)
    return build_own_base(cls, cfg, meta, get, precision)
