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


class _Planted:
    """Unpickling this would run code: it writes a file where the test can see it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "storage_keys"])
def test_legacy_headers_never_run_pickled_code(tmp_path, torch_names, where):
    """Every pickle of a legacy checkpoint, not only the state dict, goes through the restricted
    unpickler: a weights file planted in a bucket must not run code on the driver."""
    storages, tensors, _ = _state()
    marker = tmp_path / "ran"
    planted = _Planted(str(marker))
    headers = {"magic": LEGACY_MAGIC, "protocol": 1001, "sys_info": {"little_endian": True}}
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for name, value in headers.items():
            pickle.dump(planted if name == where else value, f, protocol=2)
        f.write(_pickled(tensors, torch_names))
        pickle.dump(planted if where == "storage_keys" else [s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size) + s.array.astype("<f4").tobytes())
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("offset, shape, stride", [
    (8, (2, 3), (1, 2)),    # runs past the end of the 10-element storage
    (0, (4, 4), (4, 1)),    # 16 elements from a 10-element storage
    (-1, (2,), (1,)),       # before its start
    (0, (2, 2), (-1, 1)),   # negative strides walk out of it
])
def test_tensor_views_outside_their_storage_are_refused(tmp_path, torch_names, offset, shape, stride):
    storage = _Storage("0", np.arange(10, dtype=np.float32))
    path = tmp_path / "oob.pth"
    _write_zip(path, [storage], collections.OrderedDict([("w", _Tensor(storage, offset, shape, stride))]),
               torch_names)
    with pytest.raises(CheckpointError, match="outside its storage"):
        load_state_dict(path)


@pytest.mark.parametrize("payload", ["a pickled call", "not a state dict"])
def test_a_refused_weights_file_is_a_refusal_that_no_retry_can_fix(tmp_path, payload):
    """A model file given as `weights` that the reader refuses is ModelUnavailable, which the steps turn
    into the exit code the operator does not retry (the same file is refused on every attempt)."""
    from spark_jobs.common import models

    path = tmp_path / "weights.pth"
    with zipfile.ZipFile(path, "w") as archive:
        body = {"x": _Planted(str(tmp_path / "ran"))} if payload == "a pickled call" else [1, 2, 3]
        archive.writestr("archive/data.pkl", pickle.dumps(body, protocol=2))
    with pytest.raises(models.ModelUnavailable, match="refused"):
        models.build_keras_model("efficientnet_lite0", "s3a://models/weights.pth", seed=0, local_path=str(path))
    assert not (tmp_path / "ran").exists()
