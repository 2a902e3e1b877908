"""Worker settings and the Celery configuration built from them."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from services.worker.celery_app import QUEUE, TASK_NAME, celery_config
from services.worker.settings import WorkerSettings


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


def test_a_prediction_sent_by_name_reaches_the_inference_queue_as_json(redis_url):
    """What the gateway's intake relies on: the task name alone routes it, and the message body is
    JSON (no pickle), so any process can send it and no worker unpickles what it receives."""
    app = Celery("sender-under-test")
    app.conf.update(celery_config(WorkerSettings(redis_url=redis_url)))
    app.send_task(TASK_NAME, args=["job-1"])
    [raw] = redis.Redis.from_url(redis_url).lrange(QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == TASK_NAME
    assert message["content-type"] == "application/json"
    assert json.loads(base64.b64decode(message["body"]))[0] == ["job-1"]


@pytest.mark.parametrize("env", [{}, {"CXR_TASK_TIME_LIMIT_S": "1800",
                                     "CXR_TASK_SOFT_TIME_LIMIT_S": "1700",
                                     "CXR_BROKER_VISIBILITY_TIMEOUT_S": "2400"}],
                         ids=["defaults", "longer-tasks"])
def test_the_broker_redelivers_only_after_a_task_and_its_retry_wait_end(monkeypatch, redis_url,
                                                                       env):
    """Redis hands an unacked message to another worker after its channel's visibility timeout:
    with the defaults and with longer limits set in the environment, that comes after the task's
    soft and hard limits and the longest a retry waits in a worker."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings(redis_url=redis_url)
    app = Celery("worker-under-test")
    app.conf.update(celery_config(settings))
    with app.connection_for_write() as connection:
        visibility = connection.default_channel.visibility_timeout
    assert visibility > app.conf.task_time_limit + settings.retry_backoff_max_s
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit
    if env:
        assert (visibility, app.conf.task_time_limit, app.conf.task_soft_time_limit) == (
            2400, 1800, 1700)
