"""A model config file (two models, `specific` policy, version labels), HandleReloadConfigRequest
and config file polling, on a real model server process."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.model_server.calls import outputs, predict, status_code_of
from tests.model_server.generic_model import save_arithmetic_model
from tests.support.model_server import ModelServer
from tests.support.procs import wait_until


def _config_text(models_dir, policy: str, labels: dict[str, int], with_arithmetic: bool) -> str:
    label_text = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
    text = (
        f'config {{ name: "cxr-pneumonia" base_path: "{models_dir}/cxr-pneumonia" '
        f'model_platform: "tensorflow" model_version_policy {{ {policy} }} {label_text} }}'
    )
    if with_arithmetic:
        text += (f' config {{ name: "arithmetic" base_path: "{models_dir}/arithmetic" '
                 'model_platform: "tensorflow" model_version_policy { all {} } }')
    return f"model_config_list {{ {text} }}"


def _reload(server: ModelServer, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest(
        config=text_format.Parse(text, model_server_config_pb2.ModelServerConfig()))
    with server.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stub.HandleReloadConfigRequest(request, timeout=300)


@pytest.fixture(scope="module")
def configured_server(tmp_path_factory):
    """One server for the module: the first test only reads, the second changes the config."""
    tmp_path = tmp_path_factory.mktemp("configured-server")
    models_dir = tmp_path / "models"
    server = ModelServer(models_dir, tmp_path / "logs", config_file=tmp_path / "models.config",
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    for version in (1, 2, 3):
        server.publish(version)
    save_arithmetic_model(models_dir / "arithmetic", 1)
    server.config_file.write_text(_config_text(
        models_dir, "specific { versions: 1 versions: 2 }", {"stable": 1, "canary": 2}, True))
    server.start(wait_for=2)
    yield server
    server.stop()


def test_config_file_policy_labels_and_a_second_model(configured_server):
    server = configured_server
    assert server.version_states() == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert predict(server).model_spec.version.value == 2
    assert predict(server, label="stable").model_spec.version.value == 1
    assert predict(server, label="canary").model_spec.version.value == 2
    assert status_code_of(lambda: predict(server, version=3)) == grpc.StatusCode.NOT_FOUND

    rest = httpx.Client(base_url=server.rest_url, timeout=60)
    image = np.zeros((1, 224, 224, 1), np.uint8).tolist()
    labelled = rest.post("/v1/models/cxr-pneumonia/labels/stable:predict",
                         json={"instances": image})
    assert labelled.status_code == 200
    np.testing.assert_allclose(
        labelled.json()["predictions"][0]["pneumonia_probability"],
        outputs(predict(server, {"image": np.zeros((1, 224, 224, 1), np.uint8)}, version=1))[
            "pneumonia_probability"][0], rtol=1e-5)

    x, y = np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0]], np.float32)
    result = outputs(predict(server, {"x": x, "y": y}, name="arithmetic"))
    np.testing.assert_allclose(result["sum"], [[4.0, 6.0]])
    rows = rest.post("/v1/models/arithmetic:predict",
                     json={"instances": [{"x": [1, 2], "y": [3, 4]}, {"x": [0, 1], "y": [5, 5]}]})
    assert rows.json() == {"predictions": [{"sum": [4.0, 6.0], "product": [3.0, 8.0]},
                                           {"sum": [5.0, 6.0], "product": [0.0, 5.0]}]}
    columns = rest.post("/v1/models/arithmetic:predict", json={"inputs": {"x": [[1, 2]]}})
    assert columns.status_code == 400 and "Missing but required: {y}" in columns.json()["error"]
    # A single-output signature answers plain values instead of {name: value} objects.
    single = rest.post("/v1/models/arithmetic:predict",
                       json={"instances": [[1, 2], [3, 4]], "signature_name": "total"})
    assert single.json() == {"predictions": [3.0, 7.0]}


def test_config_changes_by_reload_request_then_by_the_polled_file(configured_server):
    server = configured_server
    models_dir = server.base_path
    _reload(server, _config_text(models_dir, "latest { num_versions: 1 }", {"stable": 3}, False))
    assert server.version_states() == {3: "AVAILABLE", 2: "END", 1: "END"}
    assert predict(server, label="stable").model_spec.version.value == 3
    assert status_code_of(lambda: predict(server, label="canary")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_of(lambda: predict(server, name="arithmetic")) == grpc.StatusCode.NOT_FOUND

    unavailable = _config_text(models_dir, "latest { num_versions: 1 }", {"stable": 9}, False)
    assert status_code_of(lambda: _reload(server, unavailable)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert predict(server, label="stable").model_spec.version.value == 3
    wrong_platform = ('model_config_list { config { name: "m" base_path: "/m" '
                      'model_platform: "pytorch" } }')
    assert status_code_of(lambda: _reload(server, wrong_platform)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_of(lambda: _reload(server, "")) == grpc.StatusCode.INVALID_ARGUMENT

    server.config_file.write_text(_config_text(models_dir, "all {}", {"stable": 2}, False))
    wait_until(lambda: server.version_states() == {3: "AVAILABLE", 2: "AVAILABLE", 1: "AVAILABLE"},
               120, "all versions loaded after the config file changed", server.process)
    wait_until(lambda: predict(server, label="stable").model_spec.version.value == 2, 30,
               "label stable moved to version 2", server.process)
