"""`cxr.pacs_report(job_id)`: deliver a result to the PACS, retrying transient failures only.

Transient failures (destination down, transient rejection, abort) are retried with exponential
backoff and full jitter, up to CXR_PACS_REPORT_MAX_RETRIES; a permanent rejection fails the report
at once, so a PACS that refuses us is not hammered in a loop.
"""

from __future__ import annotations

import logging

from celery.utils.time import get_exponential_backoff_interval

from services.pacs.celery_app import app
from services.pacs.delivery import ReportDeps, deliver_report, record_state
from services.pacs.sender import SendError
from services.pacs.settings import get_settings
from shared.job_queue import REPORT_TASK
from shared.process_local import PerProcess

log = logging.getLogger("cxr.pacs")
_deps = PerProcess(lambda: ReportDeps.from_settings(get_settings()))


def report_deps() -> ReportDeps:
    """This process's dependencies; a forked pool process builds its own."""
    return _deps.get()


@app.task(name=REPORT_TASK, bind=True, max_retries=get_settings().pacs_report_max_retries)
def pacs_report(self, job_id: str) -> str:
    deps = report_deps()
    attempt = self.request.retries + 1
    try:
        return deliver_report(job_id, deps, attempt)
    except SendError as error:
        if error.permanent or self.request.retries >= self.max_retries:
            reason = str(error) if error.permanent else f"retries exhausted: {error}"
            log.error("report for job %s failed: %s", job_id, reason)
            record_state(deps, job_id, "failed", attempt, reason=reason,
                         permanent=error.permanent)
            return "failed"
        countdown = get_exponential_backoff_interval(
            factor=deps.settings.pacs_report_backoff_s, retries=self.request.retries,
            maximum=deps.settings.pacs_report_backoff_max_s, full_jitter=True)
        log.warning("report for job %s: %s; retry in %ss", job_id, error, countdown)
        record_state(deps, job_id, "pending", attempt, last_error=str(error))
        raise self.retry(exc=error, countdown=countdown) from error
