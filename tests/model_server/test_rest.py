"""TF Serving's REST API and the Prometheus page, against a real model server process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.model_server.calls import outputs, predict, xray_batch

MODEL_URL = "/v1/models/cxr-pneumonia"


@pytest.fixture(scope="module")
def rest(shared_model_server):
    with httpx.Client(base_url=shared_model_server.rest_url, timeout=60) as client:
        yield client


def test_status_has_tf_serving_shape(rest):
    for path in (MODEL_URL, f"{MODEL_URL}/versions/1"):
        response = rest.get(path)
        assert response.status_code == 200
        ok = {"error_code": "OK", "error_message": ""}
        assert response.json() == {
            "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]
        }


def test_metadata_lists_signatures(rest):
    body = rest.get(f"{MODEL_URL}/metadata").json()
    assert body["model_spec"] == {"name": "cxr-pneumonia", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    image = signatures["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "224", "224", "1"]
    assert "heatmap" in signatures["gradcam"]["outputs"]


def test_rest_and_grpc_give_the_same_predictions(rest, shared_model_server):
    batch = xray_batch(2, seed=7)
    expected = outputs(predict(shared_model_server, {"image": batch}))

    rows = rest.post(f"{MODEL_URL}:predict", json={"instances": batch.tolist()})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert len(predictions) == 2
    for i, row in enumerate(predictions):
        for name, value in expected.items():
            np.testing.assert_allclose(row[name], value[i], rtol=1e-5, atol=1e-6)

    body = {"inputs": {"image": batch.tolist()}, "signature_name": "serving_default"}
    columns = rest.post(f"{MODEL_URL}/versions/1:predict", json=body)
    assert columns.status_code == 200, columns.text
    for name, value in expected.items():
        np.testing.assert_allclose(columns.json()["outputs"][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, path, body, status, words", [
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions"),
    ("GET", f"{MODEL_URL}/versions/9", None, 404, "Could not find version 9"),
    ("GET", f"{MODEL_URL}/labels/nope", None, 400, "Unrecognized servable version label"),
    ("GET", "/v1/nothing-here", None, 404, "Malformed request"),
    ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found"),
    ("POST", f"{MODEL_URL}:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", f"{MODEL_URL}:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances'"),
    ("POST", f"{MODEL_URL}:predict", {"instances": [[[1]]]}, 400, "shape"),
    ("POST", f"{MODEL_URL}:predict", {"instances": [[[1.5]]]}, 400, "non-integer"),
    ("POST", f"{MODEL_URL}:predict", {"inputs": {"pixels": [1]}}, 400, "alias not found"),
    ("POST", f"{MODEL_URL}:predict", {"instances": [1], "signature_name": 3}, 400,
     "'signature_name' key must be a string"),
    ("POST", f"{MODEL_URL}:classify", {"examples": []}, 501, "not served"),
])
def test_errors_have_tf_serving_http_codes(rest, method, path, body, status, words):
    content = body if isinstance(body, bytes) else None
    response = rest.request(method, path, content=content,
                            json=None if content is not None else body)
    assert response.status_code == status
    assert words in response.json()["error"]


def _counter(rest, **labels) -> float:
    page = rest.get("/monitoring/prometheus/metrics")
    assert page.status_code == 200
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            if sample.name == "model_server_requests_total" and \
                    all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_prometheus_page_counts_requests(rest, shared_model_server):
    labels = {"api": "grpc", "method": "predict", "model_name": "cxr-pneumonia", "version": "1",
              "signature_name": "serving_default", "status": "OK"}
    before = _counter(rest, **labels)
    predict(shared_model_server)
    predict(shared_model_server)
    assert _counter(rest, **labels) == before + 2
    failed = {**labels, "api": "rest", "status": "INVALID_ARGUMENT"}
    before_failed = _counter(rest, **failed)
    rest.post(f"{MODEL_URL}:predict", json={"instances": [[[1]]]})
    assert _counter(rest, **failed) == before_failed + 1
    page = rest.get("/monitoring/prometheus/metrics").text
    assert 'model_server_loaded_versions{model_name="cxr-pneumonia"} 1.0' in page
    assert "model_server_request_latency_seconds_bucket" in page
