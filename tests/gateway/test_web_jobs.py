"""The web page's job list, the stored film shown for a DICOM upload, the heatmap's colour key and
the scope and operating-point statements, in headless Chromium against the real stack (HTTPS
gateway -> Redis -> Celery worker -> model server)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageColor

from shared.heatmap import HEAT_COLOURS, display_size
from tests.gateway.uploads import sample_xray
from tests.shared.xray_files import dicom_bytes, xray_dataset
from tests.support.browser import chromium_page
from tests.support.stack import Stack, finished, gateway_stack

pytestmark = pytest.mark.slow

PATIENT_NAME = "Qzwebpage^Identifiable"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, shared_model_server) -> Iterator[Stack]:
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp("web-jobs")
    with gateway_stack(work, redis_server.url, shared_model_server) as started:
        yield started


def sample_dicom() -> tuple[bytes, tuple[int, int]]:
    """A sample film's pixels as a DICOM DX carrying a patient name; (bytes, (height, width))."""
    pixels = np.asarray(Image.open(sample_xray("PNEUMONIA", 2)).convert("L"))
    dataset = xray_dataset(pixels, bits_stored=8, PatientName=PATIENT_NAME,
                           PatientID="QzWebPage-0042")
    return dicom_bytes(dataset), pixels.shape


@pytest.fixture(scope="module")
def alice_jobs(stack) -> dict[str, dict]:
    data, shape = sample_dicom()
    with stack.gateway.client("alice", timeout=90) as http:
        jpeg = sample_xray("NORMAL", 3)
        jobs = {"jpeg": finished(http, jpeg.read_bytes(), jpeg.name),
                "dicom": finished(http, data, "film.dcm")}
    jobs["dicom"]["shape"] = shape
    return jobs


def test_original_route_draws_the_stored_dicom(stack, alice_jobs):
    job = alice_jobs["dicom"]
    with stack.gateway.client("alice") as http:
        response = http.get(f"/v1/predictions/{job['job_id']}/original")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert PATIENT_NAME.encode() not in response.content
    image = Image.open(io.BytesIO(response.content))
    height, width = job["shape"]
    assert image.mode == "L"
    assert image.size == display_size(height, width, 1024)
    assert not image.info.get("text")
    with stack.gateway.client("bob") as http:  # another client's job is not found
        assert http.get(f"/v1/predictions/{job['job_id']}/original").status_code == 404
    with stack.gateway.client("alice") as http:
        assert http.get("/v1/predictions/no-such-job/original").status_code == 404
    lines = [json.loads(line) for line in stack.gateway.audit_log.read_text().splitlines()]
    reads = [(line["client"], line["status"]) for line in lines
             if line["action"] == "read_original" and line["job_id"] == job["job_id"]]
    assert reads == [("alice", 200), ("bob", 404)]


@pytest.fixture
def page() -> Iterator:
    with chromium_page() as browser_page:
        yield browser_page


def test_web_page_lists_the_clients_jobs_and_reopens_a_dicom(stack, alice_jobs, page):
    with stack.gateway.client("bob", timeout=90) as http:  # bob's job never shows for alice
        bob_file = sample_xray("NORMAL", 4)
        bob_job = finished(http, bob_file.read_bytes(), bob_file.name)["job_id"]
    with stack.gateway.client("alice") as http:
        listed = http.get("/v1/predictions", params={"limit": 10}).json()["items"]

    page.goto(f"{stack.gateway.url}/")
    page.get_by_label("Your API key").fill(stack.gateway.keys["alice"])
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length >= 2")

    rows = page.locator("#jobs-body tr")
    shown_ids = [rows.nth(i).get_attribute("data-job-id") for i in range(rows.count())]
    assert shown_ids == [job["job_id"] for job in listed]  # newest first, as the API lists
    assert bob_job not in shown_ids
    dicom = alice_jobs["dicom"]
    dicom_row = page.locator(f"#jobs-body tr[data-job-id='{dicom['job_id']}']")
    cells = dicom_row.locator("td")
    assert cells.nth(1).inner_text() == "film.dcm"
    assert cells.nth(2).inner_text() == dicom["status"]
    if dicom["status"] == "succeeded":
        result = dicom["result"]
        assert cells.nth(3).inner_text() == result["label"]
        assert cells.nth(4).inner_text() == f"{result['pneumonia_probability']:.3f}"

    assert dicom["status"] == "succeeded", dicom  # a real chest film, read by the model
    dicom_row.get_by_role("button").click()
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("document.getElementById('original-image').naturalWidth > 0")
    page.wait_for_function("document.getElementById('heatmap-image').naturalWidth > 0")
    assert page.inner_text("#result-job") == dicom["job_id"]
    height, width = dicom["shape"]
    natural = page.evaluate("[document.getElementById('original-image').naturalWidth,"
                            " document.getElementById('original-image').naturalHeight]")
    assert tuple(natural) == display_size(height, width, 1024)

    # The colour key shows the heatmap's own colours, weakest to strongest.
    key = page.eval_on_selector("#heat-key-bar", "el => getComputedStyle(el).backgroundImage")
    expected = ", ".join("rgb({}, {}, {})".format(*ImageColor.getrgb(c)) for c in HEAT_COLOURS)
    assert expected in key
    assert page.is_visible("#heat-key-bar")

    # The statements follow the result.
    result = dicom["result"]
    scope = page.inner_text("#scope-statement")
    assert scope.startswith("In scope" if result["scope"]["in_validated_population"]
                            else "Out of scope")
    point = page.inner_text("#operating-point")
    assert f"threshold {result['threshold']:.3f}" in point
    assert result["operating_point"]["calibrated_by"] == "model"  # no site point is published
    assert "model's own operating point" in point and "site default" in point
