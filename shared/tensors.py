"""numpy arrays <-> TensorFlow `TensorProto`s, the tensors of TF Serving's gRPC API.

`tf.make_tensor_proto` and `tf.make_ndarray` are general (every dtype, every `*_val` field) and
slow for the one image and few small outputs of a Predict call, on each side of it (the saving is
in `docs/benchmarks.md`, "Serving latency"). Numeric arrays travel as raw little-endian bytes in
`tensor_content`, as TF Serving itself writes them; these helpers do that directly and fall back
to TensorFlow's own functions for everything else (strings, protos that use the typed `*_val`
fields), so any valid TensorProto is read and what they write is what TF Serving reads.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# numeric dtypes whose tensor_content is the array's little-endian bytes
_DATATYPES: dict[np.dtype, int] = {
    np.dtype(np.bool_): types_pb2.DT_BOOL,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
}
_DTYPES = {datatype: dtype for dtype, datatype in _DATATYPES.items()}


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto of a numpy array (raw bytes for numeric dtypes)."""
    array = np.asarray(array)
    datatype = _DATATYPES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">"
                              else array.dtype)
    if datatype is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape])
    content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor_pb2.TensorProto(dtype=datatype, tensor_shape=shape, tensor_content=content)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array a TensorProto holds (a writable copy).

    Raises ValueError when `tensor_content` does not hold exactly the bytes its shape needs.
    """
    dtype = _DTYPES.get(proto.dtype)
    if dtype is None or not proto.tensor_content:
        import tensorflow as tf

        return tf.make_ndarray(proto)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise ValueError(f"tensor shape {shape} has an unknown dimension")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(proto.tensor_content) != expected:
        raise ValueError(f"tensor_content holds {len(proto.tensor_content)} bytes but shape "
                         f"{shape} of {dtype.name} needs {expected}")
    array = np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape)
    return array.astype(dtype, copy=True)
