"""Idempotency-Key handling: the same key from the same client means the same job.

A claim binds (client, key) to a job id and the sha256 of the upload, for
`CXR_IDEMPOTENCY_TTL_SECONDS`. It is kept where the job itself is kept: in Redis (`SET NX`, what
makes two concurrent requests agree on one job) and in storage (`idempotency/<sha256 of client
and key>.json`, written, synced, before the job is created). Redis may lose its data (a restart
with nothing on disk); the job record survives in storage, and so does its claim: a request
that finds no claim in Redis reads the durable one and puts it back in Redis.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.concurrency import run_in_threadpool

from services.gateway.errors import IdempotencyConflictError, InvalidIdempotencyKeyError
from shared.errors import ObjectNotFoundError
from shared.storage import Storage

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")
STORAGE_PREFIX = "idempotency/"


@dataclass(frozen=True)
class Claim:
    """The job an idempotency key stands for, and whether this request created the claim."""

    job_id: str
    is_new: bool


class IdempotencyKeys:
    """Claims of {job_id, sha256 of the upload, expiry} under the client and key, in Redis and
    in storage (see the module's docstring)."""

    def __init__(self, redis: Redis, storage: Storage, ttl_seconds: int,
                 prefix: str = "cxr:idempotency") -> None:
        self._redis = redis
        self._storage = storage
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

    @staticmethod
    def storage_key(client: str, key: str) -> str:
        """Where the durable claim lives: neither the client's name nor its key shapes a path."""
        digest = hashlib.sha256(f"{client}\n{key}".encode()).hexdigest()
        return f"{STORAGE_PREFIX}{digest}.json"

    async def existing(self, client: str, key: str, content_sha256: str) -> str | None:
        """The job already made under this key, or None; 409 if it was made for other bytes."""
        raw = await self._redis.get(self._redis_key(client, key))
        if raw is None:
            raw = await self._restore(client, key)
        return None if raw is None else self._job_of(raw, content_sha256)

    async def claim(self, client: str, key: str, content_sha256: str, job_id: str) -> Claim:
        """Atomically bind the key to `job_id`; if another request got there first, its job.

        The durable copy is written before this returns a new claim; a storage error releases
        the Redis claim and propagates (503), so no job is made without its claim on disk.
        """
        redis_key = self._redis_key(client, key)
        value = json.dumps({"job_id": job_id, "sha256": content_sha256,
                            "expires_at": time.time() + self._ttl})
        if not await self._redis.set(redis_key, value, nx=True, ex=self._ttl):
            existing = await self.existing(client, key, content_sha256)
            if existing is None:  # expired between the two calls: try once more
                return await self.claim(client, key, content_sha256, job_id)
            if existing != job_id:
                return Claim(existing, False)
            # Our own SET landed and only its answer was lost (the command was retried on a new
            # connection): the claim is this request's.
        try:
            durable = await run_in_threadpool(self._read_durable, client, key)
            if durable is not None:
                # A claim made before Redis lost its data, restored by no request yet: it wins.
                await self._cache(redis_key, durable)
                return Claim(self._job_of(durable, content_sha256), False)
            await run_in_threadpool(self._storage.put, self.storage_key(client, key),
                                    value.encode(), "application/json")
        except BaseException:
            await self._redis.delete(redis_key)
            raise
        return Claim(job_id, True)

    async def release(self, client: str, key: str) -> None:
        """Forget a claim whose job could not be created, so the client can retry with the key."""
        await self._redis.delete(self._redis_key(client, key))
        await run_in_threadpool(self._storage.delete, self.storage_key(client, key))

    async def _restore(self, client: str, key: str) -> bytes | None:
        """The durable claim, put back in Redis for the rest of its lifetime; None if none."""
        raw = await run_in_threadpool(self._read_durable, client, key)
        if raw is not None:
            await self._cache(self._redis_key(client, key), raw)
        return raw

    async def _cache(self, redis_key: str, raw: bytes) -> None:
        left = int(json.loads(raw)["expires_at"] - time.time())
        if left > 0:
            await self._redis.set(redis_key, raw, nx=True, ex=left)

    def _read_durable(self, client: str, key: str) -> bytes | None:
        try:
            raw = self._storage.get(self.storage_key(client, key))
        except ObjectNotFoundError:
            return None
        return raw if json.loads(raw)["expires_at"] > time.time() else None

    @staticmethod
    def _job_of(raw: bytes | str, content_sha256: str) -> str:
        claim = json.loads(raw)
        if claim["sha256"] != content_sha256:
            raise IdempotencyConflictError()
        return str(claim["job_id"])
