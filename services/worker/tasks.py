"""The `cxr.predict(job_id)` task: thin, like a web view; the work is in `job.process_job`.

Transient errors (model server unavailable or slow, storage or Redis down) are retried by Celery
(`shared.task_retries`: exponential backoff, full jitter with `CXR_RETRY_JITTER`); a job that uses
up its retries is failed with reason `retries_exhausted` and put on the dead-letter list
(`PredictTask.dead_letter`). Permanent errors fail the job at once.
"""

from __future__ import annotations

import logging

import redis
from celery.exceptions import SoftTimeLimitExceeded

from services.worker import dead_letter, metrics
from services.worker.celery_app import TASK_NAME, app
from services.worker.errors import AttemptsExhaustedError, RedisUnavailableError, TaskTimeoutError
from services.worker.job import Outcome, WorkerDeps, fail_job, process_job
from services.worker.settings import get_settings
from services.worker.shadow import request_shadow
from services.worker.webhook import request_webhook
from shared.contract import NOT_A_CHEST_RADIOGRAPH_CODE
from shared.errors import CXRError, JobNotFoundError
from shared.jobs.queue import REPORT_QUEUE, REPORT_STATE_KEY, REPORT_TASK
from shared.jobs.records import JobRecord, JobStatus
from shared.process_local import PerProcess
from shared.report_delivery import note_pending
from shared.schemas import Failure
from shared.task_retries import RetryingTask, TransientFailure, retry_options

log = logging.getLogger(__name__)


_deps = PerProcess(lambda: WorkerDeps.from_settings(get_settings()), close=WorkerDeps.close)


def worker_deps() -> WorkerDeps:
    """This process's dependencies; a forked pool process builds its own (gRPC is not fork-safe)."""
    return _deps.get()


def reset_worker_deps() -> None:
    _deps.reset()


def as_transient(exc: BaseException) -> CXRError | None:
    """The error as a retryable `CXRError`, or None when retrying cannot help."""
    if isinstance(exc, CXRError):
        return exc if exc.transient else None
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return RedisUnavailableError(f"Redis did not answer: {exc}")
    if isinstance(exc, SoftTimeLimitExceeded):
        return TaskTimeoutError()
    return None


class PredictTask(RetryingTask):
    """`cxr.predict`: counts and logs each retry; fails and dead-letters a job out of retries."""

    def retrying(self, job_id: str, failure: TransientFailure, countdown: float) -> None:
        error = _cxr_error(failure)
        log.warning("job %s: %s; retry %s/%s in %ss", job_id, error.code,
                    self.request.retries + 1, self.max_retries, countdown)
        metrics.RETRIES.labels(error.code).inc()

    def dead_letter(self, job_id: str, failure: TransientFailure, retries: int) -> None:
        _dead_letter(self, job_id, _cxr_error(failure), retries, worker_deps())


def _cxr_error(failure: TransientFailure) -> CXRError:
    error = failure.error
    assert isinstance(error, CXRError), error
    return error


def _settings_retry_options() -> dict[str, object]:
    settings = get_settings()
    return retry_options(max_retries=settings.task_max_retries, backoff_s=settings.retry_backoff_s,
                         backoff_max_s=settings.retry_backoff_max_s, jitter=settings.retry_jitter)


@app.task(base=PredictTask, name=TASK_NAME, bind=True, **_settings_retry_options())
def predict(self, job_id: str) -> str:
    deps = worker_deps()
    try:
        outcome = process_job(job_id, deps)
    except AttemptsExhaustedError as error:
        _dead_letter(self, job_id, error, self.request.retries, deps)
        return "dead_lettered"
    except JobNotFoundError:
        log.error("task for job %s dropped: no job record in Redis or storage", job_id)
        metrics.JOBS.labels("job_not_found").inc()
        return "job_not_found"
    except Exception as exc:
        transient = as_transient(exc)
        if transient is None:
            log.exception("job %s failed on an unexpected error", job_id)
            fail_job(
                job_id, Failure(code="internal_error", message=f"Unexpected error: {exc!r}"), deps
            )
            metrics.JOBS.labels(Outcome.FAILED).inc()
            request_webhook(job_id)
            raise
        raise TransientFailure(transient, f"{transient.code}: {transient.message}") from exc
    metrics.JOBS.labels(outcome).inc()
    if outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
        request_pacs_report(job_id, deps)
        request_webhook(job_id)
    elif outcome == Outcome.ALREADY_FINISHED:  # a worker may have died before queueing it
        request_webhook(job_id, unless_requested=True)
    if outcome == Outcome.SUCCEEDED:  # the answer is stored: the shadow version may score now
        request_shadow(job_id, deps.settings)
    return outcome


def request_pacs_report(job_id: str, deps: WorkerDeps) -> None:
    """A result of a DICOM-sourced job goes back to the PACS: mark it pending, queue the sender.

    So does a refused film (the PACS gets a notice that it was not analysed, and why); other
    failures send nothing.
    """
    try:
        record = deps.jobs.get(job_id)
        if record is None or record.source != "dicom" or not reports_to_pacs(record):
            return
        deps.jobs.set_extra(job_id, REPORT_STATE_KEY, {"state": "pending", "attempts": 0})
        note_pending(deps.redis, job_id)
        app.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    except Exception:  # the prediction itself succeeded; never undo that over the report
        log.exception("could not queue the PACS report of job %s", job_id)


def reports_to_pacs(record: JobRecord) -> bool:
    if record.status == JobStatus.SUCCEEDED:
        return True
    return record.failure is not None and record.failure.code == NOT_A_CHEST_RADIOGRAPH_CODE


def _dead_letter(task, job_id: str, error: CXRError, retries: int, deps: WorkerDeps) -> None:
    """Give up: fail the job with reason `retries_exhausted` and keep it for operators."""
    log.error("job %s: giving up after %s retries; dead-lettered (%s)", job_id, retries, error)
    fail_job(job_id, dead_letter.exhausted_failure(error, retries), deps)
    dead_letter.push(deps.redis, deps.settings.dead_letter_key, job_id, task.name, error, retries)
    metrics.DEAD_LETTERED.inc()
    metrics.JOBS.labels("dead_lettered").inc()
    request_webhook(job_id)
