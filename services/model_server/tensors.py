"""Conversions between request tensors (TensorProto, JSON values) and numpy arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from services.model_server.errors import invalid_argument
from shared.tensors import to_ndarray, to_tensor_proto


def array_from_proto(name: str, proto) -> np.ndarray:
    """The request tensor as an array, with a malformed TensorProto reported as INVALID_ARGUMENT."""
    try:
        return to_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"input {name!r} is not a valid TensorProto: {exc}") from exc


def proto_from_array(array: np.ndarray):
    return to_tensor_proto(array)


def array_from_json(name: str, value, dtype: tf.DType | None) -> np.ndarray:
    """A JSON list/number as an array of the signature's dtype, refusing values that don't fit.

    `dtype` None (an input the signature does not have) converts as-is, for the signature check
    to report. Only numeric and bool inputs are taken over REST here (no strings or b64).
    """
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise invalid_argument(f"input {name!r} is not a rectangular array: {exc}") from exc
    if array.dtype == object:
        raise invalid_argument(f"input {name!r} is not a rectangular array of numbers")
    if dtype is None:
        return array
    if not (dtype.is_integer or dtype.is_floating or dtype.is_bool):
        raise invalid_argument(f"input {name!r} is {dtype.name}: only numbers are taken as JSON")
    if array.dtype.kind not in "biuf":
        raise invalid_argument(f"input {name!r} must hold numbers (expected {dtype.name})")
    if not dtype.is_floating and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise invalid_argument(f"input {name!r} holds non-integer values; expected {dtype.name}")
    if dtype.is_integer and array.size and (array.min() < dtype.min or array.max() > dtype.max):
        raise invalid_argument(f"input {name!r} holds values outside the range of {dtype.name}")
    return array.astype(dtype.as_numpy_dtype)
