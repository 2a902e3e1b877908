"""Scope screening over HTTPS, end to end: TLS gateway -> Redis -> Celery worker -> model server.

The model server serves the screening test model (tests/support/scope_model.py), whose
SCOPE_SCORES a test controls by painting a block of the film, so reasons from the model reach
`result.scope` or refuse the job. Pixel refusals are answered by the gateway at once (422).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from shared.contract import (
    ADULT,
    BLANK_IMAGE,
    COLOUR_IMAGE,
    INVERTED,
    LATERAL_VIEW,
    NOISE_IMAGE,
    NOT_A_CHEST_RADIOGRAPH_CODE,
    NOT_CHEST_RADIOGRAPH,
    ROTATED,
    SCOPE_REASONS,
)
from tests.gateway.uploads import sample_xray
from tests.pacs.studies import chest_dx, photograph
from tests.shared.xray_files import dicom_bytes
from tests.support.browser import chromium_page
from tests.support.scope_model import mark
from tests.support.stack import Stack, finished, scope_stack

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server) -> Iterator[Stack]:
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp("scope-stack")
    with scope_stack(work, redis_server.url) as started:
        yield started


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def film(label: str = "NORMAL", index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(sample_xray(label, index)).convert("L"))


def upload(http, data: bytes, name: str = "film.png"):
    return http.post("/v1/predictions", params={"wait": 60}, files={"file": (name, data)})


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


PIXEL_REFUSALS = {
    "colour photograph JPEG": (lambda: encoded(photograph(512), "JPEG"), COLOUR_IMAGE),
    "uniform noise PNG": (lambda: encoded(RNG.integers(0, 256, (600, 500), np.uint8)),
                          NOISE_IMAGE),
    "all black PNG": (lambda: encoded(np.zeros((600, 500), np.uint8)), BLANK_IMAGE),
    "all white JPEG": (lambda: encoded(np.full((600, 500), 255, np.uint8), "JPEG"), BLANK_IMAGE),
    "chest-tagged DICOM holding a photograph": (
        lambda: dicom_bytes(chest_dx(pixels=photograph())), COLOUR_IMAGE),
}


@pytest.mark.parametrize("case", list(PIXEL_REFUSALS))
def test_a_film_failing_a_pixel_check_is_refused_at_upload(stack, case):
    make, reason = PIXEL_REFUSALS[case]
    with stack.gateway.client("alice") as http:
        before = stack.gateway.metrics_text()
        response = upload(http, make(), "upload.dcm" if "DICOM" in case else "upload.img")
        after = stack.gateway.metrics_text()
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == NOT_A_CHEST_RADIOGRAPH_CODE
    assert problem["reasons"] == [reason]
    assert problem["detail"].startswith("The image was not analysed")
    assert (metric(after, "cxr_gateway_scope_refused_total", reason=reason)
            == metric(before, "cxr_gateway_scope_refused_total", reason=reason) + 1)
    assert (metric(after, "cxr_gateway_jobs_created_total")
            == metric(before, "cxr_gateway_jobs_created_total"))


def test_a_lateral_dicom_is_refused_with_its_reason(stack):
    with stack.gateway.client("alice") as http:
        response = upload(http, dicom_bytes(chest_dx(view="LL")), "lateral.dcm")
    assert response.status_code == 422
    assert response.json()["reasons"] == [LATERAL_VIEW]
    assert "View Position is LL" in response.json()["detail"]


def test_an_in_scope_film_says_so(stack):
    with stack.gateway.client("alice") as http:
        view = finished(http, encoded(film()))
    assert view["status"] == "succeeded", view
    assert view["result"]["scope"] == {"in_validated_population": True, "reasons": []}


def test_an_adult_dicom_is_answered_with_the_adult_flag(stack):
    with stack.gateway.client("alice") as http:
        view = finished(http, dicom_bytes(chest_dx(age="052Y", label="NORMAL")), "adult.dcm")
    assert view["status"] == "succeeded", view
    assert view["result"]["label"] in ("NORMAL", "PNEUMONIA")
    assert view["result"]["scope"] == {"in_validated_population": False, "reasons": [ADULT]}


@pytest.mark.parametrize("reasons", [[ROTATED], [INVERTED], [ROTATED, INVERTED]])
def test_rotated_and_inverted_films_are_flagged_when_the_model_says_so(stack, reasons):
    pixels = film("PNEUMONIA")
    for reason in reasons:
        pixels = mark(pixels, reason)
    with stack.gateway.client("bob") as http:
        view = finished(http, encoded(pixels))
    assert view["status"] == "succeeded", view
    assert view["result"]["scope"] == {"in_validated_population": False, "reasons": reasons}
    assert view["heatmap_url"]


@pytest.mark.parametrize("reason", [NOT_CHEST_RADIOGRAPH, LATERAL_VIEW])
def test_a_refusal_decided_by_the_model_fails_the_job(stack, reason):
    with stack.gateway.client("bob") as http:
        view = finished(http, encoded(mark(mark(film(), reason), ROTATED)))
        assert http.get(f"/v1/predictions/{view['job_id']}/heatmap").status_code == 404
    assert view["status"] == "failed", view
    assert view["result"] is None
    failure = view["failure"]
    assert failure["code"] == NOT_A_CHEST_RADIOGRAPH_CODE
    assert failure["reasons"] == [reason, ROTATED]  # the flag is listed beside the refusal
    assert failure["message"].startswith("The image was not analysed")


def test_worker_metrics_count_each_reason_by_outcome(stack):
    with stack.gateway.client("carol") as http:
        before = stack.worker.metrics_text()
        finished(http, encoded(mark(film(index=1), INVERTED)))
        finished(http, encoded(mark(film(index=1), NOT_CHEST_RADIOGRAPH)))
        finished(http, encoded(film(index=1)))
        after = stack.worker.metrics_text()

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("cxr_worker_scope_outcomes_total", outcome="flagged") == 1
    assert grew("cxr_worker_scope_outcomes_total", outcome="refused") == 1
    assert grew("cxr_worker_scope_outcomes_total", outcome="in_scope") == 1
    assert grew("cxr_worker_scope_reasons_total", reason=INVERTED, outcome="flagged") == 1
    assert grew("cxr_worker_scope_reasons_total", reason=NOT_CHEST_RADIOGRAPH,
                outcome="refused") == 1


def test_the_reason_codes_are_an_enum_in_the_openapi_schema(stack):
    with stack.gateway.client(None) as http:
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["ScopeReason"]["enum"] == list(SCOPE_REASONS)
    scope = schemas["Scope"]["properties"]
    assert scope["reasons"]["items"] == {"$ref": "#/components/schemas/ScopeReason"}


@pytest.fixture(scope="module")
def browser_page(stack):
    with chromium_page() as page:
        page.goto(f"{stack.gateway.url}/")
        page.get_by_label("Your API key").fill(stack.gateway.keys["carol"])
        page.get_by_role("button", name="Use this key").click()
        yield page


def analyse(page, path) -> None:
    page.set_input_files("#file", str(path))
    page.get_by_role("button", name="Analyse").click()


def test_web_page_shows_a_banner_before_the_label_for_a_flagged_film(stack, browser_page,
                                                                     tmp_path):
    page = browser_page
    flagged = tmp_path / "rotated.png"
    flagged.write_bytes(encoded(mark(film(index=2), ROTATED)))
    analyse(page, flagged)
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    banner = page.locator("#scope-banner")
    assert banner.is_visible()
    assert "Outside the validated population" in banner.inner_text()
    assert "not upright" in banner.inner_text()
    assert page.locator("#scope-reasons li").get_attribute("data-reason") == ROTATED
    banner_y = banner.bounding_box()["y"]
    assert banner_y < page.locator("#result-label").bounding_box()["y"]

    in_scope = tmp_path / "film.png"
    in_scope.write_bytes(encoded(film(index=2)))
    analyse(page, in_scope)
    page.wait_for_function("!document.getElementById('result').hidden && "
                           "document.getElementById('scope-banner').hidden", timeout=120_000)


def test_web_page_shows_a_refusal_with_its_reasons(stack, browser_page, tmp_path):
    page = browser_page
    photo = tmp_path / "photo.jpeg"
    photo.write_bytes(encoded(photograph(512), "JPEG"))
    analyse(page, photo)
    refusal = page.locator("#refusal")
    refusal.wait_for(state="visible", timeout=60_000)
    assert "Not analysed" in refusal.inner_text()
    assert "in colour" in refusal.inner_text()
    assert page.locator("#result").is_hidden() and page.locator("#error").is_hidden()

    refused_by_model = tmp_path / "hand.png"
    refused_by_model.write_bytes(encoded(mark(film(index=3), NOT_CHEST_RADIOGRAPH)))
    analyse(page, refused_by_model)
    page.wait_for_function(
        "document.querySelector('#refusal-reasons li')?.dataset.reason === "
        f"'{NOT_CHEST_RADIOGRAPH}'", timeout=120_000)
    assert page.locator("#refusal").is_visible() and page.locator("#result").is_hidden()
