"""With `CXR_SERVING_VERSION_LABEL=stable` the worker follows the label, not the latest version,
and a label moved on the model server (a promotion) reaches new jobs without a worker restart."""

from __future__ import annotations

import pytest
import redis

from services.worker.serving_client import ServingClient
from shared.jobs import JobStore
from shared.schemas import JobStatus
from shared.storage import LocalStorage
from tests.support.model_server import ModelServer
from tests.support.procs import wait_until
from tests.worker.jobs import JobClient, xray_jpeg

pytestmark = pytest.mark.slow


def models_config(models_dir, stable: int) -> str:
    return (
        f'model_config_list {{ config {{ name: "cxr-pneumonia" '
        f'base_path: "{models_dir}/cxr-pneumonia" model_platform: "tensorflow" '
        f'model_version_policy {{ specific {{ versions: 1 versions: 2 }} }} '
        f'version_labels {{ key: "stable" value: {stable} }} }} }}'
    )


@pytest.fixture
def labelled_server(tmp_path):
    models_dir = tmp_path / "models"
    server = ModelServer(models_dir, tmp_path / "logs", config_file=tmp_path / "models.config",
                         extra_args=["--model_config_file_poll_wait_seconds", "1"])
    server.publish(1, threshold=0.5)
    server.publish(2, threshold=0.3)
    server.config_file.write_text(models_config(models_dir, stable=1))
    server.start(wait_for=1)
    server.wait_for_version(2)
    yield server
    server.stop()


def test_jobs_follow_the_stable_label_as_it_moves(labelled_server, redis_url, celery_worker,
                                                  tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    jobs = JobClient(JobStore(redis.Redis.from_url(redis_url), storage), storage, redis_url)
    worker = celery_worker(redis_url=redis_url, storage_root=storage.root,
                           model_server_target=labelled_server.grpc_target,
                           env={"CXR_SERVING_VERSION_LABEL": "stable"})
    first = jobs.submit(xray_jpeg(seed=21))
    result = jobs.wait_status(first, JobStatus.SUCCEEDED, log=worker.log_tail()).result
    assert result.model.version == 1  # version 2 is newer but not labelled stable
    assert result.threshold == pytest.approx(0.5)

    labelled_server.config_file.write_text(models_config(labelled_server.base_path, stable=2))
    probe = ServingClient(labelled_server.grpc_target, "cxr-pneumonia", 10, "stable")
    wait_until(lambda: probe.metadata().version == 2, 60, "label stable moved to version 2")
    probe.close()

    second = jobs.submit(xray_jpeg(seed=21))
    result = jobs.wait_status(second, JobStatus.SUCCEEDED, log=worker.log_tail()).result
    assert result.model.version == 2
    assert result.threshold == pytest.approx(0.3)
    jobs.close()
