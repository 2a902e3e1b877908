"""Transient failures against a real worker: retries until the model server is back, and a
dead-letter entry (then a re-queue) when retries run out."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import redis

from services.worker import dead_letter
from shared.jobs.records import JobStatus
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.support.procs import REPO_ROOT, free_port, python_argv
from tests.worker.jobs import JobClient, metric_value, wait_for_metric, xray_jpeg

pytestmark = pytest.mark.slow


def job_client(redis_url: str, storage_root) -> JobClient:
    storage = LocalStorage(storage_root)
    return JobClient(JobStore(redis.Redis.from_url(redis_url), storage), storage, redis_url)


def test_jobs_retry_while_the_model_server_is_down_and_succeed_when_it_is_back(
        model_server, redis_url, celery_worker, tmp_path):
    jobs = job_client(redis_url, tmp_path / "storage")
    worker = celery_worker(redis_url=redis_url, storage_root=tmp_path / "storage",
                           model_server_target=model_server.grpc_target,
                           env={"CXR_TASK_MAX_RETRIES": "200", "CXR_JOB_MAX_ATTEMPTS": "250",
                                "CXR_PREDICT_TIMEOUT_S": "5"})
    model_server.stop()
    job_ids = [jobs.submit(xray_jpeg(seed=seed)) for seed in (1, 2)]
    wait_for_metric(worker.metrics_text, "cxr_worker_retries_total", 3, timeout=90,
                    code="model_unavailable")
    assert all(not jobs.store.get(job_id).status.finished for job_id in job_ids)

    model_server.start(wait_for=1)
    for job_id in job_ids:
        record = jobs.wait_status(job_id, JobStatus.SUCCEEDED, timeout=120, log=worker.log_tail())
        assert record.attempts > 1
        assert record.result.model.version == 1
    assert metric_value(worker.metrics_text(), "cxr_worker_dead_lettered_total") == 0
    jobs.close()


def test_retries_exhausted_fail_the_job_and_leave_a_dead_letter(redis_url, celery_worker,
                                                                tmp_path):
    storage_root = tmp_path / "storage"
    jobs = job_client(redis_url, storage_root)
    nothing_listens = f"127.0.0.1:{free_port()}"
    worker = celery_worker(redis_url=redis_url, storage_root=storage_root,
                           model_server_target=nothing_listens,
                           env={"CXR_TASK_MAX_RETRIES": "2"})
    job_id = jobs.submit(xray_jpeg())
    record = jobs.wait_status(job_id, JobStatus.FAILED, timeout=90, log=worker.log_tail())
    assert record.failure.code == "retries_exhausted"
    assert "model_unavailable" in record.failure.message
    assert record.attempts == 3  # the first try and two retries

    client = redis.Redis.from_url(redis_url)
    (entry,) = dead_letter.entries(client, "cxr:dead-letter")
    assert (entry.job_id, entry.task, entry.error_code, entry.retries) == (
        job_id, "cxr.predict", "model_unavailable", 2)
    assert nothing_listens in entry.error_message
    text = worker.metrics_text()
    assert metric_value(text, "cxr_worker_dead_lettered_total") == 1
    assert metric_value(text, "cxr_worker_retries_total", code="model_unavailable") == 2

    # An operator sends it again: the job returns to the queue and is tried afresh.
    env = dict(worker.env)
    requeue = subprocess.run(
        python_argv("-m", "services.worker", "requeue-dead-letters", "--job-id", job_id),
        cwd=REPO_ROOT, env={**_process_env(), **env}, capture_output=True, text=True,
        timeout=120, check=True)
    assert json.loads(requeue.stdout.strip().splitlines()[-1]) == {"requeued": [job_id]}
    wait_for_metric(worker.metrics_text, "cxr_worker_dead_lettered_total", 2, timeout=90)
    record = jobs.wait_status(job_id, JobStatus.FAILED)
    assert record.attempts == 3  # a re-queued job gets a fresh budget of attempts
    assert [e.job_id for e in dead_letter.entries(client, "cxr:dead-letter")] == [job_id]
    jobs.close()


def _process_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
