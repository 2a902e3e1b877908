"""The `cxr.purge` task: erase every job older than `CXR_RETENTION_DAYS` (`shared.retention`).

Celery beat (`services.trainer.celery_app`) sends it on `CXR_RETENTION_PURGE_CRON` to the
`inference` queue; `python -m services.worker purge` runs the same pass once by hand. A pass is
safe to repeat or to run twice at once: erasing what is gone already is no error.
"""

from __future__ import annotations

import logging

from services.worker.celery_app import app
from services.worker.settings import WorkerSettings, get_settings
from services.worker.tasks import worker_deps
from shared.audit import ensure_audit
from shared.jobs.queue import PURGE_TASK
from shared.jobs.store import JobStore
from shared.reidentification import ReidentificationKeys
from shared.retention import PurgeResult, purge_expired
from shared.storage import Storage

log = logging.getLogger(__name__)


def run_purge(settings: WorkerSettings, storage: Storage, jobs: JobStore) -> PurgeResult:
    """Erase the jobs past `CXR_RETENTION_DAYS`, and the re-identification keys past
    `CXR_REID_RETENTION_DAYS` (unreadable already; their job may live longer)."""
    ensure_audit(settings.audit_log)
    reid = ReidentificationKeys.from_settings(settings)
    result = purge_expired(storage, jobs, settings.retention_days, reid=reid)
    if reid is not None:
        removed = reid.purge_expired()
        if removed:
            log.info("retention purge: %d expired re-identification keys deleted", removed)
    return result


@app.task(name=PURGE_TASK)
def purge() -> int:
    """One purge pass; returns how many jobs it erased."""
    deps = worker_deps()
    result = run_purge(get_settings(), deps.storage, deps.jobs)
    if result.cutoff is None:
        log.info("retention purge: CXR_RETENTION_DAYS is 0, every job is kept")
    return len(result.purged)
