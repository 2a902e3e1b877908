"""Finding jobs the broker lost and sending them again; the dead-letter list's bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

import pytest
import redis
from kombu import Queue

from services.worker import dead_letter
from services.worker.celery_app import QUEUE
from services.worker.errors import ModelNotFoundError
from services.worker.reconcile import broker_job_ids, reconcile
from shared.jobs import JobStore
from shared.schemas import Failure, JobRecord, JobStatus, utc_now
from shared.storage import LocalStorage
from tests.support.procs import REPO_ROOT, python_argv
from tests.worker.jobs import JobClient, xray_jpeg


@pytest.fixture
def jobs(redis_url, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    client = JobClient(JobStore(redis.Redis.from_url(redis_url), storage), storage, redis_url)
    yield client
    client.close()


def test_broker_job_ids_sees_waiting_and_taken_messages(jobs, redis_url):
    client = redis.Redis.from_url(redis_url)
    jobs.send("waiting-1")
    jobs.send("taken-1")
    jobs.celery.send_task("cxr.other", args=["not-a-job"], queue=QUEUE)
    assert broker_job_ids(client) == {"waiting-1", "taken-1"}

    taken = []
    with jobs.celery.connection_for_read() as connection, connection.Consumer(
            Queue(QUEUE), callbacks=[lambda body, message: taken.append(message)],
            accept=["json"]):
        connection.drain_events(timeout=10)  # one message, delivered and not acked
        assert len(taken) == 1
        assert client.hlen("unacked") == 1
        assert broker_job_ids(client) == {"waiting-1", "taken-1"}


def test_reconcile_sends_only_old_unfinished_jobs_the_broker_lacks(jobs, redis_url):
    client = redis.Redis.from_url(redis_url)
    lost = jobs.create(b"x")
    in_queue = jobs.create(b"x")
    jobs.send(in_queue)
    failed = jobs.create(b"x")
    jobs.store.mark_failed(failed, Failure(code="corrupt_image", message="cut off"))
    young = jobs.store.create(JobRecord(job_id="young", client_id="t", upload_key="uploads/y",
                                        created_at=utc_now() + timedelta(minutes=5)))
    client.flushall()  # the Redis copies go; storage keeps every record
    jobs.send(in_queue)

    sent: list[str] = []
    assert reconcile(jobs.store, client, sent.append, min_age_s=60) == []
    assert reconcile(jobs.store, client, sent.append, min_age_s=0) == [lost]
    assert sent == [lost]
    assert jobs.store.get(lost).status is JobStatus.QUEUED
    assert client.exists(f"cxr:job:{lost}")  # back in Redis for status reads
    assert young.job_id not in sent


def test_dead_letters_are_listed_and_taken_back_for_requeueing(jobs, redis_url):
    client = redis.Redis.from_url(redis_url)
    key = "cxr:dead-letter"
    first, second = jobs.create(b"x"), jobs.create(b"x")
    for job_id in (first, second):
        error = ModelNotFoundError("gone")
        jobs.store.mark_running(job_id)
        jobs.store.mark_failed(job_id, dead_letter.exhausted_failure(error, 3))
        dead_letter.push(client, key, job_id, "cxr.predict", error, 3)
    assert [e.job_id for e in dead_letter.entries(client, key)] == [first, second]
    assert jobs.store.get(first).failure.code == "retries_exhausted"

    assert dead_letter.take_for_requeue(client, key, jobs.store, second) == [second]
    record = jobs.store.get(second)
    assert record.status is JobStatus.QUEUED and record.failure is None
    assert record.attempts == 0
    assert [e.job_id for e in dead_letter.entries(client, key)] == [first]
    assert dead_letter.take_for_requeue(client, key, jobs.store) == [first]
    assert dead_letter.entries(client, key) == []


@pytest.mark.slow
def test_a_job_lost_in_a_flushall_is_requeued_and_finishes(
        jobs, redis_url, shared_model_server, celery_worker, tmp_path):
    job_id = jobs.submit(xray_jpeg(seed=11))  # queued while no worker runs
    done = jobs.create(xray_jpeg(seed=12))
    jobs.store.mark_failed(done, Failure(code="corrupt_image", message="cut off"))
    redis.Redis.from_url(redis_url).flushall()  # Redis restarted without persistence

    worker = celery_worker(redis_url=redis_url, storage_root=jobs.storage.root,
                           model_server_target=shared_model_server.grpc_target)
    assert jobs.store.get(job_id).status is JobStatus.QUEUED  # nothing left to deliver

    def run_reconcile() -> list[str]:
        completed = subprocess.run(
            python_argv("-m", "services.worker", "reconcile", "--min-age-s", "0"),
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **worker.env},
            capture_output=True, text=True, timeout=120, check=True)
        return json.loads(completed.stdout.strip().splitlines()[-1])["requeued"]

    assert run_reconcile() == [job_id]
    record = jobs.wait_status(job_id, JobStatus.SUCCEEDED, log=worker.log_tail())
    assert record.result.model.version == 1
    assert run_reconcile() == []  # nothing unfinished: running it again changes nothing
