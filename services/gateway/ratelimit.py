"""Per-client request limit: a fixed one-minute window counted in Redis, shared by every replica."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from services.gateway.errors import RateLimitedError

WINDOW_SECONDS = 60


class RateLimiter:
    """At most `per_minute` requests per client per clock minute; 429 with Retry-After beyond."""

    def __init__(self, redis: Redis, per_minute: int, prefix: str = "cxr:ratelimit") -> None:
        self._redis = redis
        self.per_minute = per_minute
        self._prefix = prefix

    async def hit(self, client: str, now: float | None = None) -> int:
        """Count one request for `client`; return how many remain in this window."""
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        key = f"{self._prefix}:{client}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
        if count > self.per_minute:
            retry_after = int((window + 1) * WINDOW_SECONDS - now) + 1
            raise RateLimitedError(self.per_minute, retry_after)
        return self.per_minute - count
