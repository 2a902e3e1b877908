"""Worker process signals: metrics endpoint in the main process, fresh clients in pool processes."""

from __future__ import annotations

import logging
import os

from celery import signals

from services.worker import metrics  # noqa: F401 - the worker's metrics, before the pool forks
from services.worker.settings import get_settings
from services.worker.tasks import reset_worker_deps
from services.worker.webhook import reset_webhook_deps
from shared import pool_metrics

log = logging.getLogger(__name__)


@signals.worker_init.connect
def check_metrics_mode(sender, **_kwargs) -> None:
    if get_settings().worker_metrics_port is not None:
        pool_metrics.check_pool_can_serve(sender.pool_cls, "CXR_WORKER_METRICS_PORT", log)


@signals.worker_ready.connect
def serve_metrics(**_kwargs) -> None:
    settings = get_settings()
    if settings.worker_metrics_port is not None:
        pool_metrics.serve_metrics(settings.worker_metrics_port, settings.worker_metrics_address)
        log.info("metrics on %s:%s", settings.worker_metrics_address, settings.worker_metrics_port)


@signals.worker_process_init.connect
def fresh_clients(**_kwargs) -> None:
    reset_worker_deps()
    reset_webhook_deps()


@signals.worker_process_shutdown.connect
def forget_pool_process(**_kwargs) -> None:
    reset_worker_deps()
    reset_webhook_deps()
    pool_metrics.forget_process(os.getpid())
