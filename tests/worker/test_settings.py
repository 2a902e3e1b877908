"""Worker settings and the Celery configuration built from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.worker.celery_app import QUEUE, TASK_NAME, celery_config
from services.worker.settings import WorkerSettings


def test_reads_cxr_variables(monkeypatch):
    monkeypatch.setenv("CXR_PREDICT_TIMEOUT_S", "3.5")
    monkeypatch.setenv("CXR_TASK_MAX_RETRIES", "2")
    monkeypatch.setenv("CXR_SERVING_VERSION_LABEL", "stable")
    settings = WorkerSettings()
    assert settings.predict_timeout_s == 3.5
    assert settings.task_max_retries == 2
    assert settings.serving_version_label == "stable"


def test_visibility_timeout_must_outlast_a_task_and_its_longest_backoff():
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        WorkerSettings(task_time_limit_s=600, task_soft_time_limit_s=500, retry_backoff_max_s=100,
                       broker_visibility_timeout_s=650)


def test_attempts_must_allow_every_retry():
    with pytest.raises(ValidationError, match="JOB_MAX_ATTEMPTS"):
        WorkerSettings(task_max_retries=8, job_max_attempts=8)


def test_soft_time_limit_must_come_before_the_hard_one():
    with pytest.raises(ValidationError, match="SOFT_TIME_LIMIT"):
        WorkerSettings(task_soft_time_limit_s=60, task_time_limit_s=60)


def test_production_celery_settings():
    settings = WorkerSettings(redis_url="redis://127.0.0.1:1/3")
    config = celery_config(settings)
    assert config["broker_url"] == "redis://127.0.0.1:1/3"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_routes"] == {TASK_NAME: {"queue": QUEUE}}
    visibility = config["broker_transport_options"]["visibility_timeout"]
    assert visibility > config["task_time_limit"] > config["task_soft_time_limit"]
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True


def test_pool_size_is_the_setting_or_two_per_usable_cpu():
    import os

    assert celery_config(WorkerSettings(worker_concurrency=3))["worker_concurrency"] == 3
    assert (celery_config(WorkerSettings())["worker_concurrency"]
            == 2 * len(os.sched_getaffinity(0)))


def test_the_worker_asks_for_the_stable_label_by_default(monkeypatch):
    monkeypatch.delenv("CXR_SERVING_VERSION_LABEL", raising=False)
    assert WorkerSettings().serving_version_label == "stable"
