"""One model call per job when `gradcam` also answers the prediction; two otherwise."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from services.worker.grpc_serving import ServingClient
from shared.tensors import to_ndarray, to_tensor_proto
from tests.worker.test_serving_signature import metadata_response, serving_signature, tensor_info

PREDICTION = {
    "pneumonia_probability": np.array([0.8], np.float32),
    "threshold": np.array([0.6], np.float32),
}
HEATMAP = {"heatmap": np.full((1, 224, 224), 0.5, np.float32)}


def gradcam_signature(with_prediction: bool) -> meta_graph_pb2.SignatureDef:
    definition = serving_signature() if with_prediction else meta_graph_pb2.SignatureDef()
    if not with_prediction:
        definition.inputs["image"].CopyFrom(tensor_info(types_pb2.DT_UINT8, [-1, 224, 224, 1]))
    definition.outputs["heatmap"].CopyFrom(tensor_info(types_pb2.DT_FLOAT, [-1, 224, 224]))
    return definition


class FakeServer:
    """Answers GetModelMetadata and Predict as version 7 of a model would; records each Predict."""

    def __init__(self, combined: bool) -> None:
        self.combined = combined
        self.calls: list[predict_pb2.PredictRequest] = []

    def GetModelMetadata(self, request, timeout):  # noqa: N802 - the gRPC method's name
        return metadata_response({"serving_default": serving_signature(),
                                  "gradcam": gradcam_signature(self.combined)}, version=7)

    def Predict(self, request, timeout):  # noqa: N802
        self.calls.append(request)
        assert to_ndarray(request.inputs["image"]).shape == (1, 224, 224, 1)
        outputs = dict(PREDICTION) if request.model_spec.signature_name != "gradcam" else {}
        if request.model_spec.signature_name == "gradcam":
            outputs |= HEATMAP | (PREDICTION if self.combined else {})
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(to_tensor_proto(value))
        return response


def client_with(server: FakeServer) -> ServingClient:
    client = ServingClient("localhost:1", "cxr-pneumonia", timeout_s=5)
    client._stub = server
    return client


def test_a_model_whose_gradcam_answers_the_prediction_takes_one_call():
    server = FakeServer(combined=True)
    answer = client_with(server).predict_with_heatmap(np.zeros((1, 224, 224, 1), np.uint8))
    assert [call.model_spec.signature_name for call in server.calls] == ["gradcam"]
    assert not server.calls[0].model_spec.HasField("version")  # the server picks the version
    assert answer.version == 7
    assert set(answer.outputs) == {"pneumonia_probability", "threshold", "heatmap"}
    np.testing.assert_array_equal(answer.outputs["pneumonia_probability"],
                                  PREDICTION["pneumonia_probability"])


def test_an_older_model_is_asked_for_the_prediction_pinned_to_the_heatmaps_version():
    server = FakeServer(combined=False)
    answer = client_with(server).predict_with_heatmap(np.zeros((1, 224, 224, 1), np.uint8))
    assert [call.model_spec.signature_name for call in server.calls] == [
        "gradcam", "serving_default"]
    assert server.calls[1].model_spec.version.value == 7
    assert answer.version == 7
    assert set(answer.outputs) == {"pneumonia_probability", "threshold", "heatmap"}
    np.testing.assert_array_equal(answer.outputs["heatmap"], HEATMAP["heatmap"])
