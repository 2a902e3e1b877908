"""Report sender process signals: the metrics endpoint in the Celery worker's main process."""

from __future__ import annotations

import logging
import os

from celery import signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool

from services.pacs import metrics
from services.pacs.settings import get_settings

log = logging.getLogger("cxr.pacs")


@signals.worker_init.connect
def check_metrics_mode(sender, **_kwargs) -> None:
    """With the prefork pool, children's samples are only visible in multiprocess mode."""
    if get_settings().pacs_sender_metrics_port is None:
        return
    pool = get_implementation(sender.pool_cls)
    if issubclass(pool, PreforkPool) and metrics.multiprocess_dir() is None:
        message = (
            "CXR_PACS_SENDER_METRICS_PORT is set and the pool is prefork: set "
            f"{metrics.MULTIPROC_ENV} to a writable folder so the pool processes' metrics can be "
            "served")
        log.critical(message)
        # Celery logs and swallows exceptions from signal handlers; SystemExit stops the start.
        raise SystemExit(message)
    metrics.clear_multiprocess_dir()


@signals.worker_ready.connect
def serve_metrics(**_kwargs) -> None:
    settings = get_settings()
    if settings.pacs_sender_metrics_port is not None:
        metrics.serve_metrics(settings.pacs_sender_metrics_port, settings.pacs_metrics_address,
                              pool=True)
        log.info("metrics on %s:%s", settings.pacs_metrics_address,
                 settings.pacs_sender_metrics_port)


@signals.worker_process_shutdown.connect
def forget_pool_process(**_kwargs) -> None:
    metrics.forget_process(os.getpid())
