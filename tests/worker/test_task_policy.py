"""Which failures the task retries, and the per-job lock that serialises duplicate deliveries."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY

from services.worker import dead_letter, tasks
from services.worker.errors import (
    AttemptsExhaustedError,
    JobBusyError,
    RedisUnavailableError,
    TaskTimeoutError,
)
from services.worker.job import WorkerDeps, process_job
from services.worker.settings import WorkerSettings, get_settings
from services.worker.tasks import as_transient, predict, reset_worker_deps, worker_deps
from shared.errors import CorruptImageError, ModelUnavailableError, StorageError
from shared.jobs.keys import job_lock_key
from shared.jobs.records import JobRecord, JobStatus
from shared.task_retries import TransientFailure
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


@pytest.fixture
def deps(redis_url, tmp_path, monkeypatch) -> Iterator[WorkerDeps]:
    """The task's own dependencies, built from the environment, on a test Redis and folder; no
    model server answers."""
    monkeypatch.setenv("CXR_REDIS_URL", redis_url)
    monkeypatch.setenv("CXR_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CXR_MODEL_SERVER_GRPC", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CXR_JOB_MAX_ATTEMPTS", "12")
    get_settings.cache_clear()
    reset_worker_deps()
    try:
        yield worker_deps()
    finally:
        reset_worker_deps()
        get_settings.cache_clear()


def test_a_job_started_too_often_is_dead_lettered_without_running(deps):
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


def test_a_transient_error_is_retried_by_celery_until_the_retries_run_out(deps, monkeypatch,
                                                                          caplog):
    """Celery's autoretry runs the retries (eagerly here); the last failure dead-letters the job
    with the error and the retry count, and each retry is counted by its error code."""
    starts = []

    def model_server_down(job_id, deps):
        starts.append(job_id)
        raise ModelUnavailableError("down for maintenance")

    monkeypatch.setattr(tasks, "process_job", model_server_down)
    monkeypatch.setattr(predict, "max_retries", 2)
    retried = REGISTRY.get_sample_value("cxr_worker_retries_total",
                                        {"code": "model_unavailable"}) or 0.0
    deps.jobs.create(JobRecord(job_id="flaky", client_id="t", upload_key="uploads/flaky"))
    with caplog.at_level(logging.WARNING, logger=tasks.log.name):
        outcome = predict.apply(args=["flaky"], task_id="flaky")

    assert outcome.failed() and isinstance(outcome.result, TransientFailure)
    assert starts == ["flaky"] * 3  # the first try and two retries
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert [line.split(" in ")[0] for line in retries] == [
        "job flaky: model_unavailable; retry 1/2", "job flaky: model_unavailable; retry 2/2"]
    # Exponential backoff with full jitter: the n-th countdown lies in [0, 2 * 2**(n-1)] s.
    countdowns = [float(line.rsplit(" in ", 1)[1].removesuffix("s")) for line in retries]
    assert all(0 <= countdown <= 2 * 2**n for n, countdown in enumerate(countdowns))
    assert REGISTRY.get_sample_value("cxr_worker_retries_total",
                                     {"code": "model_unavailable"}) == retried + 2
    record = deps.jobs.get("flaky")
    assert record.status is JobStatus.FAILED
    assert record.failure.code == "retries_exhausted"
    assert "down for maintenance" in record.failure.message
    (entry,) = dead_letter.entries(deps.redis, deps.settings.dead_letter_key)
    assert (entry.job_id, entry.task, entry.error_code, entry.retries) == (
        "flaky", "cxr.predict", "model_unavailable", 2)


def test_a_bug_is_not_retried(deps, monkeypatch):
    starts = []

    def bug(job_id, deps):
        starts.append(job_id)
        raise KeyError("a bug")

    monkeypatch.setattr(tasks, "process_job", bug)
    deps.jobs.create(JobRecord(job_id="buggy", client_id="t", upload_key="uploads/buggy"))
    outcome = predict.apply(args=["buggy"], task_id="buggy")
    assert outcome.failed() and isinstance(outcome.result, KeyError)
    assert starts == ["buggy"]
    assert deps.jobs.get("buggy").failure.code == "internal_error"
    assert dead_letter.entries(deps.redis, deps.settings.dead_letter_key) == []
