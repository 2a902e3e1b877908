"""Scheduled retraining: the beat schedule from CXR_RETRAIN_CRON, routing, and the one-run lock."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery
from celery.beat import Scheduler

from services.trainer.celery_app import (
    DRIFT_SCHEDULE_ENTRY,
    PURGE_SCHEDULE_ENTRY,
    QUEUE,
    SCHEDULE_ENTRY,
    TASK_NAME,
    celery_config,
    parse_cron,
)
from services.trainer.registry.retrain_lock import LOCK_KEY, retrain_exclusively
from services.trainer.settings import REPO_ROOT, TrainerSettings, TrainingDataMissingError
from shared.jobs.queue import DRIFT_CHECK_TASK, INFERENCE_QUEUE, PURGE_TASK
from tests.support.procs import ManagedProcess, python_argv, wait_until

SAMPLE_DATA = REPO_ROOT / "data" / "sample"


def _next_run(settings: TrainerSettings, after: datetime) -> datetime:
    """When beat would next send the retraining, had it last run at `after`."""
    schedule = celery_config(settings)["beat_schedule"][SCHEDULE_ENTRY]["schedule"]
    schedule.nowfun = lambda: after
    return after + schedule.remaining_estimate(after)


def test_by_default_retraining_runs_once_a_week_on_sunday_night():
    wednesday_noon = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    first = _next_run(TrainerSettings(), wednesday_noon)
    assert first == datetime(2026, 12, 6, 3, 0, tzinfo=UTC) and first.strftime("%A") == "Sunday"
    assert _next_run(TrainerSettings(), first) - first == timedelta(days=7)


def _due(settings: TrainerSettings, entry: str, last_run: datetime, now: datetime) -> bool:
    """Beat's own question at `now` for `entry`, last sent at `last_run`: send it now?"""
    schedule = celery_config(settings)["beat_schedule"][entry]["schedule"]
    schedule.nowfun = lambda: now
    return schedule.is_due(last_run).is_due


def test_beat_sends_the_retraining_once_a_week_and_not_in_between():
    last = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # the Sunday before
    settings = TrainerSettings()
    assert not _due(settings, SCHEDULE_ENTRY, last, datetime(2026, 12, 6, 2, 59, tzinfo=UTC))
    assert _due(settings, SCHEDULE_ENTRY, last, datetime(2026, 12, 6, 3, 0, 30, tzinfo=UTC))
    assert not _due(settings, SCHEDULE_ENTRY, datetime(2026, 12, 6, 3, 0, 30, tzinfo=UTC),
                    datetime(2026, 12, 6, 15, 0, tzinfo=UTC))  # sent already this Sunday


def test_schedule_follows_the_cron_setting(monkeypatch):
    monkeypatch.setenv("CXR_RETRAIN_CRON", "30 4 1,15 * *")
    runs = [datetime(2026, 12, 2, 12, 0, tzinfo=UTC)]
    for _ in range(3):
        runs.append(_next_run(TrainerSettings(), runs[-1]))
    assert runs[1:] == [datetime(2026, 12, 15, 4, 30, tzinfo=UTC),
                        datetime(2027, 1, 1, 4, 30, tzinfo=UTC),
                        datetime(2027, 1, 15, 4, 30, tzinfo=UTC)]


@pytest.mark.parametrize("bad", ["0 3 * *", "0 25 * * *", "every sunday", "61 * * * *"])
def test_a_bad_cron_is_refused_with_the_setting_name(bad):
    with pytest.raises(ValueError, match="CXR_RETRAIN_CRON"):
        parse_cron(bad)


def _beat_sends(redis_url: str, entry_name: str) -> dict[str, int]:
    """Beat's own scheduler sends `entry_name` once; how many messages each Redis queue holds."""
    app = Celery("beat-under-test")
    app.conf.update(celery_config(TrainerSettings(redis_url=redis_url)))
    scheduler = Scheduler(app)
    scheduler.apply_async(scheduler.schedule[entry_name], advance=False)
    client = redis.Redis.from_url(redis_url)
    return {queue: client.llen(queue) for queue in (QUEUE, INFERENCE_QUEUE)}


def _queued_task_names(redis_url: str, queue: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    return [json.loads(raw)["headers"]["task"] for raw in client.lrange(queue, 0, -1)]


def test_beat_sends_the_retention_purge_to_the_inference_workers_queue(redis_url):
    assert _beat_sends(redis_url, PURGE_SCHEDULE_ENTRY) == {QUEUE: 0, INFERENCE_QUEUE: 1}
    assert _queued_task_names(redis_url, INFERENCE_QUEUE) == [PURGE_TASK]


def test_beat_sends_the_retraining_to_the_training_queue(redis_url):
    assert _beat_sends(redis_url, SCHEDULE_ENTRY) == {QUEUE: 1, INFERENCE_QUEUE: 0}
    assert _queued_task_names(redis_url, QUEUE) == [TASK_NAME]


def test_the_purge_runs_on_its_own_cron_setting(monkeypatch):
    monkeypatch.setenv("CXR_RETENTION_PURGE_CRON", "15 1 * * *")
    schedule = celery_config(TrainerSettings())["beat_schedule"][PURGE_SCHEDULE_ENTRY]["schedule"]
    after = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    schedule.nowfun = lambda: after
    assert after + schedule.remaining_estimate(after) == datetime(2026, 12, 3, 1, 15, tzinfo=UTC)


def test_beat_sends_the_drift_check_to_the_inference_workers_queue(redis_url):
    assert _beat_sends(redis_url, DRIFT_SCHEDULE_ENTRY) == {QUEUE: 0, INFERENCE_QUEUE: 1}
    assert _queued_task_names(redis_url, INFERENCE_QUEUE) == [DRIFT_CHECK_TASK]


def test_the_drift_check_runs_on_its_own_cron_setting(monkeypatch):
    monkeypatch.setenv("CXR_DRIFT_CHECK_CRON", "45 */6 * * *")
    settings = TrainerSettings()
    last = datetime(2026, 12, 2, 6, 45, tzinfo=UTC)
    assert not _due(settings, DRIFT_SCHEDULE_ENTRY, last, datetime(2026, 12, 2, 12, 44,
                                                                  tzinfo=UTC))
    assert _due(settings, DRIFT_SCHEDULE_ENTRY, last, datetime(2026, 12, 2, 12, 45, 30,
                                                              tzinfo=UTC))
    monkeypatch.setenv("CXR_DRIFT_CHECK_CRON", "hourly")
    with pytest.raises(ValueError, match="CXR_DRIFT_CHECK_CRON"):
        celery_config(TrainerSettings())


def test_a_bad_purge_cron_is_refused_with_its_setting_name(monkeypatch):
    monkeypatch.setenv("CXR_RETENTION_PURGE_CRON", "0 3 * *")
    with pytest.raises(ValueError, match="CXR_RETENTION_PURGE_CRON"):
        celery_config(TrainerSettings())


def test_a_retraining_sent_by_name_goes_to_the_training_queue_and_outlives_its_lock(redis_url):
    """Sent by name without a queue (as another process would), it still reaches `training`; Redis
    redelivers an unacked run only after the lock and the task's hard limit have both expired."""
    from services.trainer.celery_app import app

    sender = Celery("sender-under-test")
    sender.conf.update(celery_config(TrainerSettings(redis_url=redis_url)))
    sender.send_task(TASK_NAME)
    assert _queued_task_names(redis_url, QUEUE) == [TASK_NAME]
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert visibility > TrainerSettings().retrain_lock_ttl_s > app.conf.task_time_limit


def test_a_second_retraining_is_skipped_while_one_runs(redis_url):
    client = redis.Redis.from_url(redis_url)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_retrain() -> dict:
        calls.append("first")
        started.set()
        assert release.wait(30)
        return {"version": 1}

    results: list[dict] = []
    first = threading.Thread(target=lambda: results.append(
        retrain_exclusively(client, 600, slow_retrain)))
    first.start()
    assert started.wait(30)
    assert 0 < client.ttl(LOCK_KEY) <= 600
    second = retrain_exclusively(client, 600, lambda: calls.append("second") or {})
    assert second == {"skipped": True, "reason": "another retraining is running"}
    release.set()
    first.join(30)
    assert results == [{"skipped": False, "version": 1}]
    assert calls == ["first"]
    assert not client.exists(LOCK_KEY)  # released at the end, not left to its TTL
    assert retrain_exclusively(client, 600, lambda: {"version": 2})["version"] == 2


def test_the_lock_is_released_when_retraining_fails(redis_url):
    client = redis.Redis.from_url(redis_url)

    def broken() -> dict:
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        retrain_exclusively(client, 600, broken)
    assert not client.exists(LOCK_KEY)


@pytest.mark.slow
def test_a_real_worker_takes_cxr_retrain_from_the_training_queue(redis_url, tmp_path):
    """Sent by name like beat does; the lock is held, so the worker skips it and says so."""
    client = redis.Redis.from_url(redis_url)
    assert client.set(LOCK_KEY, "held-by-test", ex=600)
    worker = ManagedProcess(
        "trainer-worker",
        python_argv("-m", "celery", "-A", "services.trainer.celery_app", "worker", "-Q", QUEUE,
                    "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"),
        tmp_path, env={"CXR_REDIS_URL": redis_url, "CXR_DATA_DIR": str(SAMPLE_DATA)})
    try:
        sender = Celery(broker=redis_url)
        sender.conf.task_routes = {TASK_NAME: {"queue": QUEUE}}
        sender.send_task(TASK_NAME)
        wait_until(lambda: "retraining skipped" in worker.log_tail(20000), 180,
                   "worker log line for the skipped retraining", worker)
        assert client.llen(QUEUE) == 0
        assert client.get(LOCK_KEY) == b"held-by-test"
    finally:
        worker.stop()


def test_a_relative_data_dir_is_read_from_the_repository_not_the_working_directory(
        monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = TrainerSettings(data_dir="data/sample")
    assert settings.data_path == SAMPLE_DATA
    assert settings.require_training_data() == SAMPLE_DATA
    assert TrainerSettings(data_dir=str(tmp_path)).data_path == tmp_path


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_a_missing_or_empty_data_set_is_refused_naming_the_setting(tmp_path, make):
    folder = make(tmp_path)
    with pytest.raises(TrainingDataMissingError) as caught:
        TrainerSettings(data_dir=str(folder)).require_training_data()
    assert "CXR_DATA_DIR" in str(caught.value) and str(folder) in str(caught.value)


@pytest.mark.slow
def test_the_trainer_worker_refuses_to_start_without_its_data_set(redis_url, tmp_path):
    """At start-up, with the reason on stderr, instead of failing the first scheduled run."""
    import subprocess

    missing = tmp_path / "no-data-here"
    result = subprocess.run(
        python_argv("-m", "celery", "-A", "services.trainer.celery_app", "worker", "-Q", QUEUE,
                    "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False,
        env={**_base_env(), "CXR_REDIS_URL": redis_url, "CXR_DATA_DIR": str(missing)})
    assert result.returncode != 0
    assert "refuses to start" in result.stderr and str(missing) in result.stderr
    assert "celery@" not in result.stdout  # the start-up banner never came


def _base_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    return {**env, "PYTHONPATH": str(REPO_ROOT)}


def test_a_cron_with_runs_of_whitespace_is_read_like_single_spaces(monkeypatch):
    after = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    monkeypatch.setenv("CXR_RETRAIN_CRON", "30  4\t1,15 *  *")
    spaced = _next_run(TrainerSettings(), after)
    monkeypatch.setenv("CXR_RETRAIN_CRON", "30 4 1,15 * *")
    assert spaced == _next_run(TrainerSettings(), after) == datetime(2026, 12, 15, 4, 30,
                                                                     tzinfo=UTC)
