"""Finding accepted jobs left behind (Redis lost them, or they stopped moving) and sending them
again (one pass, and the loop a long-running deployment runs); the dead-letter list's
bookkeeping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from services.worker import dead_letter
from services.worker.celery_app import QUEUE
from services.worker.errors import ModelNotFoundError
from services.worker.reconcile import reconcile, reconcile_pass
from shared.jobs.keys import open_marker_key
from shared.jobs.records import JobRecord, JobStatus
from shared.jobs.store import JobStore
from shared.schemas import Failure, utc_now
from shared.storage import LocalStorage
from tests.support.procs import REPO_ROOT, ManagedProcess, free_port, python_argv, wait_until
from tests.support.redis import start_redis
from tests.worker.jobs import JobClient, xray_jpeg

LOOP_START_S = 60  # importing Celery and boto3 on a busy machine
STALE_S = 600.0  # the default visibility timeout: no job here goes stale
PASS_LINE = re.compile(r"reconcile pass (\d+): unfinished=(\d+) in_flight=(\d+) "
                       r"too_young=(\d+) requeued=(\d+)")
FAILED_LINE = re.compile(r"reconcile pass \d+ failed, next in [\d.]+ s: ConnectionError: ")


@pytest.fixture
def jobs(redis_url, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    client = JobClient(JobStore(redis.Redis.from_url(redis_url), storage), storage, redis_url)
    yield client
    client.close()


def test_reconcile_sends_only_old_unfinished_jobs_redis_lost(jobs, redis_url):
    client = redis.Redis.from_url(redis_url)
    lost = jobs.create(b"x")
    failed = jobs.create(b"x")
    jobs.store.mark_failed(failed, Failure(code="corrupt_image", message="cut off"))
    young = jobs.store.create(JobRecord(job_id="young", client_id="t", upload_key="uploads/y",
                                        created_at=utc_now() + timedelta(minutes=5)))
    client.flushall()  # the Redis copies, queues and in-flight set go; storage keeps every record
    accepted_after = jobs.submit(b"x")

    sent: list[str] = []
    assert reconcile(jobs.store, sent.append, stale_after_s=STALE_S, min_age_s=60) == []
    assert reconcile(jobs.store, sent.append, stale_after_s=STALE_S, min_age_s=0) == [lost]
    assert sent == [lost]
    assert jobs.store.get(lost).status is JobStatus.QUEUED
    assert client.exists(f"cxr:job:{lost}")  # back in Redis for status reads
    assert young.job_id not in sent and accepted_after not in sent
    assert reconcile(jobs.store, sent.append, stale_after_s=STALE_S, min_age_s=0) == []  # once


def test_a_job_that_stops_moving_is_sent_again_once_per_stale_period(jobs):
    """A job whose message was lost (or whose worker died) while Redis kept its data: sent again
    once it has not moved for `stale_after_s`; a job that moved within it is left alone."""
    left_behind = jobs.submit(b"x")
    time.sleep(1.2)
    started = jobs.submit(b"x")
    jobs.store.mark_running(started)  # a worker took it and runs it
    sent: list[str] = []
    result = reconcile_pass(jobs.store, sent.append, stale_after_s=1.0, min_age_s=0)
    assert (result.unfinished, result.in_flight, result.requeued) == (2, 1, [left_behind])
    assert reconcile(jobs.store, sent.append, stale_after_s=1.0, min_age_s=0) == []
    time.sleep(1.2)  # neither moved since: both are sent, each once
    assert sorted(reconcile(jobs.store, sent.append, stale_after_s=1.0, min_age_s=0)) == sorted(
        [left_behind, started])
    assert sent.count(left_behind) == 2 and sent.count(started) == 1


def test_a_job_that_finishes_during_a_pass_is_not_sent(jobs, monkeypatch):
    job_id = jobs.submit(b"x")
    time.sleep(0.6)
    listed = jobs.store.list_unfinished()

    def list_then_finish(*, scan_all: bool = False) -> list[JobRecord]:
        jobs.store.mark_failed(job_id, Failure(code="corrupt_image", message="cut off"))
        return listed

    monkeypatch.setattr(jobs.store, "list_unfinished", list_then_finish)
    sent: list[str] = []
    assert reconcile(jobs.store, sent.append, stale_after_s=0.5, min_age_s=0) == []
    assert sent == []
    assert jobs.store.get(job_id).status is JobStatus.FAILED


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


def cli_env(redis_url: str, storage_root: Path, **extra: str) -> dict[str, str]:
    """The environment of the CLI process: this test's Redis and storage, nothing inherited."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CXR_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", "CXR_ENV": "test",
            "CXR_REDIS_URL": redis_url, "CXR_STORAGE_BACKEND": "local",
            "CXR_STORAGE_ROOT": str(storage_root), **extra}


def run_once(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_argv("-m", "services.worker", "reconcile", "--min-age-s", "0",
                                      *flags),
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_one_shot_exit_status_says_whether_the_pass_ran(jobs, redis_url, tmp_path):
    """0 when the pass finished, 1 with one line (no traceback) when Redis or storage is down:
    what a CronJob counts as a failed run and retries."""
    lost = jobs.create(b"x")
    redis.Redis.from_url(redis_url).flushall()
    done = run_once(cli_env(redis_url, jobs.storage.root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"requeued": [lost]}
    assert "unfinished=1 in_flight=0 too_young=0 requeued=1" in done.stderr

    redis_down = run_once(cli_env(f"redis://127.0.0.1:{free_port()}/0", jobs.storage.root))
    assert redis_down.returncode == 1, redis_down.stderr
    assert "reconcile pass failed: ConnectionError" in redis_down.stderr
    assert "Traceback" not in redis_down.stderr

    storage_down = run_once(cli_env(
        redis_url, tmp_path / "unused", CXR_STORAGE_BACKEND="s3", CXR_S3_BUCKET="cxr-jobs",
        CXR_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", CXR_S3_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test-secret"))
    assert storage_down.returncode == 1, storage_down.stderr
    assert "reconcile pass failed: StorageError: S3 is unreachable" in storage_down.stderr
    assert "Traceback" not in storage_down.stderr

    again = run_once(cli_env(redis_url, jobs.storage.root))
    assert "unfinished=1 in_flight=1 too_young=0 requeued=0" in again.stderr  # sent once
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 1


def test_the_cli_refuses_a_stale_time_a_running_job_can_reach(jobs, redis_url):
    """A job goes without moving for up to its hard time limit plus its longest retry countdown
    while a worker holds it: a shorter `--stale-after-s` would send it to a second worker."""
    env = cli_env(redis_url, jobs.storage.root, CXR_TASK_SOFT_TIME_LIMIT_S="10",
                  CXR_TASK_TIME_LIMIT_S="12", CXR_RETRY_BACKOFF_MAX_S="4",
                  CXR_BROKER_VISIBILITY_TIMEOUT_S="20")
    refused = run_once(env, "--stale-after-s", "16")
    assert refused.returncode == 2, refused.stderr
    assert "--stale-after-s must exceed 16 s" in refused.stderr
    assert run_once(env, "--stale-after-s", "17").returncode == 0
    assert run_once(env).returncode == 0  # the default: the visibility timeout


def test_scan_all_finds_a_job_kept_before_the_open_jobs_index(jobs, redis_url):
    """A record with no `jobs-open/` marker is invisible to a normal pass; --scan-all finds it
    (and marks it open, so the next normal pass sees it too)."""
    old = jobs.create(b"x")
    jobs.storage.delete(open_marker_key(old))
    redis.Redis.from_url(redis_url).flushall()
    env = cli_env(redis_url, jobs.storage.root)
    plain = run_once(env)
    assert json.loads(plain.stdout.strip().splitlines()[-1]) == {"requeued": []}
    scanned = run_once(env, "--scan-all")
    assert scanned.returncode == 0, scanned.stderr
    assert json.loads(scanned.stdout.strip().splitlines()[-1]) == {"requeued": [old]}
    assert jobs.storage.exists(open_marker_key(old))


def start_loop(tmp_path: Path, env: dict[str, str], heartbeat: Path) -> ManagedProcess:
    argv = python_argv("-m", "services.worker", "reconcile", "--every", "0.5", "--min-age-s", "0",
                       "--heartbeat-file", str(heartbeat))
    return ManagedProcess("reconcile-loop", argv, tmp_path, env=env)


def pass_lines(loop: ManagedProcess) -> list[tuple[int, ...]]:
    """(pass, unfinished, in_flight, too_young, requeued) for each finished pass logged."""
    return [tuple(map(int, m.groups())) for m in PASS_LINE.finditer(loop.log_path.read_text())]


def terminate(loop: ManagedProcess) -> int:
    """SIGTERM to the loop process alone; its exit status."""
    loop.popen.send_signal(signal.SIGTERM)
    return loop.popen.wait(timeout=30)


def test_the_loop_requeues_a_job_lost_from_redis_once_and_stops_on_sigterm(
        jobs, redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    lost = jobs.create(b"x")
    jobs.send(lost)
    client.flushall()  # Redis lost its data; storage keeps the record
    held = jobs.create(b"x")
    jobs.send(held)
    heartbeat = tmp_path / "heartbeat"
    loop = start_loop(tmp_path, cli_env(redis_url, jobs.storage.root), heartbeat)
    try:
        wait_until(lambda: len(pass_lines(loop)) >= 3, LOOP_START_S, "three passes", loop)
        first, *later = pass_lines(loop)
        assert first == (1, 2, 1, 0, 1), loop.log_tail()
        assert all(counts[1:] == (2, 2, 0, 0) for counts in later), loop.log_tail()
        assert f"re-queued job {lost}" in loop.log_tail()
        assert client.llen(QUEUE) == 2  # sent again once, then seen in the queue
        assert heartbeat.is_file()

        assert terminate(loop) == 0, loop.log_tail()
        assert re.search(r"stopped after \d+ passes", loop.log_tail())
        assert not heartbeat.exists()  # a health check fails at once after the loop ends
    finally:
        loop.stop()


def test_the_loop_survives_redis_going_away_and_requeues_once_it_is_back(tmp_path):
    server = start_redis(tmp_path / "redis")
    storage = LocalStorage(tmp_path / "storage")
    client = JobClient(JobStore(server.client(), storage), storage, server.url)
    heartbeat = tmp_path / "heartbeat"
    loop = None
    try:
        queued = client.submit(b"x")
        loop = start_loop(tmp_path, cli_env(server.url, storage.root), heartbeat)
        wait_until(heartbeat.is_file, LOOP_START_S, "a first pass", loop)
        assert pass_lines(loop)[0][1:] == (1, 1, 0, 0)  # in flight: left alone

        def failed_passes() -> int:
            return len(FAILED_LINE.findall(loop.log_path.read_text()))

        server.process.stop()  # Redis gone, and with it the queued message
        wait_until(lambda: failed_passes() >= 1, 60, "a failed pass", loop)
        heartbeat.unlink()  # passes run one after the other: none is in flight now
        wait_until(lambda: failed_passes() >= 3, 60, "two more failed passes", loop)
        assert loop.alive() and not heartbeat.exists()  # no pass finished meanwhile
        assert "Traceback" not in loop.log_tail(20000)

        server = start_redis(tmp_path / "redis", port=server.port)  # back, empty
        wait_until(lambda: queued in JobStore(server.client(), storage).in_flight(), 60,
                   "re-queued", loop)
        wait_until(heartbeat.is_file, 30, "a pass after the restart", loop)
        assert terminate(loop) == 0, loop.log_tail()
        assert server.client().llen(QUEUE) == 1
    finally:
        if loop is not None:
            loop.stop()
        client.close()
        server.process.stop()
