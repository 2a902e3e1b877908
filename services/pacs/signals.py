"""Report sender process signals: the metrics endpoint in the Celery worker's main process."""

from __future__ import annotations

import logging
import os

from celery import signals

from services.pacs import metrics  # noqa: F401 - the sender's metrics, before the pool forks
from services.pacs.settings import get_settings
from shared import pool_metrics

log = logging.getLogger("cxr.pacs")


@signals.worker_init.connect
def check_metrics_mode(sender, **_kwargs) -> None:
    if get_settings().pacs_sender_metrics_port is not None:
        pool_metrics.check_pool_can_serve(sender.pool_cls, "CXR_PACS_SENDER_METRICS_PORT", log)


@signals.worker_ready.connect
def serve_metrics(**_kwargs) -> None:
    settings = get_settings()
    if settings.pacs_sender_metrics_port is not None:
        pool_metrics.serve_metrics(settings.pacs_sender_metrics_port, settings.pacs_metrics_address,
                              pool=True)
        log.info("metrics on %s:%s", settings.pacs_metrics_address,
                 settings.pacs_sender_metrics_port)


@signals.worker_process_shutdown.connect
def forget_pool_process(**_kwargs) -> None:
    pool_metrics.forget_process(os.getpid())
