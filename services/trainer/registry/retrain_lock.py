"""One retraining at a time: a Redis lock with a TTL longer than the longest run.

A second trigger (beat firing while a manual run goes on, or Redis redelivering a late-acked
task) finds the lock taken and is skipped with a log line. The TTL frees the lock of a run whose
worker died; a run that ends releases it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

LOCK_KEY = "cxr:retrain:lock"


def retrain_exclusively(client: redis.Redis, ttl_s: int, retrain: Callable[[], dict[str, Any]],
                        key: str = LOCK_KEY) -> dict[str, Any]:
    """Run `retrain()` under the lock, or return `{"skipped": ...}` when another run holds it."""
    lock = client.lock(key, timeout=ttl_s, blocking=False)
    if not lock.acquire(blocking=False):
        holder = client.get(key)
        log.warning("retraining skipped: another retraining holds %s (token %r)", key, holder)
        return {"skipped": True, "reason": "another retraining is running"}
    try:
        return {"skipped": False, **retrain()}
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("the retraining lock %s expired before the run ended; raise "
                        "CXR_RETRAIN_LOCK_TTL_S above the longest run", key)
