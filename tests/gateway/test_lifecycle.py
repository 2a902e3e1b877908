"""The data life cycle end to end: a real gateway, Celery worker and model server, on local
storage and on S3 (a moto server).

A client lists its own jobs; DELETE removes a job's upload, result, heatmap and record from
storage and Redis; the retention purge (the `cxr.purge` task Celery beat sends, run by the real
worker) erases back-dated jobs through the same code. After each, storage and Redis are searched
for anything left of the job, and the audit trail for its lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery

from shared.jobs.keys import client_index_key
from shared.jobs.queue import INFERENCE_QUEUE, PURGE_TASK
from shared.jobs.store import JobStore
from shared.storage import LocalStorage, S3Storage, Storage
from tests.gateway.uploads import sample_xray
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.procs import wait_until
from tests.support.worker import CeleryWorker, start_celery_worker

pytestmark = pytest.mark.slow

RETENTION_DAYS = 1
JOB_TIMEOUT_S = 120


@dataclass
class Stack:
    backend: str
    gateway: GatewayProcess
    worker: CeleryWorker
    storage: Storage
    redis_url: str

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def jobs(self) -> JobStore:
        return JobStore(self.redis(), self.storage)

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.gateway.audit_log.read_text().splitlines()]

    def traces_of(self, job_id: str) -> list[str]:
        """Every storage key and Redis key (or Redis value) that mentions `job_id`."""
        found = [key for key in self.storage.list("") if job_id in key]
        client = self.redis()
        for key in client.scan_iter():
            name = key.decode()
            value = client.get(key) if client.type(key) == b"string" else b""
            if job_id in name or job_id.encode() in (value or b""):
                found.append(f"redis:{name}")
        return found


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request, tmp_path_factory, redis_server, shared_model_server) -> Iterator[Stack]:
    redis_server.client().flushall()  # no task left over from other modules' gateways
    work = tmp_path_factory.mktemp(f"lifecycle-{request.param}")
    storage_env: dict[str, str] = {}
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.make_bucket("cxr-lifecycle")
        storage_env = s3.service_env(bucket, prefix="jobs-root")
        storage: Storage = S3Storage(bucket, "jobs-root", s3.endpoint_url, "us-east-1")
    gateway = start_gateway(work, redis_server.url, env={
        "CXR_MODEL_SERVER_REST": shared_model_server.rest_url,
        "CXR_RATE_LIMIT_PER_MINUTE": "100000", **storage_env})
    if request.param == "local":
        storage = LocalStorage(gateway.storage_root)
    try:
        worker = start_celery_worker(
            work / "worker", redis_url=redis_server.url, storage_root=gateway.storage_root,
            model_server_target=shared_model_server.grpc_target,
            env={"CXR_RETENTION_DAYS": str(RETENTION_DAYS),
                 "CXR_AUDIT_LOG": str(gateway.audit_log), **storage_env})
    except BaseException:
        gateway.stop()
        raise
    yield Stack(request.param, gateway, worker, storage, redis_server.url)
    worker.stop()
    gateway.stop()


def finished_job(http, label: str = "PNEUMONIA", index: int = 0) -> dict:
    """Upload one sample X-ray and wait until its job has finished."""
    path = sample_xray(label, index)
    response = http.post("/v1/predictions", params={"wait": 30},
                         files={"file": (path.name, path.read_bytes())})
    assert response.status_code in (200, 202), response.text
    view = response.json()
    for _ in range(JOB_TIMEOUT_S // 30):
        if view["status"] in ("succeeded", "failed"):
            return view
        view = http.get(f"/v1/predictions/{view['job_id']}", params={"wait": 30}).json()
    raise AssertionError(f"job {view['job_id']} did not finish: {view}")


def with_files(stack: Stack, http, label: str = "PNEUMONIA", index: int = 0) -> dict:
    """A succeeded job with every file it can have: upload, result, Grad-CAM map and the overlay
    (drawn by reading the heatmap)."""
    view = finished_job(http, label, index)
    assert view["status"] == "succeeded", view
    assert http.get(view["heatmap_url"]).status_code == 200
    job_id = view["job_id"]
    kept = {key.replace(job_id, "{id}") for key in stack.storage.list("") if job_id in key}
    assert {"uploads/{id}", "results/{id}.json", "heatmaps/{id}.png",
            "heatmaps/{id}.attention.npy", "jobs/{id}.json"} <= kept, kept
    assert any(key.startswith("jobs-by-client/c-alice/") for key in kept), kept
    return view


def test_a_client_lists_only_its_own_jobs_newest_first_in_pages(stack):
    with stack.gateway.client("carol", timeout=60) as carol, \
            stack.gateway.client("bob", timeout=60) as bob:
        made = [finished_job(carol, "NORMAL", i)["job_id"] for i in range(3)]
        bobs = finished_job(bob, "NORMAL", 3)["job_id"]

        first = carol.get("/v1/predictions", params={"limit": 2})
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "no-store"
        page = first.json()
        assert [item["job_id"] for item in page["items"]] == made[::-1][:2]
        assert page["items"][0]["links"]["self"] == f"/v1/predictions/{made[2]}"
        second = carol.get("/v1/predictions",
                           params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [item["job_id"] for item in second["items"]] == [made[0]]
        assert second["next_cursor"] is None

        listed = {item["job_id"] for item in carol.get("/v1/predictions").json()["items"]}
        assert listed == set(made) and bobs not in listed
        assert [i["job_id"] for i in bob.get("/v1/predictions").json()["items"]] == [bobs]

        succeeded = carol.get("/v1/predictions", params={"status": "succeeded"}).json()
        assert {item["job_id"] for item in succeeded["items"]} == set(made)
        assert carol.get("/v1/predictions", params={"status": "failed"}).json()["items"] == []

        created = [carol.get(f"/v1/predictions/{job}").json()["created_at"] for job in made]
        window = carol.get("/v1/predictions", params={
            "created_after": created[1], "created_before": created[2]}).json()
        assert [item["job_id"] for item in window["items"]] == [made[1]]
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert carol.get("/v1/predictions",
                         params={"created_after": future}).json()["items"] == []

        for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "../jobs"},
                    {"status": "done"}, {"created_after": "yesterday"},
                    {"created_after": "202111919"}, {"created_before": "1700000000"}):
            refused = carol.get("/v1/predictions", params=bad)
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["code"] == "invalid_request"
    actions = [(e["client"], e["action"]) for e in stack.audit()]
    assert ("carol", "list_jobs") in actions


def test_the_list_and_delete_are_in_the_openapi_schema(stack):
    with stack.gateway.client(None) as http:
        paths = http.get("/openapi.json").json()["paths"]
    listing = paths["/v1/predictions"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "limit", "cursor", "status", "created_after", "created_before"}
    delete = paths["/v1/predictions/{job_id}"]["delete"]
    assert {"204", "404", "409"} <= set(delete["responses"])
    assert "404" in delete["description"] or "404" in json.dumps(delete)


def test_delete_removes_every_file_and_record_and_is_audited(stack):
    with stack.gateway.client("alice", timeout=60) as alice, \
            stack.gateway.client("bob", timeout=60) as bob:
        view = with_files(stack, alice)
        job_id = view["job_id"]

        # another client's job is simply not found, and stays
        assert bob.delete(f"/v1/predictions/{job_id}").status_code == 404
        assert alice.get(f"/v1/predictions/{job_id}").status_code == 200

        response = alice.delete(f"/v1/predictions/{job_id}")
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert stack.traces_of(job_id) == []
        assert alice.get(f"/v1/predictions/{job_id}").status_code == 404
        assert alice.get(f"/v1/predictions/{job_id}/heatmap").status_code == 404
        listed = alice.get("/v1/predictions").json()["items"]
        assert job_id not in {item["job_id"] for item in listed}
        again = alice.delete(f"/v1/predictions/{job_id}")  # idempotent: nothing more to remove
        assert again.status_code == 404 and again.json()["code"] == "job_not_found"

    deletes = [(e["client"], e["status"], e["address"]) for e in stack.audit()
               if e["action"] == "delete" and e["job_id"] == job_id]
    assert deletes == [("bob", 404, "127.0.0.1"), ("alice", 204, "127.0.0.1"),
                       ("alice", 404, "127.0.0.1")]


def backdate(stack: Stack, job_id: str, days: int) -> None:
    """Make the job look `days` older: its record and its client-index marker."""
    jobs = stack.jobs()
    record = jobs.get(job_id)
    older = record.model_copy(update={"created_at": record.created_at - timedelta(days=days)})
    stack.storage.put(client_index_key(older), b"")
    jobs.save(older)
    stack.storage.delete(client_index_key(record))


def test_the_scheduled_purge_erases_old_jobs_and_keeps_recent_ones(stack):
    with stack.gateway.client("alice", timeout=60) as alice:
        old = [with_files(stack, alice, "NORMAL", i)["job_id"] for i in (4, 5)]
        recent = with_files(stack, alice, "NORMAL", 6)["job_id"]
    for job_id in old:
        backdate(stack, job_id, RETENTION_DAYS + 2)

    # What Celery beat sends on CXR_RETENTION_PURGE_CRON (services.trainer.celery_app).
    sender = Celery("test-beat", broker=stack.redis_url, set_as_current=False)
    try:
        sender.send_task(PURGE_TASK, queue=INFERENCE_QUEUE)
    finally:
        sender.close()

    wait_until(lambda: not any(stack.traces_of(job_id) for job_id in old), 60,
               "purge of the back-dated jobs", stack.worker.process)
    assert stack.traces_of(recent), "the recent job was purged too"
    with stack.gateway.client("alice") as alice:
        assert alice.get(f"/v1/predictions/{recent}").json()["status"] == "succeeded"
        for job_id in old:
            assert alice.get(f"/v1/predictions/{job_id}").status_code == 404
        listed = {item["job_id"] for item in alice.get("/v1/predictions").json()["items"]}
        assert recent in listed and not listed & set(old)

    purges = {e["job_id"]: e for e in stack.audit() if e["action"] == "purge"}
    assert set(old) <= set(purges) and recent not in purges
    assert all(purges[job]["owner"] == "alice" and purges[job]["client"] == "retention"
               for job in old)
