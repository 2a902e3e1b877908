"""Prometheus metrics of a Celery worker whose prefork pool runs tasks in child processes.

prometheus-client's multiprocess mode: each child writes its samples under
`PROMETHEUS_MULTIPROC_DIR` and the worker's main process serves their sum. The variable must be
set before the process starts (as for gunicorn); with the `solo` or `threads` pool tasks run in
the main process and it is not needed. Used by the inference worker and the report sender; a
service's metrics module imports this one before it creates its metrics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


if multiprocess_dir() is not None:  # each metric opens its sample file there when created
    multiprocess_dir().mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]


def check_pool_can_serve(pool_cls, port_setting: str, log: logging.Logger) -> None:
    """Celery `worker_init`: a prefork pool's children are only visible in multiprocess mode,
    so a metrics port without `PROMETHEUS_MULTIPROC_DIR` stops the start; else drop the samples
    of earlier runs."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    pool = get_implementation(pool_cls)
    if issubclass(pool, PreforkPool) and multiprocess_dir() is None:
        message = (f"{port_setting} is set and the pool is prefork: set {MULTIPROC_ENV} to a "
                   "writable folder so the pool processes' metrics can be served")
        log.critical(message)
        # Celery logs and swallows exceptions from signal handlers; SystemExit stops the start.
        raise SystemExit(message)
    clear_multiprocess_dir()


def clear_multiprocess_dir() -> None:
    """Drop samples of earlier runs; call in the main process before the pool starts."""
    folder = multiprocess_dir()
    if folder is None:
        return
    own_suffix = f"_{os.getpid()}.db"  # sample files are named <kind>[_<mode>]_<pid>.db
    for stale in folder.glob("*.db"):
        if not stale.name.endswith(own_suffix):
            stale.unlink()


def serve_metrics(port: int, address: str, *, pool: bool = True) -> None:
    """Expose `/metrics` on `address:port`. `pool`: a Celery worker's main process, which sums
    every pool process in multiprocess mode; else this process's own metrics."""
    if not pool or multiprocess_dir() is None:
        start_http_server(port, addr=address, registry=REGISTRY)
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


def forget_process(pid: int) -> None:
    """A pool process exited: its live gauges no longer count (counters keep their totals)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
