"""Re-queue accepted jobs that were left behind: their message lost, or their worker gone.

It reads only what the project itself records (`shared.jobs.store`), never the broker's layout:

- storage's open-jobs index: the jobs accepted and not finished (durable; survives Redis);
- Redis's in-flight set: for each such job, when the project last saw it move (accepted,
  started, re-queued). It lives in the same Redis as the broker's queues, so whatever took the
  messages (a restart without persistence, a FLUSHALL) took the entries with them.

An unfinished job is sent again when Redis has no in-flight entry for it (Redis lost its data)
and it is older than `min_age_s` (its creator may not have sent its task yet), or when its entry
has not moved for `stale_after_s` (its message was lost, or the worker that held it died).
`stale_after_s` must outlast the broker's visibility timeout, which outlasts a task's hard time
limit plus its longest retry countdown: a job that is merely slow always moves (or finishes)
before it goes stale, so it is never sent to a second worker while it runs. A job is sent through
`JobStore.requeue` first, which refuses a finished job and resets its in-flight time: a lost job
is sent once per `stale_after_s`, not once per pass. The task id is the job id, and a delivery
of a finished job does nothing (docs/reliability.md, "Reconciler").

`run_periodically` repeats a pass for a long-running deployment (compose's `reconciler` service);
a pass that meets Redis, the broker or storage down is logged and tried again at the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import kombu.exceptions
import redis

from shared.errors import StorageError
from shared.jobs.store import JobStore
from shared.schemas import utc_now

log = logging.getLogger(__name__)

# What a pass meets when Redis (job records, broker) or storage is unreachable: the pass did not
# finish, and the next one starts from scratch.
UNAVAILABLE = (redis.RedisError, kombu.exceptions.OperationalError, StorageError, OSError)


@dataclass(frozen=True)
class PassResult:
    """What one pass found: unfinished jobs in storage, and what became of them."""

    unfinished: int = 0
    in_flight: int = 0
    too_young: int = 0
    requeued: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"unfinished={self.unfinished} in_flight={self.in_flight} "
                f"too_young={self.too_young} requeued={len(self.requeued)}")


def reconcile(jobs: JobStore, send: Callable[[str], None], *, stale_after_s: float,
              min_age_s: float = 60.0) -> list[str]:
    """Send again every unfinished job left behind (see the module); returns the job ids sent."""
    return reconcile_pass(jobs, send, stale_after_s=stale_after_s, min_age_s=min_age_s).requeued


def reconcile_pass(jobs: JobStore, send: Callable[[str], None], *, stale_after_s: float,
                   min_age_s: float = 60.0, scan_all: bool = False) -> PassResult:
    """`reconcile`, with the counts of what it found; `scan_all`: see `JobStore.list_unfinished`."""
    moved = jobs.in_flight()  # before the listing: a job seen unfinished below was in it then
    unfinished = jobs.list_unfinished(scan_all=scan_all)
    stale_before = time.time() - stale_after_s
    young_after = utc_now() - timedelta(seconds=min_age_s)
    in_flight = too_young = 0
    requeued = []
    for record in unfinished:
        last_moved = moved.get(record.job_id)
        if last_moved is None and record.created_at > young_after:
            too_young += 1
            continue
        if last_moved is not None and last_moved > stale_before:
            in_flight += 1
            continue
        if jobs.requeue(record.job_id).status.finished:
            continue  # it finished since the listing
        send(record.job_id)
        log.info("re-queued job %s (%s, created %s, %s)", record.job_id, record.status,
                 record.created_at.isoformat(),
                 "unknown to Redis" if last_moved is None
                 else f"still for {time.time() - last_moved:.0f} s")
        requeued.append(record.job_id)
    return PassResult(len(unfinished), in_flight, too_young, requeued)


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
