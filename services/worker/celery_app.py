"""The worker's Celery app on Redis: queue `inference`, task `cxr.predict(job_id)`.

Importing this module is cheap (no TensorFlow): a client that only sends tasks may import `app`.
The job record in Redis and storage is the result, so there is no result backend.
"""

from __future__ import annotations

import os

from celery import Celery

from services.worker.settings import WorkerSettings, get_settings
from shared.celery_config import reliable_queue_config
from shared.jobs.queue import INFERENCE_QUEUE as QUEUE
from shared.jobs.queue import PREDICT_TASK as TASK_NAME

__all__ = ["QUEUE", "TASK_NAME", "app", "celery_config"]


def celery_config(settings: WorkerSettings) -> dict[str, object]:
    """Production settings: a task is acked only after it ran, and never lost with a worker."""
    return {
        **reliable_queue_config(redis_url=settings.redis_url, queue=QUEUE, task_name=TASK_NAME),
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # A message not acked in this time is delivered again; settings check it outlasts a task.
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout_s},
        # On a lost broker connection the late-acked messages go back to the queue; stop running
        # them here instead of finishing them twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_send_sent_event": False,
        "worker_concurrency": settings.worker_concurrency or 2 * len(os.sched_getaffinity(0)),
    }


app = Celery("cxr-worker", include=["services.worker.tasks", "services.worker.webhook",
                                  "services.worker.retention", "services.worker.drift",
                                  "services.worker.signals", "services.worker.shadow"])
app.conf.update(celery_config(get_settings()))
