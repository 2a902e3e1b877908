"""The trainer's Celery app on Redis: queue `training`, task `cxr.retrain` (the retraining of
`services.trainer.retraining` under the retraining lock), weekly beat schedule.

Its beat is the project's one scheduler: it also sends the retention purge (`cxr.purge`) to the
inference workers' queue on `CXR_RETENTION_PURGE_CRON` (a worker with `CXR_RETENTION_DAYS=0` keeps
everything and the purge does nothing), and the drift check (`cxr.drift_check`,
`docs/monitoring.md`) to the same queue on `CXR_DRIFT_CHECK_CRON`.

Run one beat only (`celery -A services.trainer.celery_app beat`) and a worker on the queue
(`celery -A services.trainer.celery_app worker -Q training --concurrency 1`). Importing this module
is cheap: TensorFlow and MLflow load only when the task runs.

The worker checks the retraining data set (`CXR_DATA_DIR`, a relative path taken from the
repository root) when it starts and refuses to start, naming the setting and the path, when no
data set is there: a deployment without its data stops at start-up, not at the first schedule.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery, signals
from celery.schedules import crontab

from services.trainer.registry.retrain_lock import retrain_exclusively
from services.trainer.settings import TrainerSettings, TrainingDataMissingError, get_settings
from shared.celery_config import reliable_queue_config
from shared.jobs.queue import DRIFT_CHECK_TASK, INFERENCE_QUEUE, PURGE_TASK
from shared.jobs.queue import RETRAIN_TASK as TASK_NAME
from shared.jobs.queue import TRAINING_QUEUE as QUEUE

log = logging.getLogger(__name__)

SCHEDULE_ENTRY = "scheduled-retrain"
PURGE_SCHEDULE_ENTRY = "scheduled-retention-purge"
DRIFT_SCHEDULE_ENTRY = "scheduled-drift-check"
# Redis redelivers an unacked (acks_late) message after this; it must outlast the lock, so a
# redelivery of a still-running retraining finds the lock taken, or of a dead one finds it free.
VISIBILITY_MARGIN_S = 3600


def parse_cron(expression: str, name: str = "CXR_RETRAIN_CRON") -> crontab:
    """`"minute hour day-of-month month day-of-week"` (5-field cron) as a Celery crontab."""
    try:
        # from_string splits on single spaces: runs of whitespace are folded first.
        return crontab.from_string(" ".join(expression.split()))
    except ValueError as err:
        raise ValueError(f"{name} {expression!r} is not a valid schedule (5 fields: minute hour "
                         f"day-of-month month day-of-week): {err}") from err


def celery_config(settings: TrainerSettings) -> dict[str, object]:
    return {
        **reliable_queue_config(redis_url=settings.redis_url, queue=QUEUE, task_name=TASK_NAME),
        "task_soft_time_limit": settings.retrain_time_limit_s,
        "task_time_limit": settings.retrain_time_limit_s + 600,
        "broker_transport_options": {
            "visibility_timeout": settings.retrain_lock_ttl_s + VISIBILITY_MARGIN_S},
        "beat_schedule": {
            SCHEDULE_ENTRY: {"task": TASK_NAME, "schedule": parse_cron(settings.retrain_cron),
                             "options": {"queue": QUEUE}},
            PURGE_SCHEDULE_ENTRY: {
                "task": PURGE_TASK,
                "schedule": parse_cron(settings.retention_purge_cron, "CXR_RETENTION_PURGE_CRON"),
                "options": {"queue": INFERENCE_QUEUE}},
            DRIFT_SCHEDULE_ENTRY: {
                "task": DRIFT_CHECK_TASK,
                "schedule": parse_cron(settings.drift_check_cron, "CXR_DRIFT_CHECK_CRON"),
                "options": {"queue": INFERENCE_QUEUE}},
        },
        "timezone": "UTC",
    }


app = Celery("cxr-trainer")
app.conf.update(celery_config(get_settings()))


def check_training_data(settings: TrainerSettings | None = None) -> None:
    """SystemExit with the reason when the retraining data set is missing (worker start-up)."""
    try:
        path = (settings or get_settings()).require_training_data()
    except TrainingDataMissingError as err:
        log.critical("%s", err)
        # SystemExit passes through Celery's signal dispatch (it catches Exception only), so the
        # worker process ends here with the message on stderr and a non-zero status.
        raise SystemExit(f"cxr-trainer worker refuses to start: {err}") from err
    log.info("retraining data set: %s", path)


@signals.worker_init.connect
def _check_data_at_start(sender=None, **_kwargs) -> None:
    if getattr(sender, "app", None) is app:
        check_training_data()


@app.task(name=TASK_NAME, acks_late=True)
def retrain() -> dict:
    """`cxr.retrain`: one retraining, unless another holds the lock."""
    from services.trainer.retraining import retrain as run_retraining  # TensorFlow and MLflow

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    summary = retrain_exclusively(client, settings.retrain_lock_ttl_s,
                                  lambda: run_retraining(settings))
    log.info("cxr.retrain: %s", summary)
    return summary
