"""Celery app of the report sender: queue `pacs`, task `cxr.pacs_report(job_id)`.

Run with `celery -A services.pacs.celery_app worker -Q pacs`. No result backend: the job record's
`extra.pacs_report` is the visible state.
"""

from __future__ import annotations

from celery import Celery

from services.pacs.settings import get_settings
from shared.job_queue import REPORT_QUEUE, REPORT_TASK

app = Celery("cxr-pacs", include=["services.pacs.tasks"])
app.conf.update(
    broker_url=get_settings().redis_url, result_backend=None, task_ignore_result=True,
    task_serializer="json", accept_content=["json"],
    task_routes={REPORT_TASK: {"queue": REPORT_QUEUE}},
    task_default_queue=REPORT_QUEUE, task_acks_late=True, task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
)
