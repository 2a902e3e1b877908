"""Idempotency-Key handling: the same key from the same client means the same job."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from redis.asyncio import Redis

from services.gateway.errors import IdempotencyConflictError, InvalidIdempotencyKeyError

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Claim:
    """The job an idempotency key stands for, and whether this request created the claim."""

    job_id: str
    is_new: bool


class IdempotencyKeys:
    """Claims in Redis: `SET NX` of {job_id, sha256 of the upload} under the client and key."""

    def __init__(self, redis: Redis, ttl_seconds: int, prefix: str = "cxr:idempotency") -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._prefix = prefix

    @staticmethod
    def validate(key: str) -> str:
        if not KEY_PATTERN.match(key):
            raise InvalidIdempotencyKeyError()
        return key

    def _redis_key(self, client: str, key: str) -> str:
        # Hashed so a key's characters never shape the Redis key space.
        return f"{self._prefix}:{client}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def existing(self, client: str, key: str, content_sha256: str) -> str | None:
        """The job already made under this key, or None; 409 if it was made for other bytes."""
        raw = await self._redis.get(self._redis_key(client, key))
        if raw is None:
            return None
        claim = json.loads(raw)
        if claim["sha256"] != content_sha256:
            raise IdempotencyConflictError()
        return str(claim["job_id"])

    async def claim(self, client: str, key: str, content_sha256: str, job_id: str) -> Claim:
        """Atomically bind the key to `job_id`; if another request got there first, its job."""
        value = json.dumps({"job_id": job_id, "sha256": content_sha256})
        if await self._redis.set(self._redis_key(client, key), value, nx=True, ex=self._ttl):
            return Claim(job_id, True)
        existing = await self.existing(client, key, content_sha256)
        if existing is None:  # expired between the two calls: try once more
            return await self.claim(client, key, content_sha256, job_id)
        return Claim(existing, False)

    async def release(self, client: str, key: str) -> None:
        """Forget a claim whose job could not be created, so the client can retry with the key."""
        await self._redis.delete(self._redis_key(client, key))
