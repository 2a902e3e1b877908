"""Redis clients that outlive a Redis restart: the one policy every service's clients use.

A pooled connection that died with Redis (a restart, a failover) fails its next command, and
redis-py's clients made by `from_url` do not retry it (their connections get no retries). Each
command is retried on a fresh connection instead: up to `REDIS_RETRIES` times, with exponential
backoff and jitter from 50 ms up to 1 s, so a restart costs a command a moment, not an error.
A Redis that stays down still fails the command after those retries.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

REDIS_RETRIES = 3


def redis_backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def redis_retry() -> Retry:
    """The retry policy of a synchronous client (asyncio clients: the same backoff and count)."""
    return Retry(redis_backoff(), REDIS_RETRIES)


def redis_client(url: str, **options: Any) -> redis.Redis:
    """`redis.Redis.from_url(url, **options)` whose commands survive a Redis restart."""
    return redis.Redis.from_url(url, retry=redis_retry(), **options)
