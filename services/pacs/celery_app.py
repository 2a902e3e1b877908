"""Celery app of the report sender: queue `pacs`, task `cxr.pacs_report(job_id)`.

Run with `celery -A services.pacs.celery_app worker -Q pacs`. No result backend: the job record's
`extra.pacs_report` is the visible state.
"""

from __future__ import annotations

import logging

from celery import Celery

from services.pacs.settings import get_settings
from shared.celery_config import reliable_queue_config
from shared.jobs.queue import REPORT_QUEUE, REPORT_TASK

app = Celery("cxr-pacs", include=["services.pacs.tasks", "services.pacs.signals"])
app.conf.update(reliable_queue_config(redis_url=get_settings().redis_url, queue=REPORT_QUEUE,
                                      task_name=REPORT_TASK))

# highdicom logs, at INFO, the SOP Instance UID of the original instance each report copies its
# patient module from: an identifier the sender needs but its log does not.
logging.getLogger("highdicom").setLevel(logging.WARNING)
