"""`GET /v1/predictions/{job_id}/fhir`: a finished job as a FHIR R4B DiagnosticReport.

The builder's statuses (preliminary, final, amended, cancelled) are checked on records made here;
the route end to end over HTTPS: TLS gateway -> Redis -> Celery worker -> model server serving the
screening test model (tests/support/scope_model.py), so a film the model refuses fails its job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from PIL import Image

from services.gateway import fhir
from shared.contract import (
    ADULT,
    NOT_A_CHEST_RADIOGRAPH_CODE,
    NOT_CHEST_RADIOGRAPH,
    ROTATED,
)
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.schemas import (
    ClassProbabilities,
    Failure,
    Feedback,
    ModelRef,
    PredictionResult,
    Scope,
    ScopeReason,
    SiteOperatingPoint,
    utc_now,
)
from shared.storage import LocalStorage
from tests.gateway.uploads import sample_xray
from tests.support.gateway import GatewayProcess
from tests.support.scope_model import mark
from tests.support.stack import Stack, finished, scope_stack

OTHER = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
COMMENT = "Seen with the film of the week before; Dr Fhircheck-Comment"


# --- reading a report ----------------------------------------------------------------------------


def parsed(body: str | dict) -> DiagnosticReport:
    """The answer read back with fhir.resources R4B (raises on anything FHIR does not allow)."""
    data = json.loads(body) if isinstance(body, str) else body
    return DiagnosticReport.model_validate(data)


def contained(report: DiagnosticReport, obs_id: str) -> Observation:
    (found,) = [r for r in report.contained or [] if r.id == obs_id]
    assert isinstance(found, Observation)
    return found


def components(obs: Observation, code: str) -> list:
    return [c for c in obs.component or []
            if any(coding.code == code and coding.system == fhir.CODE_SYSTEM
                   for coding in c.code.coding)]


def component(obs: Observation, code: str):
    (found,) = components(obs, code)
    return found


def codes(concept, system: str) -> list[str]:
    return [coding.code for coding in concept.coding if coding.system == system]


def label_of(obs: Observation) -> str:
    (label,) = codes(obs.valueCodeableConcept, fhir.LABEL_SYSTEM)
    (snomed,) = codes(obs.valueCodeableConcept, fhir.SNOMED)
    assert snomed == fhir.LABEL_CONCEPTS[label][0]
    return label


def assert_matches_result(obs: Observation, result: dict) -> None:
    """The Observation states what the JSON result states."""
    assert obs.status == "preliminary"
    assert label_of(obs) == result["label"]
    probability = component(obs, fhir.PROBABILITY).valueQuantity
    assert float(probability.value) == result["pneumonia_probability"]  # the same float
    assert (probability.system, probability.code) == (fhir.UCUM, "1")
    threshold = component(obs, fhir.THRESHOLD).valueQuantity
    assert float(threshold.value) == result["threshold"]
    point = result["operating_point"]
    if point is not None:
        assert component(obs, fhir.OPERATING_POINT_SITE).valueString == point["site"]
        calibrated = component(obs, fhir.CALIBRATED_BY).valueCodeableConcept
        assert codes(calibrated, fhir.CALIBRATED_BY_SYSTEM) == [point["calibrated_by"]]
    if result["subtype"] is None:
        assert components(obs, fhir.SUBTYPE) == []
    else:
        subtype = component(obs, fhir.SUBTYPE).valueCodeableConcept
        assert codes(subtype, fhir.SNOMED) == [fhir.SUBTYPE_CONCEPTS[result["subtype"]][0]]
    scope = result["scope"]
    assert (component(obs, fhir.IN_VALIDATED_POPULATION).valueBoolean
            is scope["in_validated_population"])
    reasons = [code for c in components(obs, fhir.OUTSIDE_VALIDATED_POPULATION)
               for code in codes(c.valueCodeableConcept, fhir.SCOPE_REASON_SYSTEM)]
    assert reasons == scope["reasons"]
    model = result["model"]
    assert obs.device.display == f"{model['name']} version {model['version']}"
    assert obs.device.identifier.value == f"{model['name']}/{model['version']}"
    assert f"{model['name']} version {model['version']}" in obs.method.text


def assert_anonymous(report: DiagnosticReport, job_id: str) -> None:
    data = json.loads(report.model_dump_json(exclude_none=True))
    assert "subject" not in data
    assert all("subject" not in obs for obs in data.get("contained", []))
    assert [(i.system, i.value) for i in report.identifier] == [
        (fhir.JOB_IDENTIFIER_SYSTEM, job_id)]


# --- the builder, on records made here (no services) -----------------------------------------


def succeeded(job_id: str = "0123456789abcdef0123456789abcdef", *, label: str = "PNEUMONIA",
              probability: float = 0.8123456789, subtype: str | None = "viral",
              reasons: tuple[str, ...] = (ADULT, ROTATED)) -> JobRecord:
    result = PredictionResult(
        label=label, pneumonia_probability=probability, subtype=subtype, threshold=0.4375,
        class_probabilities=ClassProbabilities(normal=0.2, bacterial=0.3, viral=0.5),
        model=ModelRef(name="cxr-pneumonia", version=7),
        operating_point=SiteOperatingPoint(site="north", threshold=0.4375,
                                           calibrated_by="site", fitted_at=utc_now()),
        scope=Scope(in_validated_population=not reasons, reasons=list(reasons)))
    finished = utc_now()
    return JobRecord(job_id=job_id, client_id="alice", site="north",
                     upload_key=f"uploads/{job_id}", status=JobStatus.SUCCEEDED,
                     created_at=finished - timedelta(seconds=2), finished_at=finished,
                     result=result)


def with_feedback(record: JobRecord, label: str, subtype: str | None = None) -> JobRecord:
    assert record.result is not None
    feedback = Feedback(label=label, subtype=subtype, reader="Dr Reader", comment=COMMENT,
                        confirmed_at=utc_now(), client_id="alice", revision=1,
                        agrees=label == record.result.label)
    return record.model_copy(update={"feedback": feedback})


def test_a_succeeded_job_is_a_preliminary_report_with_the_models_observation():
    record = succeeded()
    report = parsed(fhir.report_json(record))
    assert report.status == "preliminary"
    assert codes(report.code, fhir.LOINC) == ["18748-4"]
    assert report.issued == record.finished_at
    assert [ref.reference for ref in report.result] == ["#prediction"]
    assert report.resultsInterpreter is None
    obs = contained(report, fhir.PREDICTION_ID)
    assert_matches_result(obs, record.model_dump(mode="json")["result"])
    assert codes(obs.valueCodeableConcept, fhir.SNOMED) == ["233604007"]
    assert [n.text for n in obs.note][0].startswith("Outside the validated population")
    assert "Not yet reviewed by a reader" in report.conclusion
    assert codes(report.conclusionCode[0], fhir.LABEL_SYSTEM) == ["PNEUMONIA"]
    assert_anonymous(report, record.job_id)


def test_an_in_scope_normal_film_has_no_subtype_and_no_scope_reason():
    record = succeeded(label="NORMAL", probability=0.1, subtype=None, reasons=())
    obs = contained(parsed(fhir.report_json(record)), fhir.PREDICTION_ID)
    assert codes(obs.valueCodeableConcept, fhir.SNOMED) == ["17621005"]
    assert components(obs, fhir.SUBTYPE) == []
    assert components(obs, fhir.OUTSIDE_VALIDATED_POPULATION) == []
    assert component(obs, fhir.IN_VALIDATED_POPULATION).valueBoolean is True
    assert obs.note is None


def test_a_reader_confirming_makes_the_report_final_with_the_readers_observation():
    record = with_feedback(succeeded(), "PNEUMONIA", "bacterial")
    text = fhir.report_json(record)
    report = parsed(text)
    assert report.status == "final"
    assert [ref.reference for ref in report.result] == ["#prediction", "#reader"]
    reader = contained(report, fhir.READER_ID)
    assert reader.status == "final"
    assert label_of(reader) == "PNEUMONIA"
    assert [p.display for p in reader.performer] == ["Dr Reader"]
    assert [p.display for p in report.resultsInterpreter] == ["Dr Reader"]
    subtype = component(reader, fhir.SUBTYPE).valueCodeableConcept
    assert codes(subtype, fhir.SNOMED) == [fhir.SUBTYPE_CONCEPTS["bacterial"][0]]
    # The model's own reading is kept as it was, still unsigned.
    assert contained(report, fhir.PREDICTION_ID).status == "preliminary"
    assert "Confirmed by reader Dr Reader: PNEUMONIA" in report.conclusion
    assert "Fhircheck" not in text  # the reader's comment stays on the job


def test_a_reader_correcting_makes_the_report_amended_with_the_readers_label():
    record = with_feedback(succeeded(), "NORMAL")
    report = parsed(fhir.report_json(record))
    assert report.status == "amended"
    assert label_of(contained(report, fhir.READER_ID)) == "NORMAL"
    assert label_of(contained(report, fhir.PREDICTION_ID)) == "PNEUMONIA"
    assert codes(report.conclusionCode[0], fhir.LABEL_SYSTEM) == ["NORMAL"]
    assert components(contained(report, fhir.READER_ID), fhir.SUBTYPE) == []
    assert "Corrected by reader Dr Reader: NORMAL" in report.conclusion


def test_a_refused_film_is_a_cancelled_report_with_the_reason_and_no_observation():
    message = "The image was not analysed: it does not look like a chest radiograph."
    record = JobRecord(
        job_id="refused_job-1", client_id="alice", upload_key="uploads/refused_job-1",
        status=JobStatus.FAILED, finished_at=utc_now(),
        failure=Failure(code=NOT_A_CHEST_RADIOGRAPH_CODE, message=message,
                        reasons=[ScopeReason.NOT_CHEST_RADIOGRAPH]))
    report = parsed(fhir.report_json(record))
    assert report.status == "cancelled"
    assert report.contained is None and report.result is None
    assert report.conclusionCode is None
    assert NOT_A_CHEST_RADIOGRAPH_CODE in report.conclusion and message in report.conclusion
    # "_" is not allowed in a FHIR id: the job id is then only the identifier.
    assert report.id is None
    assert_anonymous(report, "refused_job-1")


@pytest.mark.parametrize("failure", [
    Failure(code="corrupt_image", message="The image file is damaged or incomplete."),
    Failure(code="model_unavailable", message="The model server is unavailable right now."),
    None,
])
def test_any_failed_job_is_cancelled(failure):
    record = JobRecord(job_id="failed-1", client_id="alice", upload_key="uploads/failed-1",
                       status=JobStatus.FAILED, finished_at=utc_now(), failure=failure)
    report = parsed(fhir.report_json(record))
    assert (report.status, report.contained, report.id) == ("cancelled", None, "failed-1")
    assert report.conclusion.startswith("Not analysed")
    if failure is not None:
        assert failure.code in report.conclusion and failure.message in report.conclusion


def test_the_narrative_is_the_conclusion_with_a_readers_name_escaped():
    record = succeeded()
    assert record.result is not None
    feedback = Feedback(label="NORMAL", reader="Dr <b>Angle</b> & Co", confirmed_at=utc_now(),
                        client_id="alice", revision=1, agrees=False)
    report = parsed(fhir.report_json(record.model_copy(update={"feedback": feedback})))
    assert report.text.status == "generated"
    assert "Dr &lt;b&gt;Angle&lt;/b&gt; &amp; Co" in report.text.div
    assert "<b>" not in report.text.div
    assert "Corrected by reader Dr <b>Angle</b> & Co: NORMAL" in report.conclusion


def test_an_unfinished_job_has_no_report():
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        record = JobRecord(job_id="running-1", client_id="alice", upload_key="uploads/r",
                           status=status)
        with pytest.raises(ValueError, match="finished"):
            fhir.diagnostic_report(record)


# --- the route, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server) -> Iterator[Stack]:
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp("fhir-stack")
    with scope_stack(work, redis_server.url, env={"CXR_SITE_CLIENTS": "alice:north"}) as started:
        yield started


@pytest.fixture(scope="module")
def jobs(stack, redis_server) -> JobStore:
    return JobStore(redis_server.client(), LocalStorage(stack.gateway.storage_root))


def film_png(pixels: np.ndarray, path) -> bytes:
    Image.fromarray(pixels).save(path, "PNG")
    return path.read_bytes()


def fhir_answer(http, job_id: str) -> DiagnosticReport:
    response = http.get(f"/v1/predictions/{job_id}/fhir")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == fhir.FHIR_MEDIA_TYPE
    assert response.headers["cache-control"] == "no-store"
    return parsed(response.text)


def audit_entries(gateway: GatewayProcess, job_id: str) -> list[dict]:
    lines = [json.loads(line) for line in gateway.audit_log.read_text().splitlines()]
    return [e for e in lines if e["job_id"] == job_id and e["action"] == "read_fhir"]


@pytest.fixture(scope="module")
def flagged_job(stack, tmp_path_factory) -> dict:
    """A film the model reads but flags as not upright: a succeeded job with a scope reason."""
    pixels = mark(np.asarray(Image.open(sample_xray("PNEUMONIA", 1)).convert("L")), ROTATED)
    data = film_png(pixels, tmp_path_factory.mktemp("fhir-films") / "rotated.png")
    with stack.gateway.client("alice", timeout=90) as http:
        view = finished(http, data)
    assert view["status"] == "succeeded", view
    assert view["result"]["scope"]["reasons"] == [ROTATED]
    return view


@pytest.mark.slow
def test_a_finished_jobs_report_states_the_json_result(stack, flagged_job):
    job_id = flagged_job["job_id"]
    with stack.gateway.client("alice") as http:
        report = fhir_answer(http, job_id)
        result = http.get(f"/v1/predictions/{job_id}").json()["result"]
    assert report.status == "preliminary"
    assert report.id == job_id
    assert_anonymous(report, job_id)
    obs = contained(report, fhir.PREDICTION_ID)
    assert_matches_result(obs, result)
    assert result["operating_point"]["site"] == "north"
    assert [(e["client"], e["status"]) for e in audit_entries(stack.gateway, job_id)] == [
        ("alice", 200)]


@pytest.mark.slow
def test_another_clients_job_and_an_unknown_job_are_not_found(stack, flagged_job):
    job_id = flagged_job["job_id"]
    with stack.gateway.client("bob") as http:
        response = http.get(f"/v1/predictions/{job_id}/fhir")
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "job_not_found"
        assert "PNEUMONIA" not in response.text and "NORMAL" not in response.text
        unknown = http.get("/v1/predictions/0123456789abcdef/fhir")
        assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
        bad = http.get("/v1/predictions/not%20an%20id/fhir")
        assert bad.status_code == 422, bad.text
    assert audit_entries(stack.gateway, job_id)[-1]["client"] == "bob"
    assert audit_entries(stack.gateway, job_id)[-1]["status"] == 404


@pytest.mark.slow
def test_an_unfinished_job_answers_409_job_not_finished(stack, jobs):
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        job_id = f"fhir-{status.value}-1"
        # A record as the gateway writes it, for a job no worker is ever given.
        jobs.create(JobRecord(job_id=job_id, client_id="alice", site="north",
                              upload_key=f"uploads/{job_id}", status=status))
        with stack.gateway.client("alice") as http:
            response = http.get(f"/v1/predictions/{job_id}/fhir")
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["code"] == "job_not_finished"
        assert "FHIR report" in problem["detail"]
        assert audit_entries(stack.gateway, job_id)[-1]["status"] == 409


@pytest.mark.slow
def test_a_readers_verdict_makes_the_report_final_then_amended(stack, tmp_path):
    pixels = np.asarray(Image.open(sample_xray("NORMAL", 2)).convert("L"))
    with stack.gateway.client("alice", timeout=90) as http:
        view = finished(http, film_png(pixels, tmp_path / "film.png"))
        assert view["status"] == "succeeded", view
        job_id, model_label = view["job_id"], view["result"]["label"]
        assert view["links"]["fhir"] == f"/v1/predictions/{job_id}/fhir"
        assert fhir_answer(http, job_id).status == "preliminary"

        confirm = http.post(f"/v1/predictions/{job_id}/feedback", json={
            "label": model_label, "reader": "Dr Fhir Reader", "comment": COMMENT})
        assert confirm.status_code == 201, confirm.text
        response = http.get(f"/v1/predictions/{job_id}/fhir")
        report = parsed(response.text)
        assert report.status == "final"
        reader = contained(report, fhir.READER_ID)
        assert label_of(reader) == model_label
        assert [p.display for p in reader.performer] == ["Dr Fhir Reader"]
        assert "Fhircheck" not in response.text

        correct = http.post(f"/v1/predictions/{job_id}/feedback", json={
            "label": OTHER[model_label], "reader": "Dr Second",
            "subtype": "bacterial" if OTHER[model_label] == "PNEUMONIA" else None})
        assert correct.status_code == 201, correct.text
        report = fhir_answer(http, job_id)
    assert report.status == "amended"
    assert label_of(contained(report, fhir.READER_ID)) == OTHER[model_label]
    assert label_of(contained(report, fhir.PREDICTION_ID)) == model_label
    assert [p.display for p in report.resultsInterpreter] == ["Dr Second"]
    assert codes(report.conclusionCode[0], fhir.LABEL_SYSTEM) == [OTHER[model_label]]


@pytest.mark.slow
def test_a_film_the_model_refuses_is_a_cancelled_report(stack, tmp_path):
    pixels = mark(np.asarray(Image.open(sample_xray("NORMAL", 3)).convert("L")),
                  NOT_CHEST_RADIOGRAPH)
    with stack.gateway.client("alice", timeout=90) as http:
        view = finished(http, film_png(pixels, tmp_path / "hand.png"))
        assert view["status"] == "failed", view
        report = fhir_answer(http, view["job_id"])
    assert report.status == "cancelled"
    assert report.contained is None and report.result is None
    failure = view["failure"]
    assert failure["code"] == NOT_A_CHEST_RADIOGRAPH_CODE
    assert failure["message"] in report.conclusion
    assert_anonymous(report, view["job_id"])


@pytest.mark.slow
def test_the_route_is_documented_in_openapi(stack):
    with stack.gateway.client(None) as http:
        spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/v1/predictions/{job_id}/fhir"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "404", "409", "422"}
    assert list(operation["responses"]["200"]["content"]) == [fhir.FHIR_MEDIA_TYPE]
    problem = operation["responses"]["409"]["content"]
    assert "application/problem+json" in problem
