"""Which failures the task retries, and the per-job lock that serialises duplicate deliveries."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from services.worker import dead_letter
from services.worker.errors import (
    AttemptsExhaustedError,
    JobBusyError,
    RedisUnavailableError,
    TaskTimeoutError,
)
from services.worker.pipeline import WorkerDeps, process_job
from services.worker.settings import WorkerSettings, get_settings
from services.worker.tasks import as_transient, predict, reset_worker_deps, worker_deps
from shared.errors import CorruptImageError, ModelUnavailableError, StorageError
from shared.jobs.keys import job_lock_key
from shared.jobs.records import JobRecord, JobStatus
from tests.support.procs import free_port


@pytest.mark.parametrize(("raised", "expected"), [
    (redis.exceptions.ConnectionError("refused"), RedisUnavailableError),
    (redis.exceptions.TimeoutError("slow"), RedisUnavailableError),
    (SoftTimeLimitExceeded(), TaskTimeoutError),
    (StorageError("S3 503"), StorageError),
    (ModelUnavailableError("down"), ModelUnavailableError),
])
def test_transient_failures_are_retried(raised, expected):
    error = as_transient(raised)
    assert isinstance(error, expected) and error.transient


@pytest.mark.parametrize("raised", [CorruptImageError(), ValueError("bug"), KeyError("x")])
def test_permanent_failures_and_bugs_are_not_retried(raised):
    assert as_transient(raised) is None


def test_a_second_delivery_while_the_first_holds_the_job_is_retried_later(redis_url, tmp_path):
    settings = WorkerSettings(redis_url=redis_url, storage_root=str(tmp_path),
                              model_server_grpc=f"127.0.0.1:{free_port()}")
    deps = WorkerDeps.from_settings(settings)
    try:
        assert deps.redis.set(job_lock_key("job-1"), "first-delivery", nx=True, ex=60)
        with pytest.raises(JobBusyError) as raised:
            process_job("job-1", deps)
        assert raised.value.transient
        assert deps.redis.get(job_lock_key("job-1")) == b"first-delivery"  # not taken over
    finally:
        deps.close()


def test_a_job_started_too_often_is_dead_lettered_without_running(redis_url, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("CXR_REDIS_URL", redis_url)
    monkeypatch.setenv("CXR_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CXR_MODEL_SERVER_GRPC", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CXR_JOB_MAX_ATTEMPTS", "12")
    get_settings.cache_clear()
    reset_worker_deps()
    try:
        deps = worker_deps()
        # As after eleven deliveries whose worker was killed mid-task (no Celery retry counted).
        deps.jobs.create(JobRecord(job_id="poison", client_id="t", upload_key="uploads/poison",
                                   status=JobStatus.RUNNING, attempts=12))
        with pytest.raises(AttemptsExhaustedError):
            process_job("poison", deps)

        assert predict("poison") == "dead_lettered"  # the task body, called in this process
        record = deps.jobs.get("poison")
        assert record.status is JobStatus.FAILED
        assert record.failure.code == "retries_exhausted"
        assert "attempts_exhausted" in record.failure.message
        (entry,) = dead_letter.entries(deps.redis, deps.settings.dead_letter_key)
        assert (entry.job_id, entry.error_code) == ("poison", "attempts_exhausted")
    finally:
        reset_worker_deps()
        get_settings.cache_clear()
