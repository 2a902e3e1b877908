"""Counts of PACS report deliveries in Redis, for metrics and alerts across every process.

The worker marks a DICOM job's report pending when it queues the report task; the report sender
ends every delivery as `sent`, `failed` (with a reason on the job), `skipped` (no destination) or
`not_sent` (the sender may not write into the PACS, with the reason on the job). Redis holds the
count of each final state and the time each pending delivery began, so the gateway's `/metrics`
shows them whatever pool or replica did the work, and an alert can fire on a delivery that
failed or that stays pending too long.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import redis.asyncio

OUTCOMES_KEY = "cxr:pacs_report:outcomes"  # hash: final state -> count
PENDING_KEY = "cxr:pacs_report:pending"  # sorted set: job id -> when it became pending (epoch s)
FINAL_STATES = ("sent", "failed", "skipped", "not_sent")


def note_pending(client: redis.Redis, job_id: str) -> None:
    """The delivery of `job_id` began (kept at its first time when noted again)."""
    client.zadd(PENDING_KEY, {job_id: time.time()}, nx=True)


def note_final(client: redis.Redis, job_id: str, state: str) -> None:
    """The delivery of `job_id` ended in `state` (no longer pending; one more in that state)."""
    with client.pipeline() as pipe:
        pipe.zrem(PENDING_KEY, job_id)
        pipe.hincrby(OUTCOMES_KEY, state, 1)
        pipe.execute()


@dataclass(frozen=True)
class DeliverySnapshot:
    outcomes: dict[str, int]
    pending: int
    oldest_pending_s: float


async def snapshot(client: redis.asyncio.Redis) -> DeliverySnapshot:
    """The counts now (for `/metrics`)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(OUTCOMES_KEY)
        pipe.zcard(PENDING_KEY)
        pipe.zrange(PENDING_KEY, 0, 0, withscores=True)
        raw, pending, oldest = await pipe.execute()
    outcomes = {state: 0 for state in FINAL_STATES}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        outcomes[name] = int(value)
    oldest_s = max(0.0, time.time() - float(oldest[0][1])) if oldest else 0.0
    return DeliverySnapshot(outcomes, int(pending), oldest_s)
