"""Bad input against a real gateway process over HTTPS (its own self-signed certificate, as in
development): every kind in the corpus gets a 4xx problem that names what is wrong, nothing is
stored or queued for it, nothing is written outside the storage root, and the gateway still
answers afterwards. Then authentication: every protected operation refuses a missing or wrong
key, one client never sees another's job, result or heatmap, and no key reaches a log."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread

from shared.imaging import DecodeLimits, decode_xray
from shared.jobs.keys import client_index_key
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult
from shared.storage import LocalStorage
from tests.reliability.corpus import (
    TRAVERSAL_NAME,
    BadInput,
    RequestSpec,
    accepted_inputs,
    build_corpus,
    upload,
    valid_jpeg,
)
from tests.support.gateway import GatewayProcess, start_gateway

PROBLEM = "application/problem+json"
MAX_UPLOAD_BYTES = 2_000_000
CORPUS = build_corpus(MAX_UPLOAD_BYTES)
WRONG_KEYS = ["not-a-key-at-all-0000", "ALICE-KEY-0123456789", "alice-key-01234567890"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server) -> Iterator[GatewayProcess]:
    """A TLS gateway (no worker: accepted jobs stay queued) with a 2 MB upload limit and a rate
    limit high enough that the corpus tests the input, not the limiter."""
    process = start_gateway(tmp_path_factory.mktemp("bad-input"), redis_server.url, tls=True,
                            env={"CXR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
                                 "CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    yield process
    process.stop()


def send(http: httpx.Client, spec: RequestSpec) -> httpx.Response:
    return http.request(spec.method, spec.path, content=spec.content, headers=spec.headers)


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def queued(redis_server) -> int:
    return redis_server.client().llen("inference")


def assert_problem(response: httpx.Response, status: int, code: str,
                   mentions: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"].endswith(code) and body["title"] and body["instance"], body
    assert " object at 0x" not in body["detail"], body["detail"]  # no Python reprs
    if mentions is not None:
        assert mentions.lower() in body["detail"].lower(), body["detail"]
    return body


def test_the_corpus_is_large_and_every_kind_is_distinct():
    kinds = [case.kind for case in CORPUS]
    assert len(kinds) >= 30 and len(set(kinds)) == len(kinds)
    assert all(400 <= case.status < 500 for case in CORPUS)
    assert len({case.code for case in CORPUS}) >= 12


@pytest.mark.parametrize("case", CORPUS, ids=[case.kind for case in CORPUS])
def test_bad_input_gets_a_problem_naming_it_and_stores_nothing(gateway, redis_server,
                                                               case: BadInput):
    stored_before, queued_before = files_under(gateway.storage_root), queued(redis_server)
    with gateway.client() as http:
        response = send(http, case.request())
    assert_problem(response, case.status, case.code, case.detail_mentions)
    assert files_under(gateway.storage_root) == stored_before
    assert queued(redis_server) == queued_before


def test_after_the_whole_corpus_the_gateway_serves_and_wrote_only_into_storage(
        gateway, redis_server, tmp_path_factory):
    work_dir = gateway.storage_root.parent
    outside_before = {f for f in files_under(work_dir) if not f.startswith("storage/")}
    stored_before = files_under(gateway.storage_root)
    with gateway.client() as http:
        answers = [send(http, case.request()).status_code for case in CORPUS]
        assert all(400 <= status < 500 for status in answers), answers
        # Nothing the corpus sent was stored, under any name.
        assert files_under(gateway.storage_root) == stored_before
        assert http.get("/healthz").json() == {"status": "ok"}
        # A valid upload with a hostile name is stored under a generated key only.
        data = valid_jpeg()
        accepted = send(http, upload(data, filename=b"..\\..\\x\x00/" + TRAVERSAL_NAME.encode()))
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        assert http.get(f"/v1/predictions/{job_id}").json()["status"] == "queued"
    new_objects = files_under(gateway.storage_root) - stored_before
    record = JobRecord.model_validate_json(
        (gateway.storage_root / "jobs" / f"{job_id}.json").read_bytes())
    # the upload, its record, the open-jobs marker (no worker runs here: the job stays queued)
    # and the client's job-list marker
    assert new_objects == {f"uploads/{job_id}", f"jobs/{job_id}.json", f"jobs-open/{job_id}",
                           client_index_key(record)}
    assert (gateway.storage_root / "uploads" / job_id).read_bytes() == data
    assert record.filename == "passwd"
    # Outside storage only the logs the gateway always writes may have appeared.
    outside_after = {f for f in files_under(work_dir) if not f.startswith("storage/")}
    assert outside_after - outside_before <= {"audit.log", f"gateway-{gateway.port}.log"}
    # No part of the hostile names became a file or folder, in the gateway's folder or anywhere
    # under the session's temporary folders.
    assert not [p for p in work_dir.rglob("*") if p.name in ("passwd", "etc", "x", "..")]
    assert not list(tmp_path_factory.getbasetemp().rglob("passwd"))


@pytest.mark.parametrize(("kind", "make", "facts"), accepted_inputs(),
                         ids=[kind for kind, _make, _facts in accepted_inputs()])
def test_unusual_but_valid_images_are_accepted(gateway, kind, make, facts):
    data = make()
    with gateway.client() as http:
        response = send(http, upload(data, filename=b"unusual.img"))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    record = JobRecord.model_validate_json(
        (gateway.storage_root / "jobs" / f"{job_id}.json").read_bytes())
    assert {key: record.extra.get(key) for key in facts} == facts
    stored = (gateway.storage_root / "uploads" / job_id).read_bytes()
    if record.extra["format"] == "dicom":  # stored de-identified: the same image, other header
        limits = DecodeLimits(min_side=1)
        assert np.array_equal(decode_xray(stored, limits).pixels, decode_xray(data, limits).pixels)
        assert dcmread(io.BytesIO(stored)).PatientIdentityRemoved == "YES"
    else:
        assert stored == data


# --- authentication and isolation ---------------------------------------------------------------


def protected_operations(gateway: GatewayProcess) -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI schema that needs a key."""
    with gateway.client(as_client=None) as http:
        paths = http.get("/openapi.json").json()["paths"]
    return sorted((method.upper(), path) for path, item in paths.items()
                  for method in item if path.startswith(("/v1/", "/dicomweb/")))


def test_every_protected_operation_refuses_missing_and_wrong_keys(gateway):
    operations = protected_operations(gateway)
    assert {("POST", "/v1/predictions"), ("GET", "/v1/predictions/{job_id}"),
            ("GET", "/v1/predictions/{job_id}/heatmap"), ("GET", "/v1/models/current"),
            ("POST", "/dicomweb/studies")} <= set(operations)
    refusals = [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
                {"Authorization": "Token " + gateway.keys["alice"]},
                {"Authorization": f"Basic {gateway.keys['alice']}"},
                {"Authorization": gateway.keys["alice"]},
                *({"Authorization": f"Bearer {key}"} for key in WRONG_KEYS)]
    body = upload(valid_jpeg())
    stored_before = files_under(gateway.storage_root)
    refused = 0
    with gateway.client(as_client=None) as http:
        for method, path in operations:
            url = path.replace("{job_id}", "0" * 32)
            for headers in refusals:
                response = http.request(method, url, content=body.content,
                                        headers={**body.headers, **headers})
                assert_problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
                refused += 1
    assert refused == len(operations) * len(refusals)
    assert files_under(gateway.storage_root) == stored_before


def _finish_with_heatmap(gateway: GatewayProcess, redis_server, job_id: str) -> bytes:
    """Do what the worker does on success: a result, a heatmap object, the record updated."""
    storage = LocalStorage(gateway.storage_root)
    store = JobStore(redis_server.client(), storage)
    heatmap = b"\x89PNG\r\n\x1a\n heatmap of " + job_id.encode()
    storage.put(f"heatmaps/{job_id}.png", heatmap, content_type="image/png")
    store.mark_running(job_id)
    store.mark_succeeded(job_id, PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.9,
        class_probabilities=ClassProbabilities(normal=0.1, bacterial=0.6, viral=0.3),
        subtype="bacterial", threshold=0.5, model=ModelRef(name="cxr-pneumonia", version=1)),
        heatmap_key=f"heatmaps/{job_id}.png")
    return heatmap


def test_a_client_never_sees_another_clients_job_result_or_heatmap(gateway, redis_server):
    with gateway.client("alice") as alice:
        job_id = send(alice, upload(valid_jpeg())).json()["job_id"]
        heatmap = _finish_with_heatmap(gateway, redis_server, job_id)
        view = alice.get(f"/v1/predictions/{job_id}").json()
        assert view["status"] == "succeeded" and view["result"]["label"] == "PNEUMONIA"
        own = alice.get(f"/v1/predictions/{job_id}/heatmap")
        assert own.status_code == 200 and own.content == heatmap
        unknown = alice.get(f"/v1/predictions/{'f' * 32}").json()
    for other in ("bob", "carol"):
        with gateway.client(other) as http:
            for path in (f"/v1/predictions/{job_id}", f"/v1/predictions/{job_id}?wait=1",
                         f"/v1/predictions/{job_id}/heatmap"):
                body = assert_problem(http.get(path), 404, "job_not_found")
                # The same answer as for an id that does not exist: nothing tells them apart.
                assert {k: v for k, v in body.items() if k != "instance"} == \
                    {k: v for k, v in unknown.items() if k != "instance"}
                assert "alice" not in str(body)


def test_no_api_key_reaches_the_logs(gateway):
    """Keys, valid and wrong, are sent on every route; neither the process log nor the audit
    log holds one, while the audit log does name the clients."""
    with gateway.client(as_client=None) as http:
        for key in [*gateway.keys.values(), *WRONG_KEYS]:
            headers = {"Authorization": f"Bearer {key}"}
            http.get("/v1/models/current", headers=headers)
            http.get("/v1/predictions/no-such-job", headers=headers)
            send(http, RequestSpec("POST", "/v1/predictions", b"", headers))
            send(http, upload(b"not an image", headers=headers))
    logs = {"audit": gateway.audit_log.read_text(),
            "process": gateway.process.log_path.read_text(errors="replace")}
    assert '"client": "bob"' in logs["audit"] and '"code": "not_an_image"' in logs["audit"]
    for name, text in logs.items():
        for key in [*gateway.keys.values(), *WRONG_KEYS]:
            assert key not in text, f"an API key appears in the {name} log"
