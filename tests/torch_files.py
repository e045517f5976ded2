"""PyTorch checkpoint files written without PyTorch, for the converter's tests.

``state_pickle`` emits the pickle opcodes ``torch.save`` emits for a state
dict (protocol 2: an OrderedDict of ``torch._utils._rebuild_tensor_v2``
calls whose storages are persistent ids), so tests can build valid files
and hostile ones byte by byte; ``write_zip`` and ``write_legacy`` wrap it in
the two file layouts.
"""
import io
import pickle
import struct
import zipfile

import numpy as np

STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
           np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
           np.dtype(np.int32): "IntStorage", np.dtype(np.int8): "CharStorage",
           np.dtype(np.uint8): "ByteStorage", np.dtype(bool): "BoolStorage"}


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def num(i):
    return b"J" + struct.pack("<i", i)


def tup(items):
    return b"(" + b"".join(items) + b"t"


def tensor(stype, key, numel, offset, size, stride, extra=b""):
    """The opcodes of one _rebuild_tensor_v2 call on storage `key`."""
    pid = tup([text("storage"), glob("torch", stype), text(key), text("cpu"), num(numel)])
    hooks = glob("collections", "OrderedDict") + b")R"
    return (glob("torch._utils", "_rebuild_tensor_v2")
            + tup([pid + b"Q", num(offset), tup([num(n) for n in size]),
                   tup([num(s) for s in stride]), b"\x89", hooks]) + extra + b"R")


def state_pickle(entries):
    """An OrderedDict pickle of (name, opcodes) entries."""
    return (b"\x80\x02" + glob("collections", "OrderedDict") + b")R(" +
            b"".join(text(k) + v for k, v in entries) + b"u.")


def entries_of(arrays, tied=()):
    """(pickle entries, {key: raw bytes}) for contiguous arrays; `tied` names share one."""
    entries, data = [], {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.ascontiguousarray(a)
        key = str(i)
        data[key] = a.astype(a.dtype.newbyteorder("<")).tobytes()
        stride, acc = [], 1
        for n in reversed(a.shape):
            stride.insert(0, acc)
            acc *= n
        op = tensor(STORAGE[a.dtype], key, a.size, 0, a.shape, stride)
        entries.append((name, op))
        # a tied name: the same storage, offset, size and stride (one persistent id)
        entries.extend((other, op) for other, target in tied if target == name)
    return entries, data


def write_zip(path, pkl, data, byteorder="little", name="archive"):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", pkl)
        if byteorder:
            z.writestr(f"{name}/byteorder", byteorder)
        for key, raw in data.items():
            z.writestr(f"{name}/data/{key}", raw)
        z.writestr(f"{name}/version", "3\n")
    return path


def write_legacy(path, pkl, data, numel):
    """The pre-1.6 layout: magic, protocol, sys info, the state dict, keys, storages."""
    f = io.BytesIO()
    for obj in (0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001,
                                               "little_endian": True}):
        pickle.dump(obj, f, protocol=2)
    f.write(pkl)
    pickle.dump(list(data), f, protocol=2)
    for key, raw in data.items():
        f.write(struct.pack("<q", numel[key]))
        f.write(raw)
    with open(path, "wb") as out:
        out.write(f.getvalue())
    return path
