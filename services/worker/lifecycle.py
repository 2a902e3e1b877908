"""Worker process signals: metrics endpoint in the main process, fresh clients in pool processes."""

from __future__ import annotations

import logging
import os

from celery import signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool

from services.worker import metrics
from services.worker.settings import get_settings
from services.worker.tasks import reset_worker_deps
from services.worker.webhook import reset_webhook_deps

log = logging.getLogger(__name__)


@signals.worker_init.connect
def check_metrics_mode(sender, **_kwargs) -> None:
    """With the prefork pool, children's samples are only visible in multiprocess mode."""
    if get_settings().worker_metrics_port is None:
        return
    pool = get_implementation(sender.pool_cls)
    if issubclass(pool, PreforkPool) and metrics.multiprocess_dir() is None:
        message = (
            f"CXR_WORKER_METRICS_PORT is set and the pool is prefork: set {metrics.MULTIPROC_ENV} "
            "to a writable folder so the pool processes' metrics can be served"
        )
        log.critical(message)
        # Celery logs and swallows exceptions from signal handlers; SystemExit stops the start.
        raise SystemExit(message)
    metrics.clear_multiprocess_dir()


@signals.worker_ready.connect
def serve_metrics(**_kwargs) -> None:
    settings = get_settings()
    if settings.worker_metrics_port is not None:
        metrics.serve_metrics(settings.worker_metrics_port, settings.worker_metrics_address)
        log.info("metrics on %s:%s", settings.worker_metrics_address, settings.worker_metrics_port)


@signals.worker_process_init.connect
def fresh_clients(**_kwargs) -> None:
    reset_worker_deps()
    reset_webhook_deps()


@signals.worker_process_shutdown.connect
def forget_pool_process(**_kwargs) -> None:
    reset_worker_deps()
    reset_webhook_deps()
    metrics.forget_process(os.getpid())
