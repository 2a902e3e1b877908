"""Job records in Redis (fast, may be lost) and in storage (durable), with checked state changes.

Redis holds `cxr:job:{job_id}` with a TTL; storage holds `jobs/{job_id}.json` forever. Reads try
Redis first and fall back to storage, caching what they find. Updates are read-modify-write under
a Redis WATCH, so two deliveries of the same task cannot interleave their changes; a finished job
(succeeded or failed) never changes again.

Storage also keeps an index of the jobs not finished yet: an empty marker `jobs-open/{job_id}`,
written before the job's record and removed once it has finished, so that finding unfinished jobs
(the reconciler, after Redis lost its data) lists the few open markers instead of reading every
record ever kept. A marker left by a crash after the finish is removed by the next such listing.

A third, durable index lists each client's jobs by creation time: an empty marker
`jobs-by-client/c-{client}/{created}-{job_id}` (client name percent-encoded, `created` as
`YYYYMMDDTHHMMSSffffffZ`, so names sort by time). `GET /v1/predictions` pages through one client's
markers newest first, and the retention purge finds old jobs by the time in their names, both
without reading every record. `delete` removes the marker last: a delete cut short is finished
by the next delete or purge that finds it.

When a job finishes, its status is published on the Redis channel `cxr:job-finished:{job_id}` in
the same transaction that stores the record, so a client waiting on the job (the gateway's
`?wait=`) can answer at once instead of polling. The message is only a wake-up call: subscribers
read the record itself, and one lost message costs a waiter at most its polling interval.

Redis also keeps the sorted set `cxr:jobs:in-flight` of the jobs accepted and not finished, each
scored by when the project last saw it move: accepted, started (each attempt), or put back in the
queue (`requeue`, `save`). Every write of an unfinished record sets its score, in the same
transaction; the write that finishes a job, and `delete`, remove it. The reconciler reads it beside
the open-jobs index (docs/reliability.md, "Reconciler").
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from urllib.parse import unquote

import redis
from pydantic import ValidationError

from shared.errors import (
    InvalidJobTransitionError,
    JobExistsError,
    JobHasNoResultError,
    JobNotFinishedError,
    JobNotFoundError,
    ObjectNotFoundError,
)
from shared.jobs.keys import (
    CLIENT_INDEX_PREFIX,
    IN_FLIGHT_KEY,
    INDEX_ENTRY_PATTERN,
    OPEN_PREFIX,
    client_index_key,
    client_index_prefix,
    finished_channel,
    index_stamp,
    open_marker_key,
    parse_index_stamp,
    redis_key,
    storage_key,
)
from shared.jobs.records import JOB_ID_PATTERN, JobRecord, JobStatus
from shared.schemas import Failure, Feedback, PredictionResult, utc_now
from shared.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 7 * 24 * 3600
_JOB_ID = re.compile(JOB_ID_PATTERN)
_INDEX_ENTRY = re.compile(INDEX_ENTRY_PATTERN)

# A change returns the new record, or None to leave the stored one as it is.
RecordChange = Callable[[JobRecord], JobRecord | None]
# Runs a creator's own write beside the marker's (each local write waits on its own fsync).
_BESIDE = ThreadPoolExecutor(max_workers=8, thread_name_prefix="job-create")


@dataclass(frozen=True)
class IndexEntry:
    """One client-index marker: whose job, when it was created, and its storage key."""

    key: str
    client: str
    created_at: datetime
    job_id: str

    @property
    def name(self) -> str:
        """`{created}-{job_id}`: sorts by creation time; the cursor of a job list."""
        return self.key.rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, key: str) -> IndexEntry | None:
        folder, _, name = key.removeprefix(CLIENT_INDEX_PREFIX).rpartition("/")
        if not folder.startswith("c-") or "/" in folder or not _INDEX_ENTRY.match(name):
            return None
        stamp, _, job_id = name.partition("-")
        created = parse_index_stamp(stamp)
        return cls(key, unquote(folder[2:]), created, job_id)


@dataclass(frozen=True)
class JobPage:
    """One page of a client's jobs, newest first; `next_cursor` is None on the last page."""

    records: list[JobRecord]
    next_cursor: str | None


class JobStore:
    """Create, read and move prediction jobs through queued -> running -> succeeded | failed."""

    def __init__(self, redis_client: redis.Redis, storage: Storage,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._storage = storage
        self._ttl = ttl_seconds

    def create(self, record: JobRecord, *,
               alongside: Callable[[], object] | None = None) -> JobRecord:
        """Store a new job; JobExistsError if its id is already known to Redis or storage.

        `alongside` (e.g. the upload's own write) runs in a thread beside the open-jobs marker's
        write; both finish before the record is written, so a durable record always has them.
        """
        if self._storage.exists(storage_key(record.job_id)):
            raise JobExistsError(f"A prediction job with id {record.job_id} already exists.")
        if not self._redis.set(redis_key(record.job_id), record.model_dump_json(), ex=self._ttl,
                               nx=True):
            raise JobExistsError(f"A prediction job with id {record.job_id} already exists.")
        if not record.status.finished:
            self._redis.zadd(IN_FLIGHT_KEY, {record.job_id: time.time()})
        index_key = client_index_key(record)
        try:
            pending: list[Future[object]] = [_BESIDE.submit(self._storage.put, index_key, b"")]
            if alongside is not None:
                pending.append(_BESIDE.submit(alongside))
            try:
                if not record.status.finished:
                    self._storage.put(open_marker_key(record.job_id), b"")  # before the record
            finally:
                for write in pending:
                    write.result()  # its error, if any, is the caller's
            self._write_durable(record)
        except BaseException:
            with self._redis.pipeline() as pipe:  # no half-created job: the id stays free
                pipe.delete(redis_key(record.job_id))
                pipe.zrem(IN_FLIGHT_KEY, record.job_id)
                pipe.execute()
            try:
                self._storage.delete(index_key)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                log.warning("index marker of job %s left behind", record.job_id)
            raise
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The record, from Redis or else from storage (then cached again); None if unknown."""
        if not _JOB_ID.match(job_id):
            return None
        raw = self._redis.get(redis_key(job_id))
        if raw is not None:
            return JobRecord.model_validate_json(raw)
        record = self._read_durable(job_id)
        if record is not None:
            self._redis.set(redis_key(job_id), record.model_dump_json(), ex=self._ttl, nx=True)
        return record

    def save(self, record: JobRecord) -> JobRecord:
        """Overwrite both copies as given; state changes should go through the mark_* methods."""
        with self._redis.pipeline() as pipe:  # MULTI: the record and its notice together
            pipe.set(redis_key(record.job_id), record.model_dump_json(), ex=self._ttl)
            _note_in_flight(pipe, record)
            if record.status.finished:
                pipe.publish(finished_channel(record.job_id), record.status.value)
            pipe.execute()
        if not record.status.finished:
            self._storage.put(open_marker_key(record.job_id), b"")
        self._write_durable(record)
        if record.status.finished:
            self._storage.delete(open_marker_key(record.job_id))
        return record

    def mark_running(self, job_id: str) -> JobRecord:
        """Start an attempt. A finished job is returned unchanged: check `.status.finished`."""

        def start(record: JobRecord) -> JobRecord | None:
            if record.status.finished:
                return None
            attempts = record.attempts + 1
            return record.model_copy(update={
                "status": JobStatus.RUNNING, "started_at": utc_now(), "attempts": attempts,
            })

        # Not synced to disk: after a power cut the durable copy says queued, which re-queues the
        # job just the same; one fsync less on every job's critical path.
        return self._update(job_id, start, sync=False)

    def mark_succeeded(self, job_id: str, result: PredictionResult,
                       heatmap_key: str | None = None,
                       attention_key: str | None = None) -> JobRecord:
        """Record the result; a job that already succeeded keeps its first result."""
        return self._finish(job_id, JobStatus.SUCCEEDED,
                            {"result": result, "heatmap_key": heatmap_key,
                             "attention_key": attention_key, "failure": None})

    def mark_failed(self, job_id: str, failure: Failure) -> JobRecord:
        """Record why the job failed; a job that already failed keeps its first reason."""
        return self._finish(job_id, JobStatus.FAILED, {"failure": failure})

    def set_extra(self, job_id: str, key: str, value: object) -> JobRecord:
        """Set `extra[key]` (e.g. the PACS report state), whatever the job's status."""
        return self._update(
            job_id, lambda record: record.model_copy(update={"extra": {**record.extra, key: value}})
        )

    def list_for_client(self, client: str, *, limit: int, cursor: str | None = None,
                        status: JobStatus | None = None,
                        created_after: datetime | None = None,
                        created_before: datetime | None = None) -> JobPage:
        """`client`'s jobs newest first, at most `limit`, after `cursor` (a previous page's
        `next_cursor`), created in [`created_after`, `created_before`) and of `status`.

        Lists the client's index markers (names only), then reads records until the page is full;
        a marker whose record is gone (a delete in progress) is skipped.
        """
        low = index_stamp(created_after) if created_after else ""
        high = index_stamp(created_before) if created_before else None
        names = [key.rsplit("/", 1)[-1] for key in self._storage.list(client_index_prefix(client))]
        records: list[JobRecord] = []
        last_name = None
        for name in sorted(names, reverse=True):
            if cursor is not None and name >= cursor:
                continue
            stamp, _, job_id = name.partition("-")
            if high is not None and stamp >= high:
                continue
            if stamp < low:
                break
            if len(records) == limit:
                return JobPage(records, last_name)
            record = self.get(job_id)
            last_name = name
            if record is None or record.client_id != client:
                continue
            if status is None or record.status == status:
                records.append(record)
        return JobPage(records, None)

    def index_entries(self, created_before: datetime | None = None) -> list[IndexEntry]:
        """Every client-index marker (of every client), oldest first; only those created before
        `created_before` when given."""
        high = index_stamp(created_before) if created_before else None
        entries = [entry for key in self._storage.list(CLIENT_INDEX_PREFIX)
                   if (entry := IndexEntry.parse(key)) is not None
                   and (high is None or entry.name < high)]
        return sorted(entries, key=lambda entry: entry.name)

    def delete(self, job_id: str, index_key: str | None = None) -> None:
        """Forget the job: its durable record, Redis copy, open-jobs marker and index marker.

        `index_key`: the marker to remove when the record is already gone. Its blobs (upload,
        result, heatmap) are the caller's: `shared.retention.erase_job` removes them first.
        """
        record = self._read_durable(job_id) if _JOB_ID.match(job_id) else None
        if record is None:
            raw = self._redis.get(redis_key(job_id)) if _JOB_ID.match(job_id) else None
            record = JobRecord.model_validate_json(raw) if raw is not None else None
        self._storage.delete(storage_key(job_id))
        with self._redis.pipeline() as pipe:
            pipe.delete(redis_key(job_id))
            pipe.zrem(IN_FLIGHT_KEY, job_id)
            pipe.execute()
        self._storage.delete(open_marker_key(job_id))
        if record is not None:
            self._storage.delete(client_index_key(record))
        if index_key is not None:
            self._storage.delete(index_key)

    def set_feedback(self, job_id: str, feedback: Callable[[JobRecord], Feedback]) -> JobRecord:
        """Set the job's reader feedback, made by `feedback` from the current record.

        Only a succeeded job takes it: JobNotFinishedError while queued or running,
        JobHasNoResultError once failed. A concurrent feedback on the same job re-reads the
        record first (WATCH), so each one's revision follows the other's.
        """

        def change(record: JobRecord) -> JobRecord:
            if not record.status.finished:
                raise JobNotFinishedError()
            if record.status is not JobStatus.SUCCEEDED or record.result is None:
                raise JobHasNoResultError()
            return record.model_copy(update={"feedback": feedback(record)})

        return self._update(job_id, change)

    def requeue(self, job_id: str) -> JobRecord:
        """Record that the job is being sent to the queue again, now (its in-flight time), and
        restore its Redis copy from storage if Redis lost it. A finished job is returned unchanged
        (check `.status.finished`: it must not be sent again)."""

        def again(record: JobRecord) -> JobRecord | None:
            return None if record.status.finished else record.model_copy()

        return self._update(job_id, again)

    def in_flight(self) -> dict[str, float]:
        """Accepted, unfinished jobs Redis knows of: job id -> when the project last saw it move
        (Unix time). Empty after Redis lost its data, though storage still has open jobs."""
        entries = cast(list[tuple[bytes | str, float]],
                       self._redis.zrange(IN_FLIGHT_KEY, 0, -1, withscores=True))
        return {_text(job_id): float(score) for job_id, score in entries}

    def list_unfinished(self, *, scan_all: bool = False) -> list[JobRecord]:
        """Queued and running jobs from the durable copy, oldest first (for re-queueing).

        Reads the records the open-jobs index names, and removes the markers of jobs that turn
        out to be finished. `scan_all` reads every record instead (for records written before the
        indexes existed), marks the unfinished ones open and gives every record its client-index
        marker (so older jobs are listed, deleted and purged like new ones).
        """
        if scan_all:
            keys = [key for key in self._storage.list("jobs/") if key.endswith(".json")]
        else:
            keys = [storage_key(key[len(OPEN_PREFIX):])
                    for key in self._storage.list(OPEN_PREFIX)]
        unfinished = []
        for key in keys:
            try:
                record = self._parse_durable(key, self._storage.get(key))
            except ObjectNotFoundError:
                continue  # a marker whose job is still being created, or never was
            if record is None:
                continue
            if scan_all and not self._storage.exists(client_index_key(record)):
                self._storage.put(client_index_key(record), b"")
            if record.status.finished:
                if not scan_all:
                    self._storage.delete(open_marker_key(record.job_id))
                continue
            if scan_all:
                self._storage.put(open_marker_key(record.job_id), b"")
            unfinished.append(record)
        return sorted(unfinished, key=lambda record: record.created_at)

    def _finish(self, job_id: str, outcome: JobStatus, fields: dict[str, object]) -> JobRecord:
        """Move to `outcome` once; repeating the same outcome is a no-op, the other one an error."""

        def finish(record: JobRecord) -> JobRecord | None:
            if record.status is outcome:
                return None
            if record.status.finished:
                raise InvalidJobTransitionError(
                    f"Job {record.job_id} already {record.status.value}; "
                    f"it cannot become {outcome.value}."
                )
            return record.model_copy(update={"status": outcome, "finished_at": utc_now(), **fields})

        return self._update(job_id, finish)

    def _update(self, job_id: str, change: RecordChange, *, sync: bool = True) -> JobRecord:
        if not _JOB_ID.match(job_id):
            raise JobNotFoundError(f"No prediction job has id {job_id!r}.")
        key = redis_key(job_id)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    current = (JobRecord.model_validate_json(raw) if raw is not None
                               else self._read_durable(job_id))
                    if current is None:
                        raise JobNotFoundError(f"No prediction job has id {job_id}.")
                    updated = change(current)
                    if updated is None:
                        pipe.unwatch()
                        return current
                    # Durable copy before the commit: whoever commits last also wrote storage
                    # last, so once the writers are done storage holds what Redis holds.
                    self._write_durable(updated, sync=sync)
                    pipe.multi()
                    pipe.set(key, updated.model_dump_json(), ex=self._ttl)
                    _note_in_flight(pipe, updated)
                    if updated.status.finished and not current.status.finished:
                        pipe.publish(finished_channel(job_id), updated.status.value)
                    pipe.execute()
                    if updated.status.finished and not current.status.finished:
                        self._storage.delete(open_marker_key(job_id))
                    return updated
                except redis.WatchError:
                    continue  # another process changed the record first: re-read and re-apply

    def _write_durable(self, record: JobRecord, *, sync: bool = True) -> None:
        write = self._storage.put if sync else self._storage.put_unsynced
        write(storage_key(record.job_id), record.model_dump_json().encode(),
              content_type="application/json")

    def _read_durable(self, job_id: str) -> JobRecord | None:
        try:
            data = self._storage.get(storage_key(job_id))
        except ObjectNotFoundError:
            return None
        return self._parse_durable(storage_key(job_id), data)

    @staticmethod
    def _parse_durable(key: str, data: bytes) -> JobRecord | None:
        try:
            return JobRecord.model_validate_json(data)
        except ValidationError as exc:
            log.error("skipping unreadable job record %s: %s", key, exc)
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _note_in_flight(pipe: redis.client.Pipeline, record: JobRecord) -> None:
    """In the transaction that writes `record`: an unfinished job moved now; a finished one is no
    longer in flight."""
    if record.status.finished:
        pipe.zrem(IN_FLIGHT_KEY, record.job_id)
    else:
        pipe.zadd(IN_FLIGHT_KEY, {record.job_id: time.time()})
