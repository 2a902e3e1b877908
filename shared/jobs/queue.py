"""Every Celery queue and task name of the project, and the one way `cxr.predict` is sent.

Producers send tasks by name, so they never import worker code; the consumers' Celery apps
(services/worker, services/pacs, services/trainer) and `scripts/stack.py` take their names from
here (docs/architecture.md, "Celery").
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.errors import QueueUnavailableError
from shared.settings import SharedSettings

log = logging.getLogger("cxr.queue")

# The inference worker: predictions, and the tasks that follow a finished job.
INFERENCE_QUEUE = "inference"
PREDICT_TASK = "cxr.predict"
WEBHOOK_TASK = "cxr.webhook"  # services/worker/webhook.py, on the inference queue
# A shadow model version scores succeeded jobs (services/worker/shadow.py); a worker consumes it
# with `-Q inference,shadow`, or a separate one with `-Q shadow`.
SHADOW_QUEUE = "shadow"
SHADOW_TASK = "cxr.shadow"
# The retention purge (shared/retention.py): sent by Celery beat, run by the inference worker.
PURGE_TASK = "cxr.purge"
# The drift check (shared/drift.py): sent by Celery beat, run by the inference worker.
DRIFT_CHECK_TASK = "cxr.drift_check"

# Scheduled and requested retraining (services/trainer/celery_app.py).
TRAINING_QUEUE = "training"
RETRAIN_TASK = "cxr.retrain"

# Results of DICOM-sourced jobs go back to the PACS through this task (services/pacs/tasks.py).
REPORT_QUEUE = "pacs"
REPORT_TASK = "cxr.pacs_report"
REPORT_STATE_KEY = "pacs_report"  # JobRecord.extra key holding the report's delivery state

# Publishing `cxr.predict` waits out a short broker outage, then fails.
PREDICT_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                        "interval_max": 2}


def enqueue_predict(celery: Celery, job_id: str) -> None:
    """Send `cxr.predict(job_id)` to the `inference` queue, with the job id as the task id.

    Intake, the reconciler and every re-queue send the task this way, so a job's messages are
    alike whoever sent them. Blocking; QueueUnavailableError when the broker cannot be reached.
    """
    try:
        celery.send_task(PREDICT_TASK, args=[job_id], queue=INFERENCE_QUEUE, task_id=job_id,
                         retry=True, retry_policy=PREDICT_RETRY_POLICY)
    except Exception as exc:  # kombu raises several connection error types
        log.error("could not queue job %s: %s", job_id, exc)
        raise QueueUnavailableError() from exc


class JobQueue:
    """A producer of `cxr.predict(job_id)` on the Redis broker (`enqueue_predict`)."""

    def __init__(self, settings: SharedSettings) -> None:
        self.celery = Celery("cxr-producer", broker=settings.redis_url, set_as_current=False)
        self.celery.conf.update(task_serializer="json", accept_content=["json"],
                                broker_connection_retry_on_startup=True)

    def enqueue(self, job_id: str) -> None:
        """Blocking; call it from a worker thread."""
        enqueue_predict(self.celery, job_id)

    def close(self) -> None:
        self.celery.close()
