"""Queues prediction jobs for the worker by task name, so producers never import worker code."""

from __future__ import annotations

import logging

from celery import Celery

from shared.errors import QueueUnavailableError
from shared.settings import SharedSettings

log = logging.getLogger("cxr.queue")
# The worker's contract (docs/architecture.md, "Celery").
INFERENCE_QUEUE = "inference"
PREDICT_TASK = "cxr.predict"


class JobQueue:
    """Sends `cxr.predict(job_id)` to the `inference` queue on the Redis broker."""

    def __init__(self, settings: SharedSettings) -> None:
        self.queue = INFERENCE_QUEUE
        self.task_name = PREDICT_TASK
        self.celery = Celery("cxr-producer", broker=settings.redis_url, set_as_current=False)
        self.celery.conf.update(task_serializer="json", accept_content=["json"],
                                broker_connection_retry_on_startup=True)

    def enqueue(self, job_id: str) -> None:
        """Blocking; call it from a worker thread."""
        try:
            self.celery.send_task(
                self.task_name, args=[job_id], queue=self.queue, task_id=job_id,
                retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                          "interval_step": 0.5, "interval_max": 2},
            )
        except Exception as exc:  # kombu raises several connection error types
            log.error("could not queue job %s: %s", job_id, exc)
            raise QueueUnavailableError() from exc

    def close(self) -> None:
        self.celery.close()


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
