"""With `CXR_SERVING_VERSION_LABEL=stable` the worker follows the label, not the latest version,
and a label moved on the model server (a promotion) reaches new jobs without a worker restart."""

from __future__ import annotations

import pytest
import redis

from services.worker.grpc_serving import ServingClient
from shared.jobs.records import JobStatus
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.support.model_server import labelled_models_config, start_labelled_server
from tests.support.procs import wait_until
from tests.worker.jobs import JobClient, xray_jpeg

pytestmark = pytest.mark.slow


@pytest.fixture
def labelled_server(tmp_path):
    server = start_labelled_server(tmp_path, {"stable": 1})
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

    labelled_server.config_file.write_text(labelled_models_config(labelled_server, {"stable": 2}))
    probe = ServingClient(labelled_server.grpc_target, "cxr-pneumonia", 10, "stable")
    wait_until(lambda: probe.metadata().version == 2, 60, "label stable moved to version 2")
    probe.close()

    second = jobs.submit(xray_jpeg(seed=21))
    result = jobs.wait_status(second, JobStatus.SUCCEEDED, log=worker.log_tail()).result
    assert result.model.version == 2
    assert result.threshold == pytest.approx(0.3)
    jobs.close()
