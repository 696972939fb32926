"""The torch-free checkpoint reader on both of torch's on-disk formats, written here the way
torch.save lays them out: tensors pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` with storages as persistent ids, their bytes beside the pickle."""

import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from spark_jobs.common.torch_checkpoint import LEGACY_MAGIC, CheckpointError, load_state_dict


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


@pytest.fixture
def torch_names(monkeypatch):
    """Stand-ins registered under torch's names only while pickling, so pickle writes torch's globals."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here, never called")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = "FloatStorage", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = FloatStorage, _rebuild_tensor_v2, utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickled(obj, torch) -> bytes:
    class TorchLikePickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", torch.FloatStorage, o.key, "cpu", o.array.size)
            return None

        def reducer_override(self, o):
            if isinstance(o, _Tensor):
                return (torch._utils._rebuild_tensor_v2,
                        (o.storage, o.offset, o.shape, o.stride, False, collections.OrderedDict()))
            return NotImplemented

    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _state():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    shared = rng.normal(size=10).astype(np.float32)
    storages = [_Storage("0", conv.ravel()), _Storage("1", shared)]
    tensors = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(storages[0], 0, (4, 3, 3, 3), (27, 9, 3, 1))),
            # a transposed view into a storage, at an offset: strides and offset must be honoured
            ("fc.weight", _Tensor(storages[1], 2, (2, 3), (1, 2))),
        ]
    )
    expected = {"conv.weight": conv, "fc.weight": np.array([[shared[2], shared[4], shared[6]],
                                                            [shared[3], shared[5], shared[7]]])}
    return storages, tensors, expected


def _write_zip(path, storages, tensors, torch):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _pickled(tensors, torch))
        for s in storages:
            archive.writestr(f"archive/data/{s.key}", s.array.astype("<f4").tobytes())


def _write_legacy(path, storages, tensors, torch):
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(_pickled(tensors, torch))
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size) + s.array.astype("<f4").tobytes())


@pytest.mark.parametrize("writer", [_write_zip, _write_legacy])
def test_both_formats_round_trip(tmp_path, torch_names, writer):
    storages, tensors, expected = _state()
    path = tmp_path / "model.pth"
    writer(path, storages, tensors, torch_names)
    state = load_state_dict(path)
    assert list(state) == list(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(state[name], want)


def test_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (__builtin__|builtins)\.print"):
        load_state_dict(path)
