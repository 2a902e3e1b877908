"""`cxr.pacs_report(job_id)`: deliver a result to the PACS, retrying transient failures only.

Transient failures (destination down, transient rejection, abort, storage unavailable) are retried
with exponential backoff and full jitter, up to CXR_PACS_REPORT_MAX_RETRIES; a permanent rejection
fails the report at once, so a PACS that refuses us is not hammered in a loop. Any other error
(a report that cannot be built from the job) fails the report at once, with its reason on the job:
no delivery stays pending because the task crashed.
"""

from __future__ import annotations

import logging

import redis
from celery.utils.time import get_exponential_backoff_interval

from services.pacs import metrics
from services.pacs.celery_app import app
from services.pacs.delivery import ReportDeps, deliver_report, record_state
from services.pacs.sender import SendError
from services.pacs.settings import get_settings
from shared.errors import CXRError
from shared.jobs.queue import REPORT_TASK
from shared.process_local import PerProcess
from shared.report_delivery import PENDING_KEY

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


@app.task(name=REPORT_TASK, bind=True, max_retries=get_settings().pacs_report_max_retries)
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
        if permanent or self.request.retries >= self.max_retries:
            reason = detail if permanent else f"retries exhausted: {detail}"
            if isinstance(error, SendError | CXRError):
                log.error("report for job %s failed: %s", job_id, reason)
            else:
                log.exception("report for job %s failed: %s", job_id, reason)
            record_state(deps, job_id, "failed", attempt, reason=reason, permanent=permanent)
            metrics.REPORT_ATTEMPTS.labels("failed").inc()
            return "failed"
        countdown = get_exponential_backoff_interval(
            factor=deps.settings.pacs_report_backoff_s, retries=self.request.retries,
            maximum=deps.settings.pacs_report_backoff_max_s, full_jitter=True)
        log.warning("report for job %s: %s; retry in %ss", job_id, detail, countdown)
        record_state(deps, job_id, "pending", attempt, last_error=detail)
        metrics.REPORT_ATTEMPTS.labels("retried").inc()
        raise self.retry(exc=error, countdown=countdown) from error
