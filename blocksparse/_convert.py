"""``pytorch_model.bin`` checkpoints to safetensors, without PyTorch and without running code.

A PyTorch checkpoint is a pickle, and ``torch.load`` of a pickle can run any
code the file names.  The reader here unpickles with a closed list of
globals -- the handful a state dict needs: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the
storage types -- mapped to local stand-ins, so nothing of PyTorch is
imported or called and any other global stops the read.  Storages become
NumPy arrays read from the file's own bytes, with every number checked
first: the storage's dtype, its byte order, its size against the stored
bytes, and each tensor's offset, shape and strides against its storage.

Two layouts are read:

* the zip format (PyTorch >= 1.6): ``<name>/data.pkl`` holds the state
  dict, ``<name>/data/<key>`` each storage's raw bytes, ``<name>/byteorder``
  (when present) their byte order;
* the legacy format (older PyTorch): a magic number, a protocol version
  and system information, the state dict, the list of storage keys, then
  each storage as an 8-byte element count followed by its bytes.

Tied weights -- two names for the same storage, offset, shape and strides,
such as a masked-LM decoder tied to the word embeddings -- are written
once, under the name that comes first in the state dict; the safetensors
header's metadata lists the others (``"tied_weights"``: JSON ``{dropped:
kept}``), and Hugging Face loaders tie them again from the configuration,
as they do for their own safetensors files.
"""
import collections
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._atomic import replacing

__all__ = ["convert_checkpoint", "read_torch_checkpoint", "CheckpointError"]

# torch storage class -> NumPy dtype (bfloat16 is read as its raw 16 bits)
_STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2",
             "BFloat16Storage": "u2", "LongStorage": "i8", "IntStorage": "i4",
             "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
             "BoolStorage": "?"}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# files besides the weights that a checkpoint directory carries and DST gets
CONFIG_FILES = ("config.json", "generation_config.json")
MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle is kilobytes; bounded before reading


class CheckpointError(ValueError):
    """The file is not a PyTorch state dict this reader accepts (the reason says why)."""


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGES[name])

    def __setstate__(self, state):
        raise CheckpointError("a storage type cannot be given state")


class _Storage:
    """A storage named by a persistent id: where its bytes are and how many elements."""

    __slots__ = ("key", "dtype", "bfloat16", "numel", "array")

    def __init__(self, key, stype, numel):
        self.key, self.dtype, self.numel = key, stype.dtype, numel
        self.bfloat16 = stype.name == "BFloat16Storage"
        self.array = None  # filled in once the bytes are read

    def __setstate__(self, state):
        raise CheckpointError("a storage cannot be given state")


class _Tensor:
    """What ``_rebuild_tensor_v2`` returns here: the view to cut from a storage."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __setstate__(self, state):
        raise CheckpointError("a tensor cannot be given state")

    def identity(self):
        """Tensors with the same identity are the same memory (tied weights)."""
        return (id(self.storage), self.offset, self.shape, self.stride)


def _int(value, what, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CheckpointError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"{what} must be a tuple of integers, got {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor must be built on a storage, got "
                              f"{type(storage).__name__}")
    offset = _int(offset, "storage offset")
    size, stride = _int_tuple(size, "tensor size"), _int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise CheckpointError(f"a tensor of size {size}, stride {stride} at offset "
                                  f"{offset} reaches element {last} of a storage of "
                                  f"{storage.numel}")
    elif offset > storage.numel:
        raise CheckpointError(f"storage offset {offset} beyond a storage of {storage.numel}")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    if not isinstance(data, _Tensor):
        raise CheckpointError("a parameter must wrap a tensor")
    return data


class _Unpickler(pickle.Unpickler):
    """Only the globals of a state dict; storages by persistent id (see the module notes)."""

    def __init__(self, file, legacy):
        super().__init__(file)
        self.legacy = legacy
        self.storages = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise CheckpointError(f"the checkpoint names the global {module}.{name}, which a "
                              f"state dict of tensors does not need; it is not loaded (only "
                              f"OrderedDict, torch._utils._rebuild_tensor_v2 and the storage "
                              f"types are)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"a storage must name a storage type, got {stype!r:.80}")
        if not isinstance(key, str) or not key or not key.replace("_", "").isalnum():
            raise CheckpointError(f"a storage key must be a short name, got {key!r:.80}")
        _int(numel, "storage size")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("legacy storage views are not supported")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(key, stype, numel)
        elif known.dtype != stype.dtype or known.numel != numel:
            raise CheckpointError(f"storage {key!r} is declared twice, differently")
        return known


def _state_dict(obj):
    """The name -> _Tensor mapping of an unpickled checkpoint."""
    if isinstance(obj, dict) and set(obj) & {"state_dict", "model"} and len(obj) <= 4:
        inner = obj.get("state_dict", obj.get("model"))
        if isinstance(inner, dict):
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict "
                              f"(a mapping of names to tensors)")
    for name, value in obj.items():
        if not isinstance(name, str):
            raise CheckpointError(f"state dict keys must be names, got {name!r:.80}")
        if not isinstance(value, _Tensor):
            raise CheckpointError(f"state dict entry {name!r} is a {type(value).__name__}, "
                                  f"not a tensor")
    return obj


def _storage_array(storage, raw, little):
    """The storage's elements as a native-order NumPy array, from its bytes."""
    dt = storage.dtype.newbyteorder("<" if little else ">")
    if len(raw) != storage.numel * dt.itemsize:
        raise CheckpointError(f"storage {storage.key!r} holds {len(raw)} bytes, not "
                              f"{storage.numel} x {dt.itemsize}")
    a = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
    if storage.bfloat16:  # the upper 16 bits of a float32
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a


def _materialize(t):
    base = t.storage.array
    step = base.dtype.itemsize
    if not all(t.shape):
        return np.zeros(t.shape, dtype=base.dtype)
    view = np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.shape,
                                           strides=[s * step for s in t.stride],
                                           writeable=False)
    return np.array(view, order="C")  # a copy; 0-d tensors stay 0-d


def _read_zip(path):
    with zipfile.ZipFile(path) as z:
        pkls = [i for i in z.infolist() if i.filename.endswith("/data.pkl")
                and i.filename.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: a PyTorch zip checkpoint has one <name>/data.pkl, "
                                  f"found {len(pkls)}")
        prefix = pkls[0].filename[:-len("data.pkl")]
        if pkls[0].file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: data.pkl of {pkls[0].file_size} bytes is not a "
                                  f"state dict's")
        little = True
        if prefix + "byteorder" in z.namelist():
            order = z.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: byteorder {order!r}")
            little = order == "little"
        import io
        up = _Unpickler(io.BytesIO(z.read(pkls[0])), legacy=False)
        state = _state_dict(up.load())
        for key, storage in up.storages.items():
            try:
                info = z.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{path}: storage {key!r} has no data/{key} entry") \
                    from None
            if info.file_size != storage.numel * storage.dtype.itemsize:  # before reading
                raise CheckpointError(f"{path}: data/{key} holds {info.file_size} bytes, not "
                                      f"{storage.numel} x {storage.dtype.itemsize}")
            storage.array = _storage_array(storage, z.read(info), little)
    return state


def _read_legacy(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            magic = _Unpickler(f, legacy=True).load()
        except CheckpointError:
            raise
        except Exception:
            magic = None
        if magic != _LEGACY_MAGIC or _Unpickler(f, legacy=True).load() != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no zip archive, no "
                                  f"legacy magic number)")
        sys_info = _Unpickler(f, legacy=True).load()
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        up = _Unpickler(f, legacy=True)
        state = _state_dict(up.load())
        keys = _Unpickler(f, legacy=True).load()
        if not isinstance(keys, list) or set(keys) != set(up.storages):
            raise CheckpointError(f"{path}: the storage list does not match the state dict")
        for key in keys:
            storage = up.storages[key]
            count = f.read(8)
            if len(count) != 8:
                raise CheckpointError(f"{path}: truncated before storage {key!r}")
            n = struct.unpack("<q" if little else ">q", count)[0]
            nbytes = n * storage.dtype.itemsize
            if n != storage.numel or f.tell() + nbytes > size:
                raise CheckpointError(f"{path}: storage {key!r} declares {n} elements, the "
                                      f"state dict {storage.numel} ({size - f.tell()} bytes "
                                      f"left)")
            storage.array = _storage_array(storage, f.read(nbytes), little)
    return state


def read_torch_checkpoint(path):
    """Read a PyTorch state dict file without PyTorch and without running its code.

    Parameters
    ----------
    path : str or os.PathLike
        A ``torch.save``-d state dict (zip or legacy format), such as
        ``pytorch_model.bin``.

    Returns
    -------
    tensors : dict of str to ndarray
        Every tensor, C-contiguous, in state-dict order; bfloat16 becomes
        float32 (exactly), other dtypes stay.  A tensor tied to an earlier
        one is not repeated here.
    tied : dict of str to str
        Dropped name -> the name it is tied to.

    Raises
    ------
    CheckpointError
        (a ValueError) If the file is not a state dict of tensors, names a
        global outside the allowed list, or any size, offset or stride
        does not fit its storage.
    """
    path = os.fspath(path)
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except (CheckpointError, OSError):
        raise
    except Exception as exc:  # a malformed pickle or zip: any unpickling failure
        raise CheckpointError(f"{path}: not a readable PyTorch state dict "
                              f"({type(exc).__name__}: {exc})") from None
    tensors, tied, seen = {}, {}, {}
    for name, t in state.items():
        first = seen.setdefault(t.identity(), name)
        if first != name:
            tied[name] = first
            continue
        tensors[name] = _materialize(t)
    return tensors, tied


def _bin_files(src):
    """The .bin weight files of a checkpoint directory (one, or the shards of an index)."""
    index = src / "pytorch_model.bin.index.json"
    if (src / "pytorch_model.bin").is_file():
        return [src / "pytorch_model.bin"]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not an index with a weight_map ({exc})") from None
        from .nn._checkpoint import confined
        return [Path(confined(str(src), n, "shard")) for n in names]
    raise FileNotFoundError(f"{src} has no pytorch_model.bin (or pytorch_model.bin.index.json)")


def convert_checkpoint(src, dst, *, force=False):
    """Convert a ``pytorch_model.bin`` checkpoint directory to a safetensors one.

    Reads the state dict without PyTorch (:func:`read_torch_checkpoint`:
    no code in the file runs), writes ``DST/model.safetensors`` with every
    tensor once (tied weights once, listed in its metadata) and copies the
    configuration, tokenizer and sentence-transformers files, so that
    :meth:`blocksparse.nn.BertModel.from_pretrained` (and Hugging Face
    loaders) read DST.  Files are written atomically; ``config.json`` last.

    Parameters
    ----------
    src : str or os.PathLike
        A directory with ``pytorch_model.bin`` (or an index and its
        ``.bin`` shards), or the ``.bin`` file itself (the other files
        are then taken from its directory).
    dst : str or os.PathLike
        The directory to write (created).
    force : bool, optional
        Write into a non-empty DST; weights files of another checkpoint
        there are removed (other files stay).

    Returns
    -------
    dict
        ``tensors`` (count written), ``tied`` (dropped name -> kept
        name), ``bytes`` (of model.safetensors), ``copied`` (file names),
        ``dtypes`` (dtype name -> count).

    Raises
    ------
    FileNotFoundError
        If SRC has no ``.bin`` checkpoint.
    FileExistsError
        If DST is not empty and `force` is false, or is a file.
    ValueError
        If DST is SRC, or the checkpoint is not a readable state dict
        (:class:`CheckpointError`).
    ImportError
        Without the ``safetensors`` package (the ``models`` extra).

    Examples
    --------
    >>> from blocksparse import convert_checkpoint          # doctest: +SKIP
    >>> convert_checkpoint("antiberty/trained_models/AntiBERTy_md_smooth",
    ...                    "antiberty-st")["tied"]          # doctest: +SKIP
    {'cls.predictions.decoder.weight': 'bert.embeddings.word_embeddings.weight'}
    """
    src, dst = Path(src), Path(dst)
    if src.is_file():
        files, src_dir = [src], src.parent
    elif src.is_dir():
        files, src_dir = _bin_files(src), src
    else:
        raise FileNotFoundError(f"src {str(src)!r} is neither a directory nor a file")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"dst {str(dst)!r} exists and is not a directory")
    if dst.exists() and src_dir.resolve() == dst.resolve():
        raise ValueError("dst must differ from the directory of src")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise FileExistsError(f"dst {str(dst)!r} is not empty (force=True writes into it)")
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ImportError("convert needs the 'safetensors' package "
                          "(pip install 'blocksparse[models]')") from None
    tensors, tied = {}, {}
    for f in files:
        t, ties = read_torch_checkpoint(f)
        clash = set(t) & set(tensors)
        if clash:
            raise CheckpointError(f"{f}: tensor {sorted(clash)[0]!r} is in two shards")
        tensors.update(t)
        tied.update(ties)
    dst.mkdir(parents=True, exist_ok=True)
    _remove_other_weights(dst)
    metadata = {"format": "pt", "converted_from": files[0].name}
    if tied:
        metadata["tied_weights"] = json.dumps(tied, sort_keys=True)
    out = dst / "model.safetensors"
    with replacing(out) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    copied = _copy_side_files(src_dir, dst)
    dtypes = collections.Counter(a.dtype.name for a in tensors.values())
    return {"tensors": len(tensors), "tied": tied, "bytes": out.stat().st_size,
            "copied": copied, "dtypes": dict(dtypes)}


def _remove_other_weights(dst):
    """Weights of another checkpoint in DST would shadow or contradict the new file."""
    import re
    from ._cli_model import STALE_WEIGHTS, _remove
    index = dst / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            shards = set()
        for name in shards:
            p = dst / str(name)
            if "/" not in str(name) and p.is_file():
                p.unlink()
        index.unlink()
    own = re.compile(r"model-[0-9a-f]{16}\.safetensors")  # blocksparse's save_pretrained
    for p in list(dst.iterdir()):
        if p.name in STALE_WEIGHTS or p.name == "pytorch_model.bin.index.json" or \
                own.fullmatch(p.name):
            _remove(p)


def _copy_side_files(src, dst):
    from ._cli_model import SIDE_FILES, _copy_replacing
    from .nn._checkpoint import confined
    copied = []
    names = [n for n in SIDE_FILES if (src / n).exists()] + \
        [n for n in CONFIG_FILES if (src / n).is_file()]
    for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last
        _copy_replacing(Path(confined(str(src), name, "file")), dst / name)
        copied.append(name)
    return copied
