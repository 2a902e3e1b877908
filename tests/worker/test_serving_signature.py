"""Reading tensor keys and dtypes from GetModelMetadata, and checking a batch against them."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from services.worker.errors import ModelSignatureError
from services.worker.grpc_serving import parse_metadata


def tensor_info(dtype: int, dims: list[int]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name="ignored:0", dtype=dtype)
    for size in dims:
        info.tensor_shape.dim.add(size=size)
    return info


def metadata_response(signatures: dict[str, meta_graph_pb2.SignatureDef], version: int = 5
                      ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "cxr-pneumonia"
    response.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, definition in signatures.items():
        signature_map.signature_def[name].CopyFrom(definition)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def serving_signature(input_key: str = "image") -> meta_graph_pb2.SignatureDef:
    definition = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    definition.inputs[input_key].CopyFrom(tensor_info(types_pb2.DT_UINT8, [-1, 224, 224, 1]))
    definition.outputs["pneumonia_probability"].CopyFrom(tensor_info(types_pb2.DT_FLOAT, [-1]))
    definition.outputs["threshold"].CopyFrom(tensor_info(types_pb2.DT_FLOAT, [-1]))
    return definition


def test_reads_the_input_key_dtype_and_shape_from_the_signature():
    init_op = meta_graph_pb2.SignatureDef()
    init_op.outputs["x"].CopyFrom(tensor_info(types_pb2.DT_INT32, []))
    metadata = parse_metadata(metadata_response({
        "serving_default": serving_signature("pixels"), "__saved_model_init_op": init_op,
    }))
    assert (metadata.name, metadata.version) == ("cxr-pneumonia", 5)
    assert set(metadata.signatures) == {"serving_default"}
    signature = metadata.signature("serving_default")
    assert signature.input_key == "pixels"
    assert signature.input_dtype == np.uint8
    assert signature.input_shape == (None, 224, 224, 1)
    assert signature.output_dtypes == {"pneumonia_probability": np.float32,
                                       "threshold": np.float32}


def test_a_signature_with_two_inputs_is_refused():
    definition = serving_signature()
    definition.inputs["mask"].CopyFrom(tensor_info(types_pb2.DT_UINT8, [-1, 224, 224, 1]))
    with pytest.raises(ModelSignatureError, match="one is expected"):
        parse_metadata(metadata_response({"serving_default": definition}))


def test_asking_for_a_missing_signature_names_the_ones_there():
    metadata = parse_metadata(metadata_response({"serving_default": serving_signature()}))
    with pytest.raises(ModelSignatureError, match="gradcam.*serving_default"):
        metadata.signature("gradcam")


def test_prepare_accepts_a_matching_batch_and_refuses_others():
    signature = parse_metadata(metadata_response({"serving_default": serving_signature()})
                               ).signature("serving_default")
    good = np.zeros((2, 224, 224, 1), np.uint8)
    assert signature.prepare(good).dtype == np.uint8
    with pytest.raises(ModelSignatureError, match="float32"):
        signature.prepare(good.astype(np.float32))
    with pytest.raises(ModelSignatureError, match="shape"):
        signature.prepare(np.zeros((1, 256, 256, 1), np.uint8))
    with pytest.raises(ModelSignatureError, match="shape"):
        signature.prepare(np.zeros((224, 224, 1), np.uint8))
