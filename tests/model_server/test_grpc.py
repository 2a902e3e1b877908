"""PredictionService and ModelService over gRPC, against a real model server process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.model_server.calls import (
    metadata,
    model_spec,
    outputs,
    predict,
    status_code_of,
    xray_batch,
)


def test_predict_fills_model_spec_and_outputs(shared_model_server):
    response = predict(shared_model_server, {"image": xray_batch(3)})
    assert response.model_spec.name == "cxr-pneumonia"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    result = outputs(response)
    assert set(result) == {"pneumonia_probability", "class_probabilities", "threshold"}
    assert result["class_probabilities"].shape == (3, 3)
    np.testing.assert_allclose(result["class_probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result["pneumonia_probability"],
                               result["class_probabilities"][:, 1:].sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(result["threshold"], 0.5)


def test_output_filter_and_the_gradcam_signature(shared_model_server):
    filtered = predict(shared_model_server, output_filter=["threshold"])
    assert set(filtered.outputs) == {"threshold"}
    heatmap = outputs(predict(shared_model_server, signature="gradcam"))["heatmap"]
    assert heatmap.shape == (2, 224, 224)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_messages_over_grpc_default_4mb_limit_are_accepted(shared_model_server):
    batch = xray_batch(100)  # about 5 MB of pixels
    result = outputs(predict(shared_model_server, {"image": batch},
                             output_filter=["pneumonia_probability"]))
    assert result["pneumonia_probability"].shape == (100,)


def test_metadata_is_the_packed_signature_def_map(shared_model_server):
    response = metadata(shared_model_server)
    assert response.model_spec.name == "cxr-pneumonia"
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    serving = signature_map.signature_def["serving_default"]
    image = serving.inputs["image"]
    assert image.dtype == 4  # DT_UINT8
    assert [d.size for d in image.tensor_shape.dim] == [-1, 224, 224, 1]
    assert set(serving.outputs) == {"pneumonia_probability", "class_probabilities", "threshold"}
    assert set(signature_map.signature_def["gradcam"].outputs) == {"heatmap", *serving.outputs}


def test_model_status_reports_the_available_version(shared_model_server):
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec())
    with shared_model_server.channel() as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


GOOD = xray_batch(1)


@pytest.mark.parametrize("kwargs, code, words", [
    ({"name": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "Servable not found"),
    ({"version": 7}, grpc.StatusCode.NOT_FOUND, "Specific(cxr-pneumonia, 7)"),
    ({"label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"),
    ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "no name"),
    ({"inputs": {"pixels": GOOD}}, grpc.StatusCode.INVALID_ARGUMENT, "alias not found"),
    ({"inputs": {}}, grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {image}"),
    ({"inputs": {"image": GOOD.astype(np.float32)}}, grpc.StatusCode.INVALID_ARGUMENT,
     "to be uint8 but float"),
    ({"inputs": {"image": np.array([b"x"])}}, grpc.StatusCode.INVALID_ARGUMENT,
     "to be uint8 but string"),
    ({"inputs": {"image": GOOD[:, :32, :32]}}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ({"inputs": {"image": GOOD[0]}}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION, "signature key"),
    ({"output_filter": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias"),
])
def test_bad_predict_requests_get_tf_serving_status_codes(shared_model_server, kwargs, code, words):
    try:
        predict(shared_model_server, **kwargs)
    except grpc.RpcError as exc:
        assert exc.code() == code
        assert words in exc.details()
    else:
        pytest.fail(f"{kwargs} was answered")


def test_a_malformed_tensor_proto_is_an_invalid_argument(shared_model_server):
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    image = request.inputs["image"]
    image.dtype = 4  # DT_UINT8
    image.tensor_shape.dim.add(size=1)
    image.tensor_shape.dim.add(size=224)
    image.tensor_content = b"far too few bytes"
    with shared_model_server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert status_code_of(lambda: stub.Predict(request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_and_status_errors(shared_model_server):
    assert status_code_of(lambda: metadata(shared_model_server, fields=())) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_of(lambda: metadata(shared_model_server, fields=("other",))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_of(lambda: metadata(shared_model_server, name="nope")) == \
        grpc.StatusCode.NOT_FOUND
    with shared_model_server.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for spec, code in [(model_spec(name="nope"), grpc.StatusCode.NOT_FOUND),
                           (model_spec(version=9), grpc.StatusCode.NOT_FOUND),
                           (model_spec(label="nope"), grpc.StatusCode.INVALID_ARGUMENT)]:
            request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
            assert status_code_of(lambda r=request: stub.GetModelStatus(r)) == code


def test_classify_is_unimplemented(shared_model_server):
    request = classification_pb2.ClassificationRequest(model_spec=model_spec())
    with shared_model_server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert status_code_of(lambda: stub.Classify(request)) == grpc.StatusCode.UNIMPLEMENTED
