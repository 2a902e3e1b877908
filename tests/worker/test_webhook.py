"""Webhook deliveries against a real local HTTPS receiver, real Redis and local storage.

The task runs in this process through Celery's `apply` (retries run at once, without their
countdown); the worker process, the backoff and a receiver that is down then up are covered end
to end in tests/gateway/test_webhooks_end_to_end.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import ValidationError

from services.worker import webhook
from services.worker.settings import WorkerSettings, get_settings
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, Failure, ModelRef, PredictionResult
from shared.storage import LocalStorage
from shared.task_retries import TransientFailure
from tests.support.webhook_receiver import WebhookReceiver

SECRET = "alice-webhook-secret-0123456789"


@dataclass
class Setup:
    receiver: WebhookReceiver
    jobs: JobStore
    redis: redis.Redis
    audit_log: Path

    def audit_lines(self, job_id: str) -> list[dict]:
        lines = [json.loads(line) for line in self.audit_log.read_text().splitlines()]
        return [line for line in lines
                if line["action"] == "webhook_delivery" and line["job_id"] == job_id]


def configure(monkeypatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    webhook.reset_webhook_deps()


@pytest.fixture
def setup(monkeypatch, tmp_path, redis_url, webhook_receiver) -> Iterator[Setup]:
    audit_log = tmp_path / "audit.log"
    configure(monkeypatch, {
        "CXR_ENV": "test", "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(tmp_path / "storage"), "CXR_AUDIT_LOG": str(audit_log),
        "CXR_WEBHOOK_URLS": f"alice:{webhook_receiver.url()}",
        "CXR_WEBHOOK_SECRETS": f"alice:{SECRET}",
        "CXR_WEBHOOK_CA_BUNDLE": str(webhook_receiver.ca_file)})
    monkeypatch.setattr(webhook.send_webhook, "max_retries", 3)
    client = redis.Redis.from_url(redis_url)
    yield Setup(webhook_receiver, JobStore(client, LocalStorage(tmp_path / "storage")), client,
                audit_log)
    webhook.reset_webhook_deps()
    get_settings.cache_clear()


def succeeded_job(jobs: JobStore, client: str = "alice") -> JobRecord:
    record = JobRecord(job_id=f"job-{time.time_ns()}", client_id=client, upload_key="uploads/x",
                       filename="film.png", size_bytes=1234)
    jobs.create(record)
    result = PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.91,
        class_probabilities=ClassProbabilities(normal=0.09, bacterial=0.6, viral=0.31),
        subtype="bacterial", threshold=0.5, model=ModelRef(name="cxr-pneumonia", version=3))
    jobs.mark_running(record.job_id)
    return jobs.mark_succeeded(record.job_id, result, heatmap_key="heatmaps/x.png")


def expected_signature(timestamp: str, body: bytes) -> str:
    mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def run_task(job_id: str, delivery_id: str = "delivery-1") -> str:
    return webhook.send_webhook.apply(args=[job_id, delivery_id]).get()


def run_out_of_retries(job_id: str) -> None:
    """Run the task until Celery gives it up: its last failure is the one it was retried for."""
    outcome = webhook.send_webhook.apply(args=[job_id, "delivery-1"])
    assert outcome.failed() and isinstance(outcome.result, TransientFailure)


def test_final_state_is_posted_signed(setup):
    setup.receiver.start()
    record = succeeded_job(setup.jobs)

    assert run_task(record.job_id) == "delivered"

    (hit,) = setup.receiver.received
    assert hit.path == "/hooks/cxr"
    assert hit.headers["X-CXR-Event"] == "prediction.finished"
    assert hit.headers["X-CXR-Delivery"] == "delivery-1"
    assert hit.headers["Content-Type"] == "application/json"
    timestamp = hit.headers["X-CXR-Timestamp"]
    assert abs(int(timestamp) - hit.at) < 30
    assert hit.headers["X-CXR-Signature"] == expected_signature(timestamp, hit.body)
    sent = json.loads(hit.body)
    assert sent["job_id"] == record.job_id and sent["status"] == "succeeded"
    assert sent["result"]["label"] == "PNEUMONIA"
    assert sent["result"]["pneumonia_probability"] == 0.91
    assert sent["links"]["self"] == f"/v1/predictions/{record.job_id}"
    # What the API never shows is not sent either.
    assert not {"client_id", "upload_key", "extra", "attempts"} & set(sent)

    (line,) = setup.audit_lines(record.job_id)
    assert (line["client"], line["status"], line["outcome"], line["attempt"]) == (
        "alice", 200, "delivered", 1)
    assert line["receiver"] == "127.0.0.1"
    state = setup.jobs.get(record.job_id).extra[webhook.STATE_KEY]
    assert (state["state"], state["attempts"], state["status"]) == ("delivered", 1, 200)


def test_a_changed_body_or_secret_does_not_verify(setup):
    setup.receiver.start()
    record = succeeded_job(setup.jobs)
    run_task(record.job_id)
    (hit,) = setup.receiver.received
    timestamp = hit.headers["X-CXR-Timestamp"]
    tampered = hit.body.replace(b"PNEUMONIA", b"NORMAL")
    assert hit.headers["X-CXR-Signature"] != expected_signature(timestamp, tampered)
    # The timestamp is signed: the same body under another time does not verify.
    assert hit.headers["X-CXR-Signature"] != expected_signature(str(int(timestamp) + 600),
                                                                hit.body)


def test_retried_until_the_receiver_accepts(setup, monkeypatch):
    setup.receiver.statuses = [503, 429]
    setup.receiver.start()
    record = succeeded_job(setup.jobs)
    seen_by_attempt = []  # the job's webhook state as each attempt starts

    def post(*args):
        seen_by_attempt.append(setup.jobs.get(record.job_id).extra.get(webhook.STATE_KEY))
        return real_post(*args)

    real_post = webhook.post
    monkeypatch.setattr(webhook, "post", post)

    assert run_task(record.job_id, "delivery-7") == "delivered"

    assert seen_by_attempt == [None] + [  # the retry finds the last failure recorded
        {"state": "pending", "attempts": attempt, "delivery_id": "delivery-7",
         "last_error": f"answered {status}"} for attempt, status in [(1, 503), (2, 429)]]

    hits = setup.receiver.received
    assert [hit.status for hit in hits] == [503, 429, 200]
    for hit in hits:  # each attempt signed afresh, one delivery id throughout
        assert hit.headers["X-CXR-Delivery"] == "delivery-7"
        assert hit.headers["X-CXR-Signature"] == expected_signature(
            hit.headers["X-CXR-Timestamp"], hit.body)
    lines = setup.audit_lines(record.job_id)
    assert [(line["attempt"], line["status"], line["outcome"]) for line in lines] == [
        (1, 503, "retry"), (2, 429, "retry"), (3, 200, "delivered")]
    assert setup.redis.llen(get_settings().webhook_dead_letter_key) == 0


def test_dead_lettered_after_the_last_retry(setup, caplog):
    setup.receiver.statuses = [500] * 10
    setup.receiver.start()
    record = succeeded_job(setup.jobs)
    retried = REGISTRY.get_sample_value("cxr_worker_webhook_retries_total") or 0.0

    with caplog.at_level(logging.WARNING, logger=webhook.log.name):
        run_out_of_retries(record.job_id)

    assert len(setup.receiver.received) == 4  # the first try and max_retries = 3 more
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert [line.split(": ", 1)[1].split(" in ")[0] for line in retries] == [
        "answered 500; retry 1/3", "answered 500; retry 2/3", "answered 500; retry 3/3"]
    # Exponential backoff with full jitter: the n-th countdown lies in
    # [0, CXR_WEBHOOK_BACKOFF_S * 2**(n-1)] s.
    backoff = get_settings().webhook_backoff_s
    countdowns = [float(line.rsplit(" in ", 1)[1].removesuffix("s")) for line in retries]
    assert all(0 <= countdown <= backoff * 2**n for n, countdown in enumerate(countdowns))
    assert REGISTRY.get_sample_value("cxr_worker_webhook_retries_total") == retried + 3
    lines = setup.audit_lines(record.job_id)
    assert [line["outcome"] for line in lines] == ["retry", "retry", "retry", "dead_lettered"]
    assert (lines[-1]["attempt"], lines[-1]["status"], lines[-1]["error"]) == (
        4, 500, "retries exhausted: answered 500")
    (raw,) = setup.redis.lrange(get_settings().webhook_dead_letter_key, 0, -1)
    entry = json.loads(raw)
    assert entry["job_id"] == record.job_id
    assert entry["error_code"] == "webhook_undelivered"
    assert entry["retries"] == 3 and "answered 500" in entry["error_message"]
    state = setup.jobs.get(record.job_id).extra[webhook.STATE_KEY]
    assert state["state"] == "failed" and state["attempts"] == 4


def test_a_refusing_answer_is_not_retried(setup):
    setup.receiver.statuses = [410]
    setup.receiver.start()
    record = succeeded_job(setup.jobs)

    assert run_task(record.job_id) == "dead_lettered"

    assert len(setup.receiver.received) == 1
    (line,) = setup.audit_lines(record.job_id)
    assert (line["status"], line["outcome"], line["error"]) == (410, "dead_lettered",
                                                                 "answered 410")


def test_an_untrusted_certificate_gets_nothing(setup, monkeypatch):
    """Without the receiver's CA the TLS handshake fails: no body leaves the worker."""
    monkeypatch.delenv("CXR_WEBHOOK_CA_BUNDLE")
    configure(monkeypatch, {})
    setup.receiver.start()
    record = succeeded_job(setup.jobs)

    run_out_of_retries(record.job_id)

    assert setup.receiver.received == []
    lines = setup.audit_lines(record.job_id)
    assert len(lines) == 4 and all(line["status"] == 0 for line in lines)
    assert lines[0]["error"] == "no answer (ConnectError)"
    assert lines[-1]["error"] == "retries exhausted: no answer (ConnectError)"


def test_failed_and_refused_jobs_are_sent_too(setup):
    setup.receiver.start()
    record = JobRecord(job_id=f"job-{time.time_ns()}", client_id="alice", upload_key="u/1")
    setup.jobs.create(record)
    setup.jobs.mark_failed(record.job_id, Failure(
        code="not_a_chest_radiograph", message="Not a chest X-ray.", reasons=["blank_image"]))

    assert run_task(record.job_id) == "delivered"

    sent = json.loads(setup.receiver.received[0].body)
    assert sent["status"] == "failed"
    assert sent["failure"] == {"code": "not_a_chest_radiograph", "message": "Not a chest X-ray.",
                               "reasons": ["blank_image"]}


def test_an_unlisted_client_gets_no_webhook(setup):
    """(A listed client's is queued by the worker: tests/gateway/test_webhooks_end_to_end.py.)"""
    bob = succeeded_job(setup.jobs, "bob")
    assert webhook.request_webhook(bob.job_id) is False
    assert webhook.STATE_KEY not in setup.jobs.get(bob.job_id).extra


def test_a_job_delivered_again_is_not_queued_twice(setup):
    record = succeeded_job(setup.jobs)
    setup.jobs.set_extra(record.job_id, webhook.STATE_KEY, {"state": "delivered"})
    assert webhook.request_webhook(record.job_id, unless_requested=True) is False
    assert setup.jobs.get(record.job_id).extra[webhook.STATE_KEY] == {"state": "delivered"}


def test_a_deleted_job_is_dropped(setup):
    setup.receiver.start()
    assert run_task("no-such-job") == "dropped"
    assert setup.receiver.received == []


@pytest.mark.parametrize(("urls", "secrets", "message"), [
    ("alice:http://hooks.example/x", f"alice:{SECRET}", "must be https"),
    ("alice:https:///x", f"alice:{SECRET}", "must be https"),
    ("alice:https://hooks.example/x", "", "needs a secret"),
    ("alice:https://hooks.example/x", "alice:short", "needs a secret"),
    ("https://hooks.example/x", f"alice:{SECRET}", "must be https"),  # no client named
    ("alice", f"alice:{SECRET}", "not CLIENT:VALUE"),
])
def test_bad_webhook_settings_stop_the_start(urls, secrets, message):
    with pytest.raises(ValidationError, match=message) as caught:
        WorkerSettings(webhook_urls=urls, webhook_secrets=secrets)
    assert SECRET not in str(caught.value)


def test_webhook_retries_must_fit_in_the_visibility_timeout():
    hooks = {"webhook_urls": "alice:https://a.example/h", "webhook_secrets": f"alice:{SECRET}"}
    with pytest.raises(ValidationError, match="CXR_WEBHOOK_BACKOFF_MAX_S"):
        WorkerSettings(webhook_backoff_max_s=500, **hooks)
    # without webhooks their backoff does not bound the visibility timeout
    assert WorkerSettings(webhook_backoff_max_s=500).webhooks == {}



def test_webhook_settings_parse():
    settings = WorkerSettings(
        webhook_urls="alice:https://a.example:8443/h?x=1, bob:https://b.example/h",
        webhook_secrets=f"alice:{SECRET},bob:{SECRET[::-1]}")
    assert {client: endpoint.url for client, endpoint in settings.webhooks.items()} == {
        "alice": "https://a.example:8443/h?x=1", "bob": "https://b.example/h"}
    assert settings.webhooks["bob"].secret == SECRET[::-1]
    assert SECRET not in repr(settings.webhooks)
