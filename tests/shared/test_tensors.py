"""shared.tensors: the raw-bytes TensorProto path agrees with TensorFlow's own conversions."""

import numpy as np
import pytest
import tensorflow as tf

from shared.tensors import to_ndarray, to_tensor_proto

NUMERIC = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
           "float16", "float32", "float64"]


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("shape", [(1, 224, 224, 1), (3,), (), (2, 0, 4)])
def test_numeric_arrays_round_trip_and_match_tensorflow(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * 200).astype(dtype)
    proto = to_tensor_proto(array)
    assert tf.dtypes.as_dtype(proto.dtype) == tf.dtypes.as_dtype(array.dtype)
    assert [d.size for d in proto.tensor_shape.dim] == list(shape)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)  # TensorFlow reads ours
    ours = to_ndarray(tf.make_tensor_proto(array))  # and we read TensorFlow's
    assert ours.dtype == array.dtype and ours.shape == array.shape
    np.testing.assert_array_equal(ours, array)


def test_big_endian_and_non_contiguous_inputs_are_written_as_little_endian_values():
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(array)), array.astype("<f4"))


def test_typed_value_fields_and_strings_fall_back_to_tensorflow():
    scalar = tf.make_tensor_proto(0.5, dtype=tf.float32)  # float_val, no tensor_content
    assert not scalar.tensor_content
    assert to_ndarray(scalar) == np.float32(0.5)
    words = np.array([b"normal", b"viral"])
    np.testing.assert_array_equal(to_ndarray(to_tensor_proto(words)), words)


def test_read_results_are_writable_copies():
    proto = to_tensor_proto(np.zeros((2, 2), np.float32))
    array = to_ndarray(proto)
    array[0, 0] = 1.0
    assert to_ndarray(proto)[0, 0] == 0.0


def test_content_that_does_not_fit_the_shape_is_refused():
    proto = to_tensor_proto(np.zeros((1, 4, 4, 1), np.uint8))
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(ValueError, match="15 bytes"):
        to_ndarray(proto)
    proto.tensor_shape.dim[1].size = -1
    with pytest.raises(ValueError, match="unknown dimension"):
        to_ndarray(proto)
