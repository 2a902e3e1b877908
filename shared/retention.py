"""The end of a job's life: `erase_job` (one job, on request) and `purge_expired` (by age).

Both remove everything the service keeps about a job: the upload, the result JSON, the heatmap
overlay and its Grad-CAM map, the re-identification key (where kept), and the record with its
Redis copy and index markers (`shared.jobs.store.JobStore.delete`, last, so a delete cut short is
finished by the next one). `DELETE /v1/predictions/{job_id}` calls `erase_job`; the scheduled
purge (`cxr.purge`, sent by Celery beat on `CXR_RETENTION_PURGE_CRON`) calls `purge_expired`,
which erases every job created more than `CXR_RETENTION_DAYS` days ago through the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.audit import AuditEntry
from shared.jobs.keys import attention_key, heatmap_key, result_key, shadow_key
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.reidentification import ReidentificationKeys
from shared.storage import Storage

log = logging.getLogger(__name__)
PURGE_CLIENT = "retention"  # the audit trail's name for the purge


def job_files(job_id: str, record: JobRecord | None) -> list[str]:
    """Every storage key holding data of the job: the ones the record names and the ones the
    worker writes by convention (there even when the record is already gone)."""
    keys = [f"uploads/{job_id}", result_key(job_id), heatmap_key(job_id), attention_key(job_id),
            shadow_key(job_id)]
    if record is not None:
        keys += [key for key in (record.upload_key, record.heatmap_key, record.attention_key)
                 if key]
    return list(dict.fromkeys(keys))


def erase_job(storage: Storage, jobs: JobStore, job_id: str, *,
              reid: ReidentificationKeys | None = None,
              record: JobRecord | None = None, index_key: str | None = None) -> None:
    """Delete the job's files, its re-identification key, then its record; missing parts are no
    error (a repeated or interrupted erase just finishes)."""
    record = record if record is not None else jobs.get(job_id)
    for key in job_files(job_id, record):
        storage.delete(key)
    if reid is not None:
        reid.forget(job_id)
    jobs.delete(job_id, index_key=index_key)


@dataclass
class PurgeResult:
    cutoff: datetime | None
    purged: list[str] = field(default_factory=list)


def purge_expired(storage: Storage, jobs: JobStore, retention_days: int, *,
                  reid: ReidentificationKeys | None = None,
                  now: datetime | None = None) -> PurgeResult:
    """Erase every job created before `now - retention_days`; nothing when `retention_days` is 0.

    Old jobs are found by the creation time in the client index's marker names (no record is read
    to decide); each erase is one audit line (client `retention`, the owner in `owner`).
    """
    if retention_days <= 0:
        return PurgeResult(None)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    result = PurgeResult(cutoff)
    for entry in jobs.index_entries(created_before=cutoff):
        erase_job(storage, jobs, entry.job_id, reid=reid, index_key=entry.key)
        AuditEntry(PURGE_CLIENT, "purge", entry.job_id, status=204,
                   extra={"owner": entry.client, "created_at": entry.created_at.isoformat(),
                          "retention_days": retention_days}).emit()
        result.purged.append(entry.job_id)
    if result.purged:
        log.info("retention purge: %d jobs created before %s erased", len(result.purged),
                 cutoff.isoformat())
    return result
