"""Reader feedback end to end: HTTPS gateway -> Redis -> Celery worker -> model server, storage on
moto's S3. A reader confirms or corrects a result; the film becomes training data of the client's
site; the verdicts and the prediction mix show in `/metrics`; the web page's form sends them."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from shared.feedback import confirmed_labels
from shared.jobs.keys import (
    confirmed_film_key,
    confirmed_label_key,
    confirmed_site_prefix,
    shadow_key,
)
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, Failure, ModelRef, PredictionResult, utc_now
from shared.shadow import ShadowAnswer, ShadowOutput
from shared.storage import S3Storage
from tests.gateway.uploads import sample_xray
from tests.shared.identified_dicom import identified_chest_dx
from tests.shared.xray_files import dicom_bytes
from tests.support.browser import chromium_page
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.procs import REPO_ROOT
from tests.support.stack import predicted_sample
from tests.support.worker import CeleryWorker, start_celery_worker

pytestmark = pytest.mark.slow

BUCKET, PREFIX = "cxr-feedback", "deployment"
SITES = "alice:north,bob:south,carol:east"
# Free text a reader might type; it must never reach a log or the training data.
COMMENT = "Compared with the film of 3 March; discussed with Dr Okonkwo-Feedbackcheck"
OTHER = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}


@dataclass
class Stack:
    gateway: GatewayProcess
    worker: CeleryWorker
    storage: S3Storage
    jobs: JobStore


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, s3_server, shared_model_server) -> Iterator[Stack]:
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp("feedback")
    s3_server.make_bucket(BUCKET)
    s3_env = s3_server.service_env(BUCKET, PREFIX)
    gateway = start_gateway(work, redis_server.url, tls=True, env={
        **s3_env, "CXR_MODEL_SERVER_REST": shared_model_server.rest_url,
        "CXR_RATE_LIMIT_PER_MINUTE": "100000", "CXR_SITE_CLIENTS": SITES})
    try:
        worker = start_celery_worker(work / "worker", redis_url=redis_server.url,
                                     storage_root=work / "unused",
                                     model_server_target=shared_model_server.grpc_target,
                                     env=s3_env)
    except BaseException:
        gateway.stop()
        raise
    storage = S3Storage(BUCKET, PREFIX, s3_server.endpoint_url, "us-east-1")
    yield Stack(gateway, worker, storage, JobStore(redis_server.client(), storage))
    worker.stop()
    gateway.stop()




def verdict(label: str, reader: str = "Reader A", **extra) -> dict:
    return {"label": label, "subtype": "viral" if label == "PNEUMONIA" else None,
            "reader": reader, **extra}


def audit_entries(gateway: GatewayProcess, job_id: str, action: str = "feedback") -> list[dict]:
    lines = [json.loads(line) for line in gateway.audit_log.read_text().splitlines()]
    return [e for e in lines if e["job_id"] == job_id and e["action"] == action]


def test_a_reader_confirms_then_corrects_a_result_and_the_film_becomes_site_data(stack):
    with stack.gateway.client("alice", timeout=60) as http:
        view = predicted_sample(http, "NORMAL", 2)
        job_id, model_label = view["job_id"], view["result"]["label"]
        assert view["feedback"] is None
        assert view["links"]["feedback"] == f"/v1/predictions/{job_id}/feedback"

        first = http.post(view["links"]["feedback"],
                          json=verdict(model_label, comment=COMMENT))
        assert first.status_code == 201, first.text
        assert first.headers["location"] == f"/v1/predictions/{job_id}"
        feedback = first.json()["feedback"]
        assert (feedback["label"], feedback["reader"], feedback["revision"]) == (
            model_label, "Reader A", 1)
        assert feedback["agrees"] is True and feedback["client_id"] == "alice"
        assert feedback["comment"] == COMMENT
        assert http.get(f"/v1/predictions/{job_id}").json()["feedback"] == feedback

        # The film and its label, under the site's prefix in S3.
        site_keys = stack.storage.list(f"{confirmed_site_prefix('north')}{job_id}/")
        film_key = confirmed_film_key("north", job_id, "image/jpeg")
        assert site_keys == sorted([film_key, confirmed_label_key("north", job_id)])
        assert stack.storage.get(film_key) == stack.storage.get(f"uploads/{job_id}")
        label_text = stack.storage.get(confirmed_label_key("north", job_id)).decode()
        assert COMMENT not in label_text and "comment" not in json.loads(label_text)
        (stored,) = [f for f in confirmed_labels(stack.storage, "north") if f.job_id == job_id]
        assert (stored.label, stored.reader, stored.site, stored.source, stored.film) == (
            model_label, "Reader A", "north", "api", film_key)
        assert stored.model_answer.label == model_label
        assert stored.model_answer.model.version == 1
        assert stored.model_answer.pneumonia_probability == pytest.approx(
            view["result"]["pneumonia_probability"])

        # A correction replaces the verdict, on the job and in the site's data.
        second = http.post(view["links"]["feedback"], json=verdict(OTHER[model_label], "Reader B"))
        assert second.status_code == 201, second.text
        feedback = second.json()["feedback"]
        assert (feedback["label"], feedback["revision"], feedback["agrees"]) == (
            OTHER[model_label], 2, False)
        assert feedback["comment"] is None
        (stored,) = [f for f in confirmed_labels(stack.storage, "north") if f.job_id == job_id]
        assert (stored.label, stored.reader, stored.revision) == (OTHER[model_label], "Reader B", 2)
        assert len(stack.storage.list(f"{confirmed_site_prefix('north')}{job_id}/")) == 2

    # Both verdicts in the audit trail; the comment in no log line at all.
    entries = audit_entries(stack.gateway, job_id)
    assert [(e["label"], e["reader"], e["revision"], e["replaces"], e["status"])
            for e in entries] == [(model_label, "Reader A", 1, None, 201),
                                  (OTHER[model_label], "Reader B", 2, model_label, 201)]
    assert all(e["client"] == "alice" and e["site"] == "north" for e in entries)
    assert "Okonkwo" not in stack.gateway.audit_log.read_text()
    assert "Okonkwo" not in stack.gateway.process.log_tail(10**6)

    # Another site's films go under its own prefix; another client cannot touch alice's job.
    with stack.gateway.client("bob", timeout=60) as http:
        refused = http.post(f"/v1/predictions/{job_id}/feedback", json=verdict("NORMAL"))
        assert refused.status_code == 404 and refused.json()["code"] == "job_not_found"
        own = predicted_sample(http, "PNEUMONIA", 2)
        assert http.post(own["links"]["feedback"], json=verdict("PNEUMONIA")).status_code == 201
    assert audit_entries(stack.gateway, job_id)[-1]["status"] == 404
    assert [f.job_id for f in confirmed_labels(stack.storage, "south")] == [own["job_id"]]
    assert job_id not in {f.job_id for f in confirmed_labels(stack.storage, "south")}
    (stored,) = [f for f in confirmed_labels(stack.storage, "north") if f.job_id == job_id]
    assert stored.reader == "Reader B"  # bob's refused attempt changed nothing


BAD_BODIES = [
    ({"label": "MAYBE", "reader": "R"}, "label"),
    ({"label": "PNEUMONIA", "subtype": "fungal", "reader": "R"}, "subtype"),
    ({"label": "NORMAL", "subtype": "viral", "reader": "R"}, "subtype"),
    ({"label": "NORMAL", "reader": ""}, "reader"),
    ({"label": "NORMAL", "reader": "   "}, "reader"),
    ({"label": "NORMAL", "reader": "R" * 101}, "reader"),
    ({"label": "NORMAL", "reader": "R\nInjected"}, "reader"),
    ({"label": "NORMAL", "reader": "R", "comment": "x" * 2001}, "comment"),
    ({"label": "NORMAL", "reader": "R", "patient_name": "Doe"}, "patient_name"),
    ({"reader": "R"}, "label"),
]


def test_bad_feedback_gets_a_clear_4xx_and_changes_nothing(stack):
    with stack.gateway.client("alice", timeout=60) as http:
        view = predicted_sample(http, "PNEUMONIA", 3)
        url = view["links"]["feedback"]
        for body, field in BAD_BODIES:
            response = http.post(url, json=body)
            assert response.status_code == 422, (body, response.text)
            problem = response.json()
            assert problem["code"] == "invalid_request", body
            assert field in problem["detail"], (body, problem["detail"])
        assert http.post(url, content=b"label=NORMAL").status_code == 422
        assert http.get(view["links"]["self"]).json()["feedback"] is None
        assert stack.storage.list(f"{confirmed_site_prefix('north')}{view['job_id']}/") == []

        unknown = http.post("/v1/predictions/0123456789abcdef/feedback", json=verdict("NORMAL"))
        assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"

        # A job still queued, and a job that failed: nothing to confirm.
        queued = JobRecord(job_id="feedback-queued-1", client_id="alice", site="north",
                           upload_key="uploads/feedback-queued-1")
        failed = JobRecord(job_id="feedback-failed-1", client_id="alice", site="north",
                           upload_key="uploads/feedback-failed-1", status=JobStatus.FAILED,
                           failure=Failure(code="corrupt_image", message="cut off"))
        for record, code in ((queued, "job_not_finished"), (failed, "job_has_no_result")):
            stack.jobs.create(record)
            response = http.post(f"/v1/predictions/{record.job_id}/feedback",
                                 json=verdict("NORMAL"))
            assert response.status_code == 409, response.text
            assert response.json()["code"] == code
            assert stack.storage.list(f"{confirmed_site_prefix('north')}{record.job_id}/") == []
        assert audit_entries(stack.gateway, queued.job_id)[-1]["status"] == 409


def test_a_dicom_kept_with_its_identifiers_is_confirmed_de_identified(stack):
    """A PACS film stored with identifiers (CXR_PACS_KEEP_IDENTIFIERS) enters training data
    de-identified."""
    instance = identified_chest_dx()
    data = dicom_bytes(instance.dataset)
    assert len(instance.found_in(data)) == len(instance.identifiers)
    job_id = "feedback-dicom-1"
    stack.storage.put(f"uploads/{job_id}", data, content_type="application/dicom")
    result = PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.8, subtype="bacterial", threshold=0.5,
        class_probabilities=ClassProbabilities(normal=0.2, bacterial=0.5, viral=0.3),
        model=ModelRef(name="cxr-pneumonia", version=1))
    stack.jobs.create(JobRecord(
        job_id=job_id, client_id="alice", site="north", source="dicom",
        content_type="application/dicom", upload_key=f"uploads/{job_id}",
        status=JobStatus.SUCCEEDED, result=result))
    with stack.gateway.client("alice") as http:
        response = http.post(f"/v1/predictions/{job_id}/feedback",
                             json=verdict("PNEUMONIA", "Reader C"))
        assert response.status_code == 201, response.text
    film = stack.storage.get(confirmed_film_key("north", job_id, "application/dicom"))
    assert instance.found_in(film) == []
    dataset = dcmread(io.BytesIO(film))
    assert dataset.PatientIdentityRemoved == "YES"
    assert np.array_equal(dataset.pixel_array, instance.dataset.pixel_array)
    (stored,) = [f for f in confirmed_labels(stack.storage, "north") if f.job_id == job_id]
    assert (stored.source, stored.model_answer.subtype) == ("dicom", "bacterial")


def samples(text: str, name: str) -> list:
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def test_metrics_count_verdicts_by_model_and_reader_label_and_the_prediction_mix(stack):
    with stack.gateway.client("carol", timeout=60) as http:
        views = [predicted_sample(http, "NORMAL", 4), predicted_sample(http, "PNEUMONIA", 4)]
        first, second = views
        agree, disagree = first["result"]["label"], second["result"]["label"]
        http.post(first["links"]["feedback"], json=verdict(agree)).raise_for_status()
        http.post(second["links"]["feedback"], json=verdict(OTHER[disagree])).raise_for_status()
        http.post(second["links"]["feedback"], json=verdict(disagree)).raise_for_status()
    gateway_text = stack.gateway.metrics_text()
    worker_text = stack.worker.metrics_text()

    def counts(text: str, name: str, *labels: str) -> Counter:
        found: Counter = Counter()
        for sample in samples(text, name):
            if sample.labels.get("site") == "east":
                found[tuple(sample.labels[label] for label in labels)] += sample.value
        return found

    films = counts(gateway_text, "cxr_feedback_films_total", "model_version", "model_label",
                   "reader_label")
    assert films == Counter({("1", agree, agree): 1}) + Counter(
        {("1", disagree, OTHER[disagree]): 1, ("1", disagree, disagree): 1})
    assert counts(gateway_text, "cxr_feedback_superseded_total", "model_version", "model_label",
                  "reader_label") == Counter({("1", disagree, OTHER[disagree]): 1})

    labels = Counter(("1", view["result"]["label"]) for view in views)
    assert counts(worker_text, "cxr_worker_predicted_labels_total", "model_version",
                  "label") == labels
    (count,) = [s.value for s in samples(worker_text, "cxr_worker_pneumonia_probability_count")
                if s.labels["site"] == "east"]
    (total,) = [s.value for s in samples(worker_text, "cxr_worker_pneumonia_probability_sum")
                if s.labels["site"] == "east"]
    assert count == 2
    assert total == pytest.approx(sum(v["result"]["pneumonia_probability"] for v in views),
                                  abs=1e-6)
    below_half = [s.value for s in samples(worker_text, "cxr_worker_pneumonia_probability_bucket")
                  if s.labels["site"] == "east" and s.labels["le"] == "0.5"]
    assert below_half == [sum(v["result"]["pneumonia_probability"] <= 0.5 for v in views)]

    # Every metric the live-performance rules read is one the services export.
    rules = yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    (group,) = [g for g in rules["groups"] if g["name"] == "cxr-live-performance"]
    exprs = " ".join(rule["expr"] for rule in group["rules"])
    exported = {s.name for text in (gateway_text, worker_text)
                for family in text_string_to_metric_families(text) for s in family.samples}
    read = set(re.findall(r"\bcxr_[a-z_]+\b", exprs))
    assert read and read <= exported, read - exported


def test_a_verdict_on_a_film_a_shadow_version_scored_counts_against_its_label(stack):
    with stack.gateway.client("bob", timeout=60) as http:
        view = predicted_sample(http, "PNEUMONIA", 5)
        job_id, model_label = view["job_id"], view["result"]["label"]
        shadow_label = OTHER[model_label]
        # What the worker's shadow task stores (services/worker/shadow.py) for a version 7 that
        # disagrees with the champion; this stack serves no shadow version itself.
        answer = {"pneumonia_probability": 0.5, "threshold": 0.5}
        stack.storage.put(shadow_key(job_id), ShadowOutput(
            job_id=job_id, site="south", scored_at=utc_now(),
            shadow=ShadowAnswer(model=ModelRef(name="cxr-pneumonia", version=7),
                                label=shadow_label, **answer),
            champion=ShadowAnswer(model=ModelRef(name="cxr-pneumonia", version=1),
                                  label=model_label, **answer),
            class_probabilities=ClassProbabilities(normal=0.5, bacterial=0.25, viral=0.25),
            inference_ms=1.0).model_dump_json().encode())
        http.post(view["links"]["feedback"], json=verdict(model_label)).raise_for_status()
        corrected = http.post(view["links"]["feedback"], json=verdict(shadow_label))
        corrected.raise_for_status()
        assert "shadow" not in corrected.text and "shadow" not in http.get(
            f"/v1/predictions/{job_id}").text
    text = stack.gateway.metrics_text()

    def counts(name: str) -> Counter:
        return Counter({(s.labels["model_version"], s.labels["model_label"],
                         s.labels["reader_label"]): s.value
                        for s in samples(text, name) if s.labels.get("site") == "south"})

    assert counts("cxr_shadow_feedback_films_total") == Counter(
        {("7", shadow_label, model_label): 1, ("7", shadow_label, shadow_label): 1})
    assert counts("cxr_shadow_feedback_superseded_total") == Counter(
        {("7", shadow_label, model_label): 1})


@pytest.fixture(scope="module")
def browser_page(stack):
    with chromium_page() as page:
        yield page


def test_the_web_page_lets_a_reader_correct_then_confirm_a_reading(stack, browser_page):
    page = browser_page
    page.goto(f"{stack.gateway.url}/")
    page.get_by_label("Your API key").fill(stack.gateway.keys["bob"])
    page.get_by_role("button", name="Use this key").click()
    page.set_input_files("#file", str(sample_xray("NORMAL", 5)))
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    model_label = page.inner_text("#result-label")
    job_id = page.inner_text("#result-job")
    # The form starts at the model's reading.
    assert page.input_value("#feedback-label") == model_label
    assert page.inner_text("#feedback-submit") == "Confirm the reading"

    page.select_option("#feedback-label", OTHER[model_label])
    if OTHER[model_label] == "PNEUMONIA":
        page.select_option("#feedback-subtype", "viral")
    page.get_by_label("Reader", exact=True).fill("Dr Page")
    page.get_by_role("button", name="Correct the reading").click()
    page.wait_for_function(
        "document.getElementById('feedback-status').textContent.includes('Corrected')")
    with stack.gateway.client("bob") as http:
        feedback = http.get(f"/v1/predictions/{job_id}").json()["feedback"]
    assert (feedback["label"], feedback["reader"], feedback["revision"]) == (
        OTHER[model_label], "Dr Page", 1)
    assert feedback["subtype"] == ("viral" if OTHER[model_label] == "PNEUMONIA" else None)

    page.select_option("#feedback-label", model_label)
    page.get_by_role("button", name="Confirm the reading").click()
    page.wait_for_function(
        "document.getElementById('feedback-status').textContent.includes('verdict 2')")
    assert page.inner_text("#feedback-status").startswith(f"Confirmed as {model_label}")
    assert page.locator("#feedback-error").is_hidden()
    (stored,) = [f for f in confirmed_labels(stack.storage, "south") if f.job_id == job_id]
    assert (stored.label, stored.revision, stored.reader) == (model_label, 2, "Dr Page")
