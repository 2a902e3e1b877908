"""`cxr.retrain`: the scheduled retraining, thin around `pipeline.retrain` and the lock."""

from __future__ import annotations

import logging

import redis

from services.trainer.celery_app import TASK_NAME, app
from services.trainer.config import get_settings
from services.trainer.retrain_lock import retrain_exclusively

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, acks_late=True)
def retrain() -> dict:
    from services.trainer.pipeline import retrain as run_pipeline

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    summary = retrain_exclusively(client, settings.retrain_lock_ttl_s,
                                  lambda: run_pipeline(settings))
    log.info("cxr.retrain: %s", summary)
    return summary
