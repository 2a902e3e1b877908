"""Re-queue jobs that storage says are unfinished but the broker no longer holds.

After Redis loses its data (a restart without persistence, a FLUSHALL) the job records survive in
storage while their queued and in-flight messages are gone. The broker holds a job's message either
in the queue's list or, once a worker took it (late ack), in kombu's `unacked` hash; a job in
neither is sent again. Running this repeatedly is safe: a task for a finished job does nothing.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

import redis

from services.worker.celery_app import QUEUE, TASK_NAME
from shared.jobs import JobStore
from shared.schemas import utc_now

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key` transport option)


def _task_job_ids(message: dict) -> Iterable[str]:
    """The job id of a `cxr.predict` message in kombu's Redis format (protocol 2 body)."""
    if message.get("headers", {}).get("task") != TASK_NAME:
        return ()
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return (str(args[0]),) if args else ()


def broker_job_ids(
    client: redis.Redis, queue: str = QUEUE, unacked_key: str = UNACKED_KEY
) -> set[str]:
    """Job ids with a message waiting in `queue` (any priority) or taken by a worker, not acked."""
    raw_messages = []
    for key in client.scan_iter(match=f"{queue}*", _type="list"):
        # Priority queues are `queue` + "\x06\x16" + priority; skip lists of other queues.
        if key.decode() == queue or key.decode().startswith(queue + "\x06\x16"):
            raw_messages.extend(client.lrange(key, 0, -1))
    job_ids: set[str] = set()
    for raw in raw_messages:
        job_ids.update(_task_job_ids(json.loads(raw)))
    for raw in client.hvals(unacked_key):
        message, _exchange, _routing_key = json.loads(raw)
        job_ids.update(_task_job_ids(message))
    return job_ids


def reconcile(
    jobs: JobStore, client: redis.Redis, send: Callable[[str], None], min_age_s: float = 60.0
) -> list[str]:
    """Send again every unfinished job older than `min_age_s` that the broker does not hold.

    `min_age_s` leaves time for a client that has written a job record but not yet sent its task.
    Returns the job ids sent.
    """
    known = broker_job_ids(client)
    cutoff = utc_now() - timedelta(seconds=min_age_s)
    requeued = []
    for record in jobs.list_unfinished():
        if record.job_id in known or record.created_at > cutoff:
            continue
        jobs.save(record)  # back into Redis too, where status reads look first
        send(record.job_id)
        log.info(
            "re-queued job %s (%s, created %s)",
            record.job_id,
            record.status,
            record.created_at.isoformat(),
        )
        requeued.append(record.job_id)
    return requeued
