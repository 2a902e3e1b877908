"""A real `celery -A services.worker.celery_app worker -Q inference` process for the tests.

`celery_worker(redis_url=..., storage_root=..., model_server_target=...)` starts one with the
prefork pool and prometheus multiprocess mode, waits until it consumes (its metrics endpoint opens
from the `worker_ready` signal), and stops it at the end of the test.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ManagedProcess, free_port, port_open, python_argv, wait_until

# TensorFlow and the gRPC client load at start-up; on a busy machine that can take a minute.
START_TIMEOUT_S = 180.0


@dataclass
class CeleryWorker:
    process: ManagedProcess
    metrics_port: int
    env: dict[str, str]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self) -> str:
        return httpx.get(self.metrics_url, timeout=5).text

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def kill(self) -> None:
        """SIGKILL the main process and its pool, as a crashed node would."""
        self.process.kill(signal.SIGKILL)
        self.process.popen.wait(10)
        # Only once every pool child is gone does the store show what the kill interrupted.
        wait_until(lambda: not self.process.group_alive(), 10, "the killed worker's pool gone")

    def log_tail(self, chars: int = 6000) -> str:
        return self.process.log_tail(chars)


StartWorker = Callable[..., CeleryWorker]


def start_celery_worker(log_dir: Path, *, redis_url: str, storage_root: str | Path,
                        model_server_target: str, env: dict[str, str] | None = None,
                        concurrency: int = 1, name: str = "worker", queues: str = "inference",
                        multiprocess_metrics: bool = True) -> CeleryWorker:
    metrics_port = free_port()
    metrics_dir = Path(log_dir) / f"{name}-{metrics_port}-prometheus"
    full_env = {
        "CXR_ENV": "test",
        "CXR_REDIS_URL": redis_url,
        "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(storage_root),
        "CXR_MODEL_SERVER_GRPC": model_server_target,
        "CXR_WORKER_METRICS_PORT": str(metrics_port),
        "CXR_WORKER_METRICS_ADDRESS": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # Short waits so retry tests finish quickly; still exponential with jitter.
        "CXR_RETRY_BACKOFF_S": "1",
        "CXR_RETRY_BACKOFF_MAX_S": "2",
        "CXR_PREDICT_TIMEOUT_S": "20",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The test model servers mostly serve a folder, without a config and so without labels:
        # ask for their latest version unless a test names a label (deployments ask for stable).
        "CXR_SERVING_VERSION_LABEL": "",
        **(env or {}),
    }
    if not multiprocess_metrics:
        del full_env["PROMETHEUS_MULTIPROC_DIR"]
    argv = python_argv(
        "-m", "celery", "-A", "services.worker.celery_app", "worker", "-Q", queues,
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--hostname", f"{name}-{metrics_port}@%h",
    )
    process = ManagedProcess(f"{name}-{metrics_port}", argv, log_dir, env=full_env)
    worker = CeleryWorker(process, metrics_port, full_env)
    try:
        wait_until(lambda: port_open(metrics_port), START_TIMEOUT_S, "celery worker", process)
    except BaseException:
        process.stop()
        raise
    return worker


@pytest.fixture
def celery_worker(tmp_path_factory) -> Iterator[StartWorker]:
    """Factory: `celery_worker(redis_url=, storage_root=, model_server_target=, env=)`."""
    log_dir = tmp_path_factory.mktemp("celery-worker")
    started: list[CeleryWorker] = []

    def start(**kwargs) -> CeleryWorker:
        worker = start_celery_worker(log_dir, name=f"worker{len(started)}", **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
