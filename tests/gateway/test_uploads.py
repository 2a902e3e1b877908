"""Uploads through a real gateway process on a real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from shared.dicom_intake.deidentify import replacement_uid
from shared.jobs.records import JobRecord
from tests.gateway.uploads import sample_xray, stream_until_answered
from tests.shared import xray_files

PROBLEM = "application/problem+json"


def _queued_tasks(redis_client, queue: str = "inference") -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the Celery queue on Redis."""
    tasks = []
    for raw in redis_client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append((message["headers"]["task"], args))
    return tasks


@pytest.fixture
def gateway(fresh_module_gateway):
    return fresh_module_gateway


def _uploads(gateway) -> set[str]:
    folder = gateway.storage_root / "uploads"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    return body


def test_upload_stores_the_file_records_the_job_and_queues_it(gateway, redis_server):
    data = sample_xray().read_bytes()
    with gateway.client() as http:
        response = http.post("/v1/predictions", files={"file": ("../../etc/passwd", data)})
        assert response.status_code == 202, response.text
        accepted = response.json()
        job_id = accepted["job_id"]
        assert accepted["status"] == "queued"
        assert response.headers["location"] == f"/v1/predictions/{job_id}"

        stored = (gateway.storage_root / "uploads" / job_id).read_bytes()
        assert stored == data
        record = JobRecord.model_validate_json(
            (gateway.storage_root / "jobs" / f"{job_id}.json").read_bytes())
        assert record.client_id == "alice" and record.size_bytes == len(data)
        assert record.filename == "passwd"  # display only, never a path
        assert record.content_type == "image/jpeg"
        assert ("cxr.predict", [job_id]) in _queued_tasks(redis_server.client())

        view = http.get(f"/v1/predictions/{job_id}").json()
        assert view["status"] == "queued" and view["result"] is None
        assert view["heatmap_url"] is None
        _assert_problem(http.get(f"/v1/predictions/{job_id}/heatmap"), 404, "heatmap_not_ready")
    assert not list(gateway.storage_root.rglob("passwd*"))


def test_keys_are_required_and_checked(gateway):
    with gateway.client(as_client=None) as http:
        missing = http.post("/v1/predictions", files={"file": ("x.jpeg", b"\xff\xd8\xff")})
        body = _assert_problem(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "key" in body["detail"]
        wrong = http.get("/v1/models/current", headers={"Authorization": "Bearer not-a-key"})
        _assert_problem(wrong, 401, "unauthorized")
        basic = http.get("/v1/predictions/abc", headers={"Authorization": "Basic YWxpY2U6eA=="})
        _assert_problem(basic, 401, "unauthorized")
        assert http.get("/healthz").status_code == 200  # probes stay open


def test_a_client_cannot_see_another_clients_job(gateway):
    with gateway.client("alice") as alice, gateway.client("bob") as bob:
        job_id = alice.post("/v1/predictions",
                            files={"file": ("a.jpeg", sample_xray().read_bytes())}).json()["job_id"]
        assert alice.get(f"/v1/predictions/{job_id}").status_code == 200
        _assert_problem(bob.get(f"/v1/predictions/{job_id}"), 404, "job_not_found")
        _assert_problem(bob.get(f"/v1/predictions/{job_id}/heatmap"), 404, "job_not_found")
        _assert_problem(bob.get("/v1/predictions/no-such-job"), 404, "job_not_found")


def test_idempotency_key_returns_the_same_job_and_refuses_other_bytes(gateway, redis_server):
    first_bytes = sample_xray(index=0).read_bytes()
    with gateway.client("alice") as alice, gateway.client("bob") as bob:
        headers = {"Idempotency-Key": "upload-42"}
        first = alice.post("/v1/predictions", files={"file": ("a.jpeg", first_bytes)},
                           headers=headers)
        again = alice.post("/v1/predictions", files={"file": ("a.jpeg", first_bytes)},
                           headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["job_id"] == again.json()["job_id"]
        assert again.headers["location"] == first.headers["location"]
        other = alice.post("/v1/predictions",
                           files={"file": ("b.jpeg", sample_xray(index=1).read_bytes())},
                           headers=headers)
        _assert_problem(other, 409, "idempotency_key_reused")
        # The same key from another client is that client's own key.
        bobs = bob.post("/v1/predictions", files={"file": ("a.jpeg", first_bytes)}, headers=headers)
        assert bobs.status_code == 202 and bobs.json()["job_id"] != first.json()["job_id"]
        bad_key = alice.post("/v1/predictions", files={"file": ("a.jpeg", first_bytes)},
                             headers={"Idempotency-Key": "has space"})
        _assert_problem(bad_key, 400, "invalid_idempotency_key")
    job_ids = [args[0] for _task, args in _queued_tasks(redis_server.client())]
    assert job_ids.count(first.json()["job_id"]) == 1


@pytest.mark.parametrize(("name", "make", "status", "code"), [
    ("random.bin", lambda: np.random.default_rng(0).bytes(4096), 415, "not_an_image"),
    ("notes.png", lambda: b"Patient notes: cough for three days.\n" * 20, 415, "not_an_image"),
    ("scan.gif", lambda: xray_files.encode(
        __import__("PIL.Image").Image.new("L", (128, 128)), "GIF"), 415, "unsupported_format"),
    ("cut.jpeg", lambda: sample_xray().read_bytes()[:2000], 422, "corrupt_image"),
    ("report.dcm", xray_files.dicom_without_pixels, 422, "invalid_dicom"),
    ("tiny.png", lambda: xray_files.png_bytes(xray_files.gradient(16, 16)), 422,
     "image_too_small"),
    ("bomb.png", lambda: xray_files.png_with_declared_size(40000, 40000), 413, "image_too_large"),
    ("empty.png", lambda: b"", 400, "empty_upload"),
])
def test_bad_files_get_typed_problems_and_no_job(gateway, redis_server, name, make, status, code):
    before = _uploads(gateway)
    with gateway.client() as http:
        response = http.post("/v1/predictions", files={"file": (name, make())})
    _assert_problem(response, status, code)
    assert _uploads(gateway) == before
    assert _queued_tasks(redis_server.client()) == []


def test_malformed_requests_are_problems_not_crashes(gateway):
    with gateway.client() as http:
        _assert_problem(http.post("/v1/predictions"), 422, "invalid_request")
        _assert_problem(http.post("/v1/predictions", content=b"{}",
                                  headers={"Content-Type": "application/json"}),
                        422, "invalid_request")
        _assert_problem(http.get("/v1/predictions/abc", params={"wait": "soon"}), 422,
                        "invalid_request")
        _assert_problem(http.get("/v1/predictions/a%20b"), 422, "invalid_request")
        _assert_problem(http.delete("/v1/predictions"), 405, "method_not_allowed")
        _assert_problem(http.get("/v2/nothing"), 404, "not_found")


def test_declared_content_length_over_the_limit_is_refused_at_once(gateway):
    # Only the headers are sent: the answer cannot depend on reading the body.
    response, sent = stream_until_answered(gateway.port, {
        "Authorization": f"Bearer {gateway.keys['alice']}", "Content-Length": "900000000"},
        chunks=0, chunk_size=0)
    assert sent == 0
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"upload_too_large" in response or b"application/problem+json" in response


def test_streamed_body_over_the_limit_is_refused_before_it_ends(gateway):
    """The module's gateway accepts 2 MB; a 64 MiB body is answered 413 after a few MB at most."""
    before = _uploads(gateway)
    chunks, chunk_size = 1024, 64 * 1024
    response, sent = stream_until_answered(
        gateway.port, {"Authorization": f"Bearer {gateway.keys['alice']}"},
        chunks=chunks, chunk_size=chunk_size)
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"application/problem+json" in response
    assert sent < 8 * 1024 * 1024, f"sent {sent} of {chunks * chunk_size} bytes before the answer"
    assert _uploads(gateway) == before


def test_unauthenticated_upload_is_refused_before_the_body_is_read(gateway):
    response, sent = stream_until_answered(gateway.port, {}, chunks=1024, chunk_size=64 * 1024)
    assert response.startswith(b"HTTP/1.1 401"), response[:300]
    assert sent < 1024 * 1024


def test_rate_limit_answers_429_with_retry_after(gateway):
    """The module's gateway allows 20 requests a minute per client."""
    import time

    # The window is the wall-clock minute: the 21 requests go out within one (a burst that
    # straddles two minutes splits its count between them).
    left = 60 - time.time() % 60
    if left < 20:
        time.sleep(left + 0.5)
    with gateway.client("carol") as carol, gateway.client("bob") as bob:
        statuses = [carol.get("/v1/predictions/none").status_code for _ in range(20)]
        limited = carol.get("/v1/predictions/none")
        assert set(statuses) == {404}
        _assert_problem(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        assert bob.get("/v1/predictions/none").status_code == 404  # counted per client


def test_long_poll_waits_for_the_job_to_finish(gateway, redis_server):
    """A job finished by someone else while the client waits is answered before the wait ends."""
    import threading
    import time

    from shared.jobs.store import JobStore
    from shared.schemas import Failure
    from shared.storage import LocalStorage

    with gateway.client() as http:
        job_id = http.post("/v1/predictions",
                           files={"file": ("a.jpeg", sample_xray().read_bytes())}).json()["job_id"]
        store = JobStore(redis_server.client(), LocalStorage(gateway.storage_root))
        timer = threading.Timer(1.5, store.mark_failed,
                                args=(job_id, Failure(code="test_failure", message="stopped")))
        timer.start()
        started = time.monotonic()
        view = http.get(f"/v1/predictions/{job_id}", params={"wait": 25}).json()
        waited = time.monotonic() - started
        timer.join()
    assert view["status"] == "failed"
    assert view["failure"] == {"code": "test_failure", "message": "stopped", "reasons": None}
    assert waited < 20  # answered when the job finished, not at the end of the wait


def test_upload_with_wait_answers_once_the_job_has_finished(gateway, redis_server):
    """POST ?wait= gives 200 with the finished job, or 202 with the job still queued."""
    import threading
    import time

    from shared.jobs.store import JobStore
    from shared.schemas import Failure
    from shared.storage import LocalStorage

    store = JobStore(redis_server.client(), LocalStorage(gateway.storage_root))

    def finish_the_queued_job() -> None:  # standing in for a worker
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tasks = _queued_tasks(redis_server.client())
            if tasks:
                store.mark_failed(tasks[0][1][0], Failure(code="test_failure", message="stopped"))
                return
            time.sleep(0.05)

    finisher = threading.Thread(target=finish_the_queued_job)
    finisher.start()
    with gateway.client() as http:
        finished = http.post("/v1/predictions", params={"wait": 25},
                             files={"file": ("a.jpeg", sample_xray().read_bytes())})
        finisher.join()
        assert finished.status_code == 200, finished.text
        body = finished.json()
        assert body["status"] == "failed"
        assert body["failure"] == {"code": "test_failure", "message": "stopped", "reasons": None}
        assert finished.headers["location"] == f"/v1/predictions/{body['job_id']}"

        started = time.monotonic()
        pending = http.post("/v1/predictions", params={"wait": 0.5},
                            files={"file": ("b.jpeg", sample_xray().read_bytes())})
        assert pending.status_code == 202, pending.text
        assert pending.json()["status"] == "queued" and time.monotonic() - started >= 0.5
        assert http.post("/v1/predictions", params={"wait": -1},
                         files={"file": ("c.jpeg", sample_xray().read_bytes())}
                         ).status_code == 422


def test_concurrent_uploads_with_one_idempotency_key_make_one_job(gateway, redis_url, redis_server):
    """Redis is flushed first (`redis_url`), so the module's 20-a-minute limit starts afresh."""
    from concurrent.futures import ThreadPoolExecutor

    data = sample_xray(index=2).read_bytes()

    def upload(_index: int) -> str:
        with gateway.client("alice") as http:
            response = http.post("/v1/predictions", files={"file": ("a.jpeg", data)},
                                 headers={"Idempotency-Key": "same-moment"})
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        job_ids = set(pool.map(upload, range(4)))
    assert len(job_ids) == 1
    queued = [args[0] for _task, args in _queued_tasks(redis_server.client())]
    assert queued == list(job_ids)


def test_dicom_upload_is_recorded_with_the_de_identified_copys_uids(gateway):
    dataset = xray_files.xray_dataset(xray_files.gradient(128, 160, 0, 4000, np.uint16))
    with gateway.client() as http:
        response = http.post("/v1/predictions",
                             files={"file": ("chest.dcm", xray_files.dicom_bytes(dataset))})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    record = JobRecord.model_validate_json(
        (gateway.storage_root / "jobs" / f"{job_id}.json").read_bytes())
    assert record.content_type == "application/dicom"
    assert record.extra["format"] == "dicom"
    assert record.extra["SOPInstanceUID"] == replacement_uid(dataset.SOPInstanceUID)
    assert record.extra["StudyInstanceUID"] == replacement_uid(dataset.StudyInstanceUID)
    assert dataset.SOPInstanceUID not in record.model_dump_json()
