"""The Celery settings every queue consumer of the project shares: Redis queues, JSON only, no
result backend (the job record is the result), and late acks so no task is lost with a worker."""

from __future__ import annotations


def reliable_queue_config(*, redis_url: str, queue: str, task_name: str) -> dict[str, object]:
    """Settings for an app whose `task_name` runs on `queue`; services add time limits and more."""
    return {
        "broker_url": redis_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {task_name: {"queue": queue}},
        "task_default_queue": queue,
        # Acked only after the task ran; a worker that dies mid-task gives the message back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
    }
