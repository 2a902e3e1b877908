"""Which failures the task retries, and the per-job lock that serialises duplicate deliveries."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from services.worker.errors import JobBusyError, RedisUnavailableError, TaskTimeoutError
from services.worker.keys import job_lock_key
from services.worker.pipeline import WorkerDeps, process_job
from services.worker.settings import WorkerSettings
from services.worker.tasks import as_transient
from shared.errors import CorruptImageError, ModelUnavailableError, StorageError
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
