"""The dead-letter list: jobs that used up their retries, kept in Redis for operators.

Each entry is JSON (`job_id`, `task`, `error` code and message, `retries`, `failed_at`); the job
itself is marked failed with reason `retries_exhausted`. `requeue` puts such a job back in the
queue: its record returns to `queued` with no attempts counted, and a new task is sent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis

from shared.errors import CXRError
from shared.jobs.records import JobStatus
from shared.jobs.store import JobStore
from shared.schemas import Failure, utc_now

RETRIES_EXHAUSTED = "retries_exhausted"


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    task: str
    error_code: str
    error_message: str
    retries: int
    failed_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        return cls(**json.loads(raw))


def exhausted_failure(error: CXRError, retries: int) -> Failure:
    return Failure(
        code=RETRIES_EXHAUSTED,
        message=f"Gave up after {retries} retries; last error {error.code}: {error.message}",
    )


def push(
    client: redis.Redis, key: str, job_id: str, task: str, error: CXRError, retries: int
) -> DeadLetter:
    entry = DeadLetter(job_id, task, error.code, error.message, retries, utc_now().isoformat())
    client.rpush(key, entry.to_json())
    return entry


def entries(client: redis.Redis, key: str) -> list[DeadLetter]:
    """Every entry, oldest first."""
    return [DeadLetter.from_json(raw) for raw in client.lrange(key, 0, -1)]


def take_for_requeue(
    client: redis.Redis, key: str, jobs: JobStore, job_id: str | None = None
) -> list[str]:
    """Remove entries (all, or those of `job_id`) and set their jobs back to queued.

    Returns the job ids the caller must send to the queue again.
    """
    taken = []
    for raw in client.lrange(key, 0, -1):
        entry = DeadLetter.from_json(raw)
        if job_id is not None and entry.job_id != job_id:
            continue
        if client.lrem(key, 1, raw) == 0:  # another operator took it meanwhile
            continue
        record = jobs.get(entry.job_id)
        if record is None:
            continue
        jobs.save(
            record.model_copy(
                update={
                    "status": JobStatus.QUEUED,
                    "failure": None,
                    "finished_at": None,
                    "started_at": None,
                    "attempts": 0,  # a fresh budget of attempts
                }
            )
        )
        taken.append(entry.job_id)
    return taken
