"""Storage and Redis keys the worker writes (layout in docs/architecture.md, "Storage").

The storage keys of a job's files live in `shared.jobs`, beside the record's, so the delete and
the retention purge (`shared.retention`) remove exactly what the worker writes.
"""

from shared.jobs import attention_key, heatmap_key, result_key

__all__ = ["attention_key", "heatmap_key", "job_lock_key", "result_key"]


def job_lock_key(job_id: str) -> str:
    return f"cxr:job-lock:{job_id}"
