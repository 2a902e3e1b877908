"""Re-queue jobs that storage says are unfinished but the broker no longer holds.

After Redis loses its data (a restart without persistence, a FLUSHALL) the job records survive in
storage while their queued and in-flight messages are gone. The broker holds a job's message either
in the queue's list or, once a worker took it (late ack), in kombu's `unacked` hash; a job in
neither is sent again. Running this repeatedly is safe: a task for a finished job does nothing.

`run_periodically` repeats a pass for a long-running deployment (compose's `reconciler` service);
a pass that meets Redis, the broker or storage down is logged and tried again at the next tick.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import kombu.exceptions
import redis

from services.worker.celery_app import QUEUE, TASK_NAME
from shared.errors import StorageError
from shared.jobs.store import JobStore
from shared.schemas import utc_now

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key` transport option)

# What a pass meets when Redis (job records, broker) or storage is unreachable: the pass did not
# finish, and the next one starts from scratch.
UNAVAILABLE = (redis.RedisError, kombu.exceptions.OperationalError, StorageError, OSError)


@dataclass(frozen=True)
class PassResult:
    """What one pass found: unfinished jobs in storage, and what became of them."""

    unfinished: int = 0
    held_by_broker: int = 0
    too_young: int = 0
    requeued: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"unfinished={self.unfinished} held_by_broker={self.held_by_broker} "
                f"too_young={self.too_young} requeued={len(self.requeued)}")


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
    return reconcile_pass(jobs, client, send, min_age_s).requeued


def reconcile_pass(
    jobs: JobStore, client: redis.Redis, send: Callable[[str], None], min_age_s: float = 60.0,
    *, scan_all: bool = False,
) -> PassResult:
    """`reconcile`, with the counts of what it found; `scan_all`: see `JobStore.list_unfinished`."""
    known = broker_job_ids(client)
    cutoff = utc_now() - timedelta(seconds=min_age_s)
    unfinished = jobs.list_unfinished(scan_all=scan_all)
    held = too_young = 0
    requeued = []
    for record in unfinished:
        if record.job_id in known:
            held += 1
            continue
        if record.created_at > cutoff:
            too_young += 1
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
    return PassResult(len(unfinished), held, too_young, requeued)


def run_periodically(
    run_pass: Callable[[], PassResult],
    every_s: float,
    stop: threading.Event,
    on_success: Callable[[PassResult], None] = lambda result: None,
) -> int:
    """Run a pass, wait `every_s`, repeat until `stop` is set; returns the number of passes.

    Each pass logs one line with its counts. A pass that fails because Redis, the broker or
    storage is unreachable is logged on one line and tried again at the next tick; any other
    error is logged with its traceback and also tried again. `on_success` runs after each pass
    that finished (e.g. to touch a heartbeat file for a health check). `stop` set in the middle
    of a pass lets that pass finish.
    """
    passes = 0
    while not stop.is_set():
        passes += 1
        try:
            result = run_pass()
        except UNAVAILABLE as exc:
            log.warning("reconcile pass %d failed, next in %g s: %s: %s",
                        passes, every_s, type(exc).__name__, exc)
        except Exception:
            log.exception("reconcile pass %d failed, next in %g s", passes, every_s)
        else:
            log.info("reconcile pass %d: %s", passes, result.summary())
            on_success(result)
        stop.wait(every_s)
    return passes
