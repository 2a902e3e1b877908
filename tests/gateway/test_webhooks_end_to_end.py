"""Webhooks end to end: HTTPS gateway -> Redis -> Celery worker -> model server, and the worker's
signed POST to a local HTTPS receiver that is down at first and comes up while the worker retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from tests.gateway.uploads import sample_xray
from tests.support.gateway import start_gateway
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import start_celery_worker
from tests.worker.jobs import metric_value

pytestmark = pytest.mark.slow

SECRET = "alice-end-to-end-webhook-secret"


def webhook_lines(audit_log: Path, job_id: str) -> list[dict]:
    if not audit_log.exists():
        return []
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    return [line for line in lines
            if line["action"] == "webhook_delivery" and line["job_id"] == job_id]


def wait_for_lines(audit_log: Path, job_id: str, outcome: str, timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = webhook_lines(audit_log, job_id)
        if any(line["outcome"] == outcome for line in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"no {outcome} webhook line for {job_id}: "
                         f"{webhook_lines(audit_log, job_id)}")


def upload(http, label: str, index: int) -> dict:
    path = sample_xray(label, index)
    response = http.post("/v1/predictions", params={"wait": 60},
                         files={"file": (path.name, path.read_bytes())})
    assert response.status_code in (200, 202), response.text
    return response.json()


def test_the_final_state_reaches_a_receiver_that_was_down(tmp_path, redis_url,
                                                          shared_model_server):
    receiver = WebhookReceiver(tmp_path / "receiver-tls")  # not listening yet
    worker_audit = tmp_path / "worker-audit.log"
    gateway = start_gateway(tmp_path / "gateway", redis_url, tls=True, env={
        "CXR_RATE_LIMIT_PER_MINUTE": "1000"})
    try:
        worker = start_celery_worker(
            tmp_path / "worker", redis_url=redis_url, storage_root=gateway.storage_root,
            model_server_target=shared_model_server.grpc_target, env={
                "CXR_AUDIT_LOG": str(worker_audit),
                "CXR_WEBHOOK_URLS": f"alice:{receiver.url('/cxr/finished')}",
                "CXR_WEBHOOK_SECRETS": f"alice:{SECRET}",
                "CXR_WEBHOOK_CA_BUNDLE": str(receiver.ca_file),
                "CXR_WEBHOOK_BACKOFF_S": "1", "CXR_WEBHOOK_BACKOFF_MAX_S": "2"})
    except BaseException:
        gateway.stop()
        raise
    try:
        with gateway.client("bob") as bob_http:
            bob_job = upload(bob_http, "NORMAL", 0)["job_id"]
        with gateway.client("alice") as http:
            job_id = upload(http, "PNEUMONIA", 1)["job_id"]
            # The worker finds nobody listening, and retries.
            first = wait_for_lines(worker_audit, job_id, "retry")
            assert first[0]["status"] == 0 and first[0]["error"].startswith("no answer")
            receiver.start()
            (hit,) = receiver.wait_for(1, timeout=60)
            lines = wait_for_lines(worker_audit, job_id, "delivered")
            final = http.get(f"/v1/predictions/{job_id}").json()

        assert hit.path == "/cxr/finished"
        assert json.loads(hit.body) == final  # the same JSON as GET /v1/predictions/{id}
        assert final["status"] == "succeeded"
        timestamp = hit.headers["X-CXR-Timestamp"]
        mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + hit.body, hashlib.sha256)
        assert hit.headers["X-CXR-Signature"] == f"sha256={mac.hexdigest()}"
        assert abs(int(timestamp) - hit.at) < 30

        assert all(line["client"] == "alice" for line in lines)
        assert [line["outcome"] for line in lines[:-1]] == ["retry"] * (len(lines) - 1)
        assert (lines[-1]["outcome"], lines[-1]["status"]) == ("delivered", 200)
        assert [line["attempt"] for line in lines] == list(range(1, len(lines) + 1))
        assert len({line["delivery_id"] for line in lines}) == 1
        assert hit.headers["X-CXR-Delivery"] == lines[0]["delivery_id"]

        # Bob has no webhook: nothing was sent or tried for his job.
        assert webhook_lines(worker_audit, bob_job) == []
        assert all(json.loads(h.body)["job_id"] == job_id for h in receiver.received)

        metrics = worker.metrics_text()
        assert metric_value(metrics, "cxr_worker_webhook_deliveries_total",
                            outcome="delivered") == 1
        assert metric_value(metrics, "cxr_worker_webhook_attempts_total",
                            result="no_answer") == len(lines) - 1
        assert metric_value(metrics, "cxr_worker_webhook_retries_total") == len(lines) - 1
    finally:
        receiver.stop()
        worker.stop()
        gateway.stop()
