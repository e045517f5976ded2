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

The package's own format (``BertModel.save_pretrained``) is a directory
with ``config.json`` (the canonical configuration plus a ``"blocksparse"``
section describing every Linear layer) and ``model.safetensors`` holding
the arrays as they are in memory: dense weights, block-sparse
``data``/``indices``/``indptr`` and INT8 ``data`` + ``scale``.
"""
import json
import os

import numpy as np

__all__ = ["normalize_config", "read_config"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PREFIXES = ("", "bert.", "distilbert.", "model.")
_ACTS = {"gelu": "gelu", "relu": "relu"}


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


def normalize_config(cfg):
    """Map a BERT, MiniLM or DistilBERT configuration onto canonical keys.

    Parameters
    ----------
    cfg : dict
        A ``config.json`` as a dict (Hugging Face key names).

    Returns
    -------
    dict
        ``model_type`` ("bert" or "distilbert"), ``vocab_size``,
        ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
        ``intermediate_size``, ``max_position_embeddings``,
        ``type_vocab_size`` (0 without token-type embeddings),
        ``layer_norm_eps``, ``hidden_act``.

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
    if model_type == "distilbert":
        out = {
            "model_type": "distilbert",
            "vocab_size": _positive_int(cfg, "vocab_size"),
            "hidden_size": _positive_int(cfg, "dim"),
            "num_hidden_layers": _positive_int(cfg, "n_layers", allow_zero=True),
            "num_attention_heads": _positive_int(cfg, "n_heads"),
            "intermediate_size": _positive_int(cfg, "hidden_dim"),
            "max_position_embeddings": _positive_int(cfg, "max_position_embeddings", 512),
            "type_vocab_size": 0,
            "layer_norm_eps": 1e-12,
            "hidden_act": cfg.get("activation", "gelu"),
        }
        act_key = "activation"
    elif model_type == "bert":
        out = {
            "model_type": "bert",
            "vocab_size": _positive_int(cfg, "vocab_size"),
            "hidden_size": _positive_int(cfg, "hidden_size"),
            "num_hidden_layers": _positive_int(cfg, "num_hidden_layers", allow_zero=True),
            "num_attention_heads": _positive_int(cfg, "num_attention_heads"),
            "intermediate_size": _positive_int(cfg, "intermediate_size"),
            "max_position_embeddings": _positive_int(cfg, "max_position_embeddings", 512),
            "type_vocab_size": _positive_int(cfg, "type_vocab_size", 2, allow_zero=True),
            "layer_norm_eps": cfg.get("layer_norm_eps", 1e-12),
            "hidden_act": cfg.get("hidden_act", "gelu"),
        }
        act_key = "hidden_act"
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"config key 'position_embedding_type' must be 'absolute', "
                             f"got {pet!r}")
    else:
        raise ValueError(f"config key 'model_type' must be 'bert' or 'distilbert' (MiniLM "
                         f"checkpoints are 'bert'), got {model_type!r}")
    if out["hidden_act"] not in _ACTS:
        raise ValueError(f"config key {act_key!r} must be one of {sorted(_ACTS)}, got "
                         f"{out['hidden_act']!r}")
    eps = out["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"config key 'layer_norm_eps' must be a small non-negative number, "
                         f"got {eps!r}")
    out["layer_norm_eps"] = float(eps)
    H, heads = out["hidden_size"], out["num_attention_heads"]
    if H % heads:
        key = "n_heads" if model_type == "distilbert" else "num_attention_heads"
        raise ValueError(f"config key {key!r} = {heads} does not divide the hidden size {H}")
    return out


def read_config(path):
    """(raw config dict, directory) from a directory, a config.json path or a dict."""
    if isinstance(path, dict):
        return dict(path), None
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, file = path, os.path.join(path, CONFIG_NAME)
    else:
        directory, file = os.path.dirname(path), path
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

    def __init__(self, directory):
        safe_open, _ = _safetensors()
        single = os.path.join(directory, WEIGHTS_NAME)
        index = os.path.join(directory, INDEX_NAME)
        self._handles = {}
        if os.path.isfile(single):
            files = {None: single}
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            files = {name: os.path.join(directory, fn) for name, fn in weight_map.items()}
        else:
            bins = [n for n in ("pytorch_model.bin", "tf_model.h5")
                    if os.path.isfile(os.path.join(directory, n))]
            extra = (f" (found {bins[0]}: convert it to safetensors first)" if bins else "")
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


def _layer_names(model_type, i):
    if model_type == "distilbert":
        p = f"transformer.layer.{i}."
        return {"q": p + "attention.q_lin", "k": p + "attention.k_lin",
                "v": p + "attention.v_lin", "o": p + "attention.out_lin",
                "ln1": p + "sa_layer_norm", "ffn1": p + "ffn.lin1", "ffn2": p + "ffn.lin2",
                "ln2": p + "output_layer_norm"}
    p = f"encoder.layer.{i}."
    return {"q": p + "attention.self.query", "k": p + "attention.self.key",
            "v": p + "attention.self.value", "o": p + "attention.output.dense",
            "ln1": p + "attention.output.LayerNorm", "ffn1": p + "intermediate.dense",
            "ffn2": p + "output.dense", "ln2": p + "output.LayerNorm"}


def load_hf_weights(directory, cfg):
    """Canonical name -> float32 array, with every shape checked.

    Returns a dict with keys ``emb.word``, ``emb.position``,
    ``emb.token_type`` (BERT), ``emb.ln.weight``/``.bias``,
    ``layer.{i}.{q,k,v,o,ffn1,ffn2}.{weight,bias}``,
    ``layer.{i}.{ln1,ln2}.{weight,bias}`` and, if present,
    ``pooler.weight``/``.bias``.
    """
    tf = _TensorFile(directory)
    prefix = next((p for p in _PREFIXES if p + "embeddings.word_embeddings.weight" in tf.keys),
                  None)
    if prefix is None:
        raise ValueError(f"{WEIGHTS_NAME} in {directory!r} has no tensor "
                         f"'embeddings.word_embeddings.weight' (with or without a 'bert.' or "
                         f"'distilbert.' prefix): not a BERT-family checkpoint")
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    out = {}

    def take(canon, key, shape, alt=None, optional=False):
        full = prefix + key
        if full not in tf.keys and alt is not None and prefix + alt in tf.keys:
            full = prefix + alt
        if full not in tf.keys:
            if optional:
                return
            raise ValueError(f"checkpoint is missing the tensor {full!r}")
        a = tf.get(full)
        if a.shape != shape:
            raise ValueError(f"tensor {full!r} has shape {a.shape}, expected {shape} from "
                             f"config.json")
        if a.dtype.kind != "f":
            raise ValueError(f"tensor {full!r} has dtype {a.dtype}, expected floating point")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"tensor {full!r} has NaN or Inf values")
        out[canon] = a

    def take_ln(canon, key):
        take(canon + ".weight", key + ".weight", (H,), alt=key + ".gamma")
        take(canon + ".bias", key + ".bias", (H,), alt=key + ".beta")

    def take_linear(canon, key, shape):
        take(canon + ".weight", key + ".weight", shape)
        take(canon + ".bias", key + ".bias", (shape[0],))

    take("emb.word", "embeddings.word_embeddings.weight", (cfg["vocab_size"], H))
    take("emb.position", "embeddings.position_embeddings.weight",
         (cfg["max_position_embeddings"], H))
    if cfg["type_vocab_size"]:
        take("emb.token_type", "embeddings.token_type_embeddings.weight",
             (cfg["type_vocab_size"], H))
    take_ln("emb.ln", "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        names = _layer_names(cfg["model_type"], i)
        for part in ("q", "k", "v", "o"):
            take_linear(f"layer.{i}.{part}", names[part], (H, H))
        take_linear(f"layer.{i}.ffn1", names["ffn1"], (I, H))
        take_linear(f"layer.{i}.ffn2", names["ffn2"], (H, I))
        take_ln(f"layer.{i}.ln1", names["ln1"])
        take_ln(f"layer.{i}.ln2", names["ln2"])
    if cfg["model_type"] == "bert" and prefix + "pooler.dense.weight" in tf.keys:
        take_linear("pooler", "pooler.dense", (H, H))
    return out


# ---- the package's own format ----------------------------------------------------

def linear_tensors(name, lin):
    """(tensors, description) of one Linear layer for the own format."""
    t, w = {}, lin.weight
    desc = {"kind": lin.kind, "shape": [lin.out_features, lin.in_features]}
    if lin.kind == "dense":
        t[name + ".weight"] = np.ascontiguousarray(w)
    else:
        m = w.weight if lin.kind == "int8" else w
        desc["blocksize"] = list(m.blocksize)
        t[name + ".data"] = np.ascontiguousarray(m.data)
        t[name + ".indices"] = np.ascontiguousarray(m.indices)
        t[name + ".indptr"] = np.ascontiguousarray(m.indptr)
        if lin.kind == "int8":
            t[name + ".scale"] = np.ascontiguousarray(w.scale)
    if lin.bias is not None:
        t[name + ".bias"] = np.ascontiguousarray(lin.bias)
    if lin.input_scale is not None:
        t[name + ".input_scale"] = np.ascontiguousarray(lin.input_scale)
    return t, desc


def linear_from_tensors(name, desc, get):
    """Rebuild a Linear layer saved by linear_tensors (validated on the way in)."""
    from .._matrix import BlockSparseMatrix
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
        data, indices, indptr = get(name + ".data"), get(name + ".indices"), \
            get(name + ".indptr")
        want = np.int8 if kind == "int8" else np.float32
        if data.dtype != want:
            raise ValueError(f"tensor {name + '.data'!r} has dtype {data.dtype}, expected "
                             f"{np.dtype(want)}")
        try:
            w = BlockSparseMatrix((data, indices, indptr), shape=shape, blocksize=blocksize)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"tensors {name}.data/.indices/.indptr do not form a valid "
                             f"block-sparse matrix: {exc}") from None
        if kind == "int8":
            w = QuantizedMatrix(w, get(name + ".scale", (shape[0],)))
    else:
        raise ValueError(f"config 'blocksparse.linears' entry {name!r} has unknown kind "
                         f"{kind!r}")
    bias = get(name + ".bias", (shape[0],), optional=True)
    input_scale = get(name + ".input_scale", (shape[1],), optional=True)
    return Linear(w, bias, input_scale)


def save_file(tensors, path, metadata):
    _, save = _safetensors()
    save(tensors, path, metadata=metadata)


def own_getter(directory):
    """get(key, shape=None, optional=False) over the own format's tensors."""
    tf = _TensorFile(directory)

    def get(key, shape=None, optional=False):
        if key not in tf.keys:
            if optional:
                return None
            raise ValueError(f"checkpoint is missing the tensor {key!r}")
        a = tf.get(key)
        if shape is not None and a.shape != tuple(shape):
            raise ValueError(f"tensor {key!r} has shape {a.shape}, expected {tuple(shape)}")
        return a

    return get


def save_model(model, directory):
    """Write a BertModel to `directory` (BertModel.save_pretrained)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors, linears = {}, {}
    emb = model.embeddings
    tensors["embeddings.word"] = emb.word
    tensors["embeddings.position"] = emb.position
    if emb.token_type is not None:
        tensors["embeddings.token_type"] = emb.token_type
    tensors["embeddings.ln.weight"] = emb.ln.weight
    tensors["embeddings.ln.bias"] = emb.ln.bias
    for i, layer in enumerate(model.encoder):
        for name, lin in zip(("qkv", "o", "ffn1", "ffn2"), layer.linears):
            t, desc = linear_tensors(f"layers.{i}.{name}", lin)
            tensors.update(t)
            linears[f"layers.{i}.{name}"] = desc
        for name, ln in (("ln1", layer.ln1), ("ln2", layer.ln2)):
            tensors[f"layers.{i}.{name}.weight"] = ln.weight
            tensors[f"layers.{i}.{name}.bias"] = ln.bias
    if model.pooler is not None:
        t, desc = linear_tensors("pooler", model.pooler)
        tensors.update(t)
        linears["pooler"] = desc
    cfg = dict(model.config)
    cfg["blocksparse"] = {"format_version": FORMAT_VERSION, "dtype": model.dtype,
                          "sparsity": model.sparsity, "blocksize": list(model.blocksize),
                          "balanced": model.balanced, "smoothing": model.smoothing,
                          "linears": linears}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                   os.path.join(directory, WEIGHTS_NAME),
                   {"format": "blocksparse", "format_version": str(FORMAT_VERSION)})
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)


def load_own(cls, raw, directory, sparsity, dtype):
    """A BertModel `cls` from the own format (BertModel.from_pretrained).

    `raw` is the parsed config.json of `directory`, which has a "blocksparse" section.
    """
    from .bert import BertEmbeddings
    from .layers import (BertEncoder, BertLayer, LayerNorm, MultiHeadSelfAttention,
                         _check_dtype_name)
    meta = raw["blocksparse"]
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"config key 'blocksparse' describes format version "
                         f"{meta.get('format_version') if isinstance(meta, dict) else meta!r}"
                         f"; this version reads {FORMAT_VERSION}")
    stored = meta.get("dtype")
    if dtype is not None and _check_dtype_name(dtype) != stored:
        raise ValueError(f"this model was saved with dtype {stored!r}; load it with "
                         f"dtype=None (or {stored!r}), or sparsify the original checkpoint")
    if sparsity is not None and sparsity != meta.get("sparsity"):
        raise ValueError(f"this model was saved already pruned (sparsity "
                         f"{meta.get('sparsity')!r}); load it with sparsity=None, or prune "
                         f"the original checkpoint")
    cfg = normalize_config({k: v for k, v in raw.items() if k != "blocksparse"})
    get = own_getter(directory)
    linears = meta.get("linears", {})
    H, eps = cfg["hidden_size"], cfg["layer_norm_eps"]

    def ln(name):
        return LayerNorm(get(name + ".weight", (H,)), get(name + ".bias", (H,)), eps)

    def lin(name):
        if name not in linears:
            raise ValueError(f"config 'blocksparse.linears' has no entry {name!r}")
        return linear_from_tensors(name, linears[name], get)

    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        attention = MultiHeadSelfAttention(lin(p + "qkv"), lin(p + "o"),
                                           cfg["num_attention_heads"])
        layers.append(BertLayer(attention, ln(p + "ln1"), lin(p + "ffn1"), lin(p + "ffn2"),
                                ln(p + "ln2"), cfg["hidden_act"]))
    tt = get("embeddings.token_type", (cfg["type_vocab_size"], H), optional=True) \
        if cfg["type_vocab_size"] else None
    emb = BertEmbeddings(get("embeddings.word", (cfg["vocab_size"], H)),
                         get("embeddings.position", (cfg["max_position_embeddings"], H)),
                         tt, ln("embeddings.ln"))
    pooler = lin("pooler") if "pooler" in linears else None
    model = cls(cfg, emb, BertEncoder(layers), pooler)
    model.sparsity = meta.get("sparsity")
    model.blocksize = tuple(meta.get("blocksize", (4, 1)))
    model.balanced = bool(meta.get("balanced", False))
    model.smoothing = meta.get("smoothing")
    model.dtype = stored
    return model
