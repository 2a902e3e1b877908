"""The worker refuses to start with metrics it could not serve."""

from __future__ import annotations

import os

import pytest

from tests.support.procs import free_port
from tests.support.worker import start_celery_worker

pytestmark = pytest.mark.slow


def test_prefork_metrics_without_a_multiprocess_folder_stop_the_start(redis_url, tmp_path):
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    try:
        worker = start_celery_worker(
            tmp_path, redis_url=redis_url, storage_root=tmp_path / "storage",
            model_server_target=f"127.0.0.1:{free_port()}", multiprocess_metrics=False)
    except RuntimeError as refused:
        assert "process exited" in str(refused)
        assert "set PROMETHEUS_MULTIPROC_DIR" in str(refused)
    else:
        worker.stop()
        pytest.fail("the worker started and served metrics it cannot collect from its pool")
