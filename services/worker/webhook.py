"""Webhooks: an API client's HTTPS URL hears each of its jobs once the job has finished.

When a job ends (succeeded, failed, or refused as not a chest radiograph: a failed job with code
`not_a_chest_radiograph`), the worker queues `cxr.webhook(job_id, delivery_id)` on its own queue
for a client listed in `CXR_WEBHOOK_URLS`. The task POSTs the job as `GET /v1/predictions/{id}`
answers it (the same `JobView` JSON), signed for the client's secret:

    X-CXR-Timestamp: <Unix seconds when this attempt was signed>
    X-CXR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, key: the client's secret>
    X-CXR-Event: prediction.finished
    X-CXR-Delivery: <one id per job's delivery, the same on every retry>

The timestamp is inside the signed string, so a receiver that refuses old timestamps refuses a
replayed request. A 2xx answer ends the delivery. No answer, 408, 425, 429 and 5xx are retried
by Celery (`shared.task_retries`: exponential backoff, full jitter), at most
`CXR_WEBHOOK_MAX_RETRIES` times (`WebhookTask.dead_letter` once they are spent); any other answer
(a redirect, another 4xx) is not. A delivery that is not accepted goes to the Redis list
`CXR_WEBHOOK_DEAD_LETTER_KEY`. Each attempt is an audit line (action `webhook_delivery`) and a
count in `cxr_worker_webhook_attempts`; each delivery's end a count in
`cxr_worker_webhook_deliveries`. The job's `extra.webhook` holds the delivery's state.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import redis

from services.worker import dead_letter, metrics
from services.worker.celery_app import QUEUE, app
from services.worker.settings import WebhookEndpoint, WorkerSettings, get_settings
from shared.audit import AuditEntry, ensure_audit
from shared.errors import CXRError
from shared.jobs.queue import WEBHOOK_TASK
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.jobs.view import JobView
from shared.process_local import PerProcess
from shared.redis_clients import redis_client
from shared.storage import get_storage
from shared.task_retries import RetryingTask, TransientFailure, retry_options

log = logging.getLogger(__name__)

STATE_KEY = "webhook"  # JobRecord.extra key holding the delivery's state
EVENT = "prediction.finished"
SIGNATURE_HEADER = "X-CXR-Signature"
TIMESTAMP_HEADER = "X-CXR-Timestamp"
EVENT_HEADER = "X-CXR-Event"
DELIVERY_HEADER = "X-CXR-Delivery"
AUDIT_ACTION = "webhook_delivery"
# Answers a later attempt may change; every other non-2xx answer is final.
RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookUndeliveredError(CXRError):
    """What the dead-letter entry of a webhook the receiver never accepted says."""

    code = "webhook_undelivered"
    http_status = 502
    default_message = "The client's webhook receiver did not accept the job's final state."


class AttemptFailed(Exception):
    """One POST that was not accepted: `status` is the receiver's answer (None: no answer)."""

    def __init__(self, reason: str, status: int | None, retryable: bool) -> None:
        super().__init__(reason)
        self.reason, self.status, self.retryable = reason, status, retryable

    def __reduce__(self) -> tuple[type[AttemptFailed], tuple[str, int | None, bool]]:
        return type(self), (self.reason, self.status, self.retryable)


@dataclass
class WebhookDeps:
    settings: WorkerSettings
    redis: redis.Redis
    jobs: JobStore
    http: httpx.Client

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WebhookDeps:
        client = redis_client(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        verify: ssl.SSLContext | bool = True
        if settings.webhook_ca_bundle:
            verify = ssl.create_default_context(cafile=settings.webhook_ca_bundle)
        http = httpx.Client(verify=verify, timeout=settings.webhook_timeout_s,
                            follow_redirects=False)
        return cls(settings, client, JobStore(client, get_storage(settings)), http)

    def close(self) -> None:
        self.http.close()
        self.redis.close()


_deps = PerProcess(lambda: WebhookDeps.from_settings(get_settings()), close=WebhookDeps.close)


def webhook_deps() -> WebhookDeps:
    """This process's dependencies; a forked pool process builds its own."""
    return _deps.get()


def reset_webhook_deps() -> None:
    _deps.reset()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-CXR-Signature` value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def job_body(record: JobRecord) -> bytes:
    """The job as `GET /v1/predictions/{id}` answers it."""
    return JobView.from_record(record).model_dump_json().encode()


def post(http: httpx.Client, endpoint: WebhookEndpoint, body: bytes, delivery_id: str) -> int:
    """POST one signed attempt; the receiver's 2xx status, or `AttemptFailed`."""
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", EVENT_HEADER: EVENT,
               DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: timestamp,
               SIGNATURE_HEADER: sign(endpoint.secret, timestamp, body)}
    try:
        response = http.post(endpoint.url, content=body, headers=headers)
    except httpx.HTTPError as exc:  # refused, reset, TLS failure, timeout
        raise AttemptFailed(f"no answer ({type(exc).__name__})", None, True) from exc
    status = response.status_code
    if 200 <= status < 300:
        return status
    retryable = status in RETRYABLE_STATUS or status >= 500
    raise AttemptFailed(f"answered {status}", status, retryable)


def request_webhook(job_id: str, *, unless_requested: bool = False) -> bool:
    """Queue the webhook of a job that has just finished, when its client has one.

    `unless_requested`: only when none was queued yet (a task delivered again after its worker
    died between finishing the job and queueing the webhook). Never raises: the job's outcome
    is recorded already and must not be undone over a webhook.
    """
    try:
        settings = get_settings()
        if not settings.webhook_urls:
            return False
        deps = webhook_deps()
        record = deps.jobs.get(job_id)
        if record is None or record.client_id not in settings.webhooks:
            return False
        if unless_requested and STATE_KEY in record.extra:
            return False
        delivery_id = str(uuid.uuid4())
        deps.jobs.set_extra(job_id, STATE_KEY, {"state": "pending", "attempts": 0,
                                                "delivery_id": delivery_id})
        app.send_task(WEBHOOK_TASK, args=[job_id, delivery_id], queue=QUEUE)
        return True
    except Exception:  # noqa: BLE001 - logged; the prediction itself stands
        log.exception("could not queue the webhook of job %s", job_id)
        return False


@dataclass(frozen=True)
class Attempt:
    """One attempt at a job's webhook: what its audit line and the job's webhook state name."""

    job_id: str
    client_id: str
    url: str
    delivery_id: str
    number: int  # 1 for the first try, n + 1 for the n-th retry

    def audit(self, outcome: str, status: int | None, error: str | None = None) -> None:
        extra: dict[str, object] = {"attempt": self.number, "outcome": outcome,
                                    "delivery_id": self.delivery_id,
                                    "receiver": urlsplit(self.url).hostname}
        if error is not None:
            extra["error"] = error
        AuditEntry(self.client_id, AUDIT_ACTION, self.job_id, status=status or 0,
                   extra=extra).emit()

    def record(self, jobs: JobStore, state: str, **details: object) -> None:
        """Set the job's `extra.webhook` to `state` after this attempt."""
        try:
            jobs.set_extra(self.job_id, STATE_KEY, {
                "state": state, "attempts": self.number, "delivery_id": self.delivery_id,
                **details})
        except Exception:  # noqa: BLE001 - the job may have been deleted meanwhile
            log.warning("could not record the webhook state of job %s", self.job_id)


class Undelivered(TransientFailure):
    """A retryable `AttemptFailed` (`error`), with the attempt it ended.

    It pickles as itself (so does `AttemptFailed`): Celery hands `on_failure`, and so
    `WebhookTask.dead_letter`, only an exception that survives pickling unchanged.
    """

    error: AttemptFailed

    def __init__(self, failed: AttemptFailed, attempt: Attempt) -> None:
        super().__init__(failed, failed.reason)
        self.attempt = attempt

    def __reduce__(self) -> tuple[type[Undelivered], tuple[AttemptFailed, Attempt]]:
        return type(self), (self.error, self.attempt)


class WebhookTask(RetryingTask):
    """`cxr.webhook`: counts and logs each retry; dead-letters a delivery out of retries."""

    def retrying(self, job_id: str, failure: TransientFailure, countdown: float) -> None:
        metrics.WEBHOOK_RETRIES.inc()
        log.warning("webhook of job %s: %s; retry %s/%s in %ss", job_id, failure.detail,
                    self.request.retries + 1, self.max_retries, countdown)

    def dead_letter(self, job_id: str, failure: TransientFailure, retries: int) -> None:
        assert isinstance(failure, Undelivered), failure
        _dead_letter(webhook_deps(), self.name, failure.attempt, failure.error.status,
                     f"retries exhausted: {failure.detail}")


def _settings_retry_options() -> dict[str, object]:
    settings = get_settings()
    return retry_options(max_retries=settings.webhook_max_retries,
                         backoff_s=settings.webhook_backoff_s,
                         backoff_max_s=settings.webhook_backoff_max_s, jitter=True)


@app.task(base=WebhookTask, name=WEBHOOK_TASK, bind=True, **_settings_retry_options())
def send_webhook(self, job_id: str, delivery_id: str) -> str:
    """One attempt at a job's webhook; retried, then dead-lettered, while it is not accepted."""
    deps = webhook_deps()
    settings = deps.settings
    ensure_audit(settings.audit_log)
    record = deps.jobs.get(job_id)
    endpoint = settings.webhooks.get(record.client_id) if record is not None else None
    if record is None or endpoint is None or not record.status.finished:
        # Deleted (or purged) meanwhile, or the client's webhook was removed: nothing to send.
        log.info("webhook of job %s dropped: no finished job or no webhook for its client",
                 job_id)
        metrics.WEBHOOK_DELIVERIES.labels("dropped").inc()
        return "dropped"
    attempt = Attempt(job_id, record.client_id, endpoint.url, delivery_id,
                      self.request.retries + 1)
    try:
        status = post(deps.http, endpoint, job_body(record), delivery_id)
    except AttemptFailed as failed:
        metrics.WEBHOOK_ATTEMPTS.labels("no_answer" if failed.status is None
                                        else "refused").inc()
        if not failed.retryable:
            _dead_letter(deps, self.name, attempt, failed.status, failed.reason)
            return "dead_lettered"
        if self.will_retry():  # recorded before the retry is sent, which may run at once
            attempt.audit("retry", failed.status, failed.reason)
            attempt.record(deps.jobs, "pending", last_error=failed.reason)
        raise Undelivered(failed, attempt) from failed
    metrics.WEBHOOK_ATTEMPTS.labels("accepted").inc()
    metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
    attempt.audit("delivered", status)
    attempt.record(deps.jobs, "delivered", status=status)
    return "delivered"


def _dead_letter(deps: WebhookDeps, task: str, attempt: Attempt, status: int | None,
                 reason: str) -> None:
    attempt.audit("dead_lettered", status, reason)
    log.error("webhook of job %s not delivered after %s attempts: %s", attempt.job_id,
              attempt.number, reason)
    metrics.WEBHOOK_DELIVERIES.labels("dead_lettered").inc()
    dead_letter.push(deps.redis, deps.settings.webhook_dead_letter_key, attempt.job_id, task,
                     WebhookUndeliveredError(reason), attempt.number - 1)
    attempt.record(deps.jobs, "failed", reason=reason)
