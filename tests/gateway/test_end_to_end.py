"""The whole path over HTTPS: gateway process -> Redis -> Celery worker -> model server -> result.

One stack per module (starting TensorFlow processes takes a while): the session's model server
holding version 1 of the trainer's tiny model, a real `celery worker`, and a TLS gateway with its
own self-signed certificate, which the clients here trust explicitly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.gateway.uploads import sample_xray
from tests.support.browser import chromium_page
from tests.support.stack import Stack, gateway_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, shared_model_server) -> Iterator[Stack]:
    redis_server.client().flushall()  # no task left over from other modules' gateways
    work = tmp_path_factory.mktemp("stack")
    with gateway_stack(work, redis_server.url, shared_model_server) as started:
        yield started


def predict(http, path, **upload_kwargs) -> dict:
    """Upload `path` and long-poll until the job has finished."""
    response = http.post("/v1/predictions", files={"file": (path.name, path.read_bytes())},
                         **upload_kwargs)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    for _ in range(12):
        view = http.get(f"/v1/predictions/{job_id}", params={"wait": 30}).json()
        if view["status"] in ("succeeded", "failed"):
            return view
    raise AssertionError(f"job {job_id} did not finish: {view}")


def test_upload_over_https_gives_a_full_result_and_heatmap(stack):
    gateway = stack.gateway
    with gateway.client("alice", timeout=60) as http:
        view = predict(http, sample_xray("PNEUMONIA"))
        assert view["status"] == "succeeded", view
        result = view["result"]
        assert result["label"] in ("NORMAL", "PNEUMONIA")
        p, threshold = result["pneumonia_probability"], result["threshold"]
        assert 0.0 <= p <= 1.0 and threshold == pytest.approx(0.5)
        assert result["label"] == ("PNEUMONIA" if p >= threshold else "NORMAL")
        classes = result["class_probabilities"]
        assert sum(classes.values()) == pytest.approx(1.0, abs=1e-4)
        assert p == pytest.approx(classes["bacterial"] + classes["viral"], abs=1e-4)
        if result["label"] == "PNEUMONIA":
            assert result["subtype"] in ("bacterial", "viral")
        else:
            assert result["subtype"] is None
        assert result["model"] == {"name": "cxr-pneumonia", "version": 1}
        # This model has no screening outputs: pixels and headers alone screen, and pass a film.
        assert result["scope"] == {"in_validated_population": True, "reasons": []}
        assert result["timings_ms"]["total"] > 0

        assert view["heatmap_url"] == f"/v1/predictions/{view['job_id']}/heatmap"
        heatmap = http.get(view["heatmap_url"])
        assert heatmap.status_code == 200
        assert heatmap.headers["content-type"] == "image/png"
        assert heatmap.headers["cache-control"] == "no-store"
        with Image.open(io.BytesIO(heatmap.content)) as image:
            assert image.format == "PNG" and min(image.size) >= 64

    audit = [json.loads(line) for line in gateway.audit_log.read_text().splitlines()]
    mine = [(e["client"], e["action"], e["status"]) for e in audit if e["job_id"] == view["job_id"]]
    assert ("alice", "upload", 202) in mine
    assert ("alice", "read_result", 200) in mine and ("alice", "read_heatmap", 200) in mine


def test_upload_with_wait_answers_with_the_result_in_one_request(stack):
    path = sample_xray("NORMAL")
    with stack.gateway.client("alice", timeout=60) as http:
        response = http.post("/v1/predictions", params={"wait": 30},
                             files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        view = response.json()
        assert view["status"] == "succeeded" and view["result"]["label"] in ("NORMAL", "PNEUMONIA")
        assert response.headers["location"] == f"/v1/predictions/{view['job_id']}"
        assert http.get(view["heatmap_url"]).status_code == 200
        # the same job, read the usual way
        assert http.get(response.headers["location"]).json()["result"] == view["result"]


def test_current_model_and_readiness_come_from_the_model_server(stack):
    with stack.gateway.client("bob") as http:
        current = http.get("/v1/models/current")
        assert current.status_code == 200, current.text
        body = current.json()
        assert body["name"] == "cxr-pneumonia"
        assert body["version"] == 1 and body["available_versions"] == [1]
        assert body["threshold"] == pytest.approx(0.5)
        # No MLflow server in this stack: the registry part degrades to null and a note.
        assert body["registry"] is None
        assert any("MLflow" in note for note in body["notes"])

        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": "ok", "storage": "ok", "model_server": "ok"}


def test_metrics_count_requests_by_route_template_and_jobs(stack):
    with stack.gateway.client("alice", timeout=60) as http:
        predict(http, sample_xray("NORMAL"))
        text = stack.gateway.metrics_text()
    assert 'route="/v1/predictions/{job_id}"' in text
    assert 'cxr_gateway_requests_total{method="POST",route="/v1/predictions",status="202"}' in text
    created = [line for line in text.splitlines()
               if line.startswith("cxr_gateway_jobs_created_total ")]
    assert created and float(created[0].split()[-1]) >= 1
    assert "cxr_gateway_upload_bytes_bucket" in text
    assert "cxr_gateway_request_duration_seconds_bucket" in text


@pytest.fixture(scope="module")
def browser_page(stack):
    with chromium_page() as page:
        yield page


def test_web_page_uploads_an_xray_and_shows_the_reading(stack, browser_page):
    page = browser_page
    page.goto(f"{stack.gateway.url}/")
    assert "Not for clinical use" in page.inner_text(".notice")
    assert page.get_attribute("#file", "accept")
    page.get_by_label("Your API key").fill(stack.gateway.keys["carol"])
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function(
        "document.getElementById('model-info').textContent.includes('version 1')")

    xray = sample_xray("NORMAL", index=1)
    page.set_input_files("#file", str(xray))
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    page.wait_for_function("document.getElementById('heatmap-image').naturalWidth > 0")

    label = page.inner_text("#result-label")
    job_id = page.inner_text("#result-job")
    assert page.inner_text("#result-model") == "cxr-pneumonia version 1"
    assert page.get_attribute("#heatmap-image", "alt")
    assert page.get_attribute("#original-image", "alt")
    with stack.gateway.client("carol") as http:
        result = http.get(f"/v1/predictions/{job_id}").json()["result"]
    assert label == result["label"]
    assert f"{result['pneumonia_probability']:.3f}" in page.inner_text("#probability-text")
    bar = page.locator("#probability-bar").bounding_box()
    marker = page.locator("#bar-threshold").bounding_box()
    marker_at = (marker["x"] + marker["width"] / 2 - bar["x"]) / bar["width"]
    assert marker_at == pytest.approx(0.5, abs=0.02)  # the tiny model's threshold


def test_web_page_shows_the_problem_detail_for_a_bad_file(stack, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{stack.gateway.url}/")  # the key stays in this tab's sessionStorage
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all")
    page.set_input_files("#file", str(notes))
    page.get_by_role("button", name="Analyse").click()
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not a JPEG, PNG or DICOM" in error.inner_text()
    assert page.locator("#result").is_hidden()

