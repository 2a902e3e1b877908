"""gRPC calls to a model server in tests, through tensorflow-serving-api's own stubs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.support.model_server import MODEL_NAME, ModelServer


def xray_batch(count: int = 2, seed: int = 0, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 1), dtype=np.uint8)


def model_spec(name: str = MODEL_NAME, version: int | None = None, label: str | None = None,
               signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def predict(server: ModelServer, inputs: dict[str, np.ndarray] | None = None, *,
            output_filter: Sequence[str] = (), **spec) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest(model_spec=model_spec(**spec),
                                         output_filter=list(output_filter))
    for name, value in (inputs if inputs is not None else {"image": xray_batch()}).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=60)


def metadata(server: ModelServer, fields: Sequence[str] = ("signature_def",),
             **spec) -> get_model_metadata_pb2.GetModelMetadataResponse:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_spec(**spec), metadata_field=list(fields))
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.GetModelMetadata(request, timeout=30)


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def status_code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The gRPC status a call fails with (fails the test if the call succeeds)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded but an error status was expected")
