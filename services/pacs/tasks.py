"""`cxr.pacs_report(job_id)`: deliver a result to the PACS, retrying transient failures only.

Transient failures (destination down, transient rejection, abort, storage unavailable) are retried
by Celery (`shared.task_retries`: exponential backoff, full jitter), up to
CXR_PACS_REPORT_MAX_RETRIES, then the report fails (`ReportTask.dead_letter`); a permanent rejection
fails the report at once, so a PACS that refuses us is not hammered in a loop. Any other error
(a report that cannot be built from the job) fails the report at once, with its reason on the job:
no delivery stays pending because the task crashed.
"""

from __future__ import annotations

import logging

import redis

from services.pacs import metrics
from services.pacs.celery_app import app
from services.pacs.delivery import ReportDeps, deliver_report, record_state
from services.pacs.sender import SendError
from services.pacs.settings import get_settings
from shared.errors import CXRError
from shared.jobs.queue import REPORT_TASK
from shared.process_local import PerProcess
from shared.report_delivery import PENDING_KEY
from shared.task_retries import RetryingTask, TransientFailure, retry_options

log = logging.getLogger("cxr.pacs")
_deps = PerProcess(lambda: ReportDeps.from_settings(get_settings()))


def report_deps() -> ReportDeps:
    """This process's dependencies; a forked pool process builds its own."""
    return _deps.get()


def _classify(error: Exception) -> tuple[bool, str]:
    """(permanent, reason) of a delivery error."""
    if isinstance(error, SendError):
        return error.permanent, str(error)
    if isinstance(error, CXRError):
        return not error.transient, f"{error.code}: {error.message}"
    if isinstance(error, redis.RedisError | OSError):
        return False, f"storage or Redis unavailable ({type(error).__name__})"
    return True, f"the report could not be built from the job ({type(error).__name__})"


class ReportTask(RetryingTask):
    """`cxr.pacs_report`: counts and logs each retry; fails the report once retries are spent."""

    def retrying(self, job_id: str, failure: TransientFailure, countdown: float) -> None:
        log.warning("report for job %s: %s; retry in %ss", job_id, failure.detail, countdown)
        metrics.REPORT_ATTEMPTS.labels("retried").inc()

    def dead_letter(self, job_id: str, failure: TransientFailure, retries: int) -> None:
        _fail(report_deps(), job_id, failure.error, f"retries exhausted: {failure.detail}",
              retries + 1, permanent=False)


def _settings_retry_options() -> dict[str, object]:
    settings = get_settings()
    return retry_options(max_retries=settings.pacs_report_max_retries,
                         backoff_s=settings.pacs_report_backoff_s,
                         backoff_max_s=settings.pacs_report_backoff_max_s, jitter=True)


@app.task(base=ReportTask, name=REPORT_TASK, bind=True, **_settings_retry_options())
def pacs_report(self, job_id: str) -> str:
    deps = report_deps()
    attempt = self.request.retries + 1
    try:
        state = deliver_report(job_id, deps, attempt)
        if state == "not_applicable":
            deps.redis.zrem(PENDING_KEY, job_id)  # nothing to deliver: no longer pending
        metrics.REPORT_ATTEMPTS.labels(state).inc()
        return state
    except Exception as error:  # noqa: BLE001 - every delivery ends sent, failed or retried
        permanent, detail = _classify(error)
        if permanent:
            _fail(deps, job_id, error, detail, attempt, permanent=True)
            return "failed"
        if self.will_retry():  # recorded before the retry is sent, which may run at once
            record_state(deps, job_id, "pending", attempt, last_error=detail)
        raise TransientFailure(error, detail) from error


def _fail(deps: ReportDeps, job_id: str, error: BaseException, reason: str, attempt: int, *,
          permanent: bool) -> None:
    if isinstance(error, SendError | CXRError):
        log.error("report for job %s failed: %s", job_id, reason)
    else:
        log.exception("report for job %s failed: %s", job_id, reason, exc_info=error)
    record_state(deps, job_id, "failed", attempt, reason=reason, permanent=permanent)
    metrics.REPORT_ATTEMPTS.labels("failed").inc()
