"""Shadow mode on a real model server and Celery worker: the `shadow` version scores each answered
job after the answer is stored; its output is kept apart from the job, and its failure is only
counted, never the job's."""

from __future__ import annotations

import json

import pytest
import redis

from services.worker.grpc_serving import ServingClient
from shared.errors import CXRError
from shared.jobs.keys import result_key, shadow_key, storage_key
from shared.jobs.records import JobStatus
from shared.jobs.store import JobStore
from shared.shadow import read_shadow
from shared.storage import LocalStorage
from tests.support.model_server import labelled_models_config, start_labelled_server
from tests.support.procs import wait_until
from tests.worker.jobs import JobClient, metric_value, wait_for_metric, xray_jpeg

pytestmark = pytest.mark.slow


@pytest.fixture
def shadow_server(tmp_path):
    server = start_labelled_server(tmp_path, {"stable": 1, "shadow": 2})
    yield server
    server.stop()


def label_answers(target: str, label: str) -> bool:
    probe = ServingClient(target, "cxr-pneumonia", 10, label)
    try:
        probe.metadata()
        return True
    except CXRError:
        return False
    finally:
        probe.close()


def test_shadow_outputs_are_stored_apart_and_a_shadow_failure_leaves_the_job_alone(
        shadow_server, redis_url, celery_worker, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    jobs = JobClient(JobStore(redis.Redis.from_url(redis_url), storage), storage, redis_url)
    worker = celery_worker(redis_url=redis_url, storage_root=storage.root,
                           model_server_target=shadow_server.grpc_target,
                           queues="inference,shadow",
                           env={"CXR_SERVING_VERSION_LABEL": "stable",
                                "CXR_SHADOW_VERSION_LABEL": "shadow"})

    first = jobs.submit(xray_jpeg(seed=5))
    record = jobs.wait_status(first, JobStatus.SUCCEEDED, log=worker.log_tail())
    assert record.result.model.version == 1
    wait_until(lambda: storage.exists(shadow_key(first)), 60, "shadow output stored")
    output = read_shadow(storage, first)
    assert output is not None and output.job_id == first and output.site == record.site
    assert (output.shadow.model.version, output.champion.model.version) == (2, 1)
    assert output.shadow.threshold == pytest.approx(0.3)  # version 2's own operating point
    assert output.champion.label == record.result.label
    assert output.champion.pneumonia_probability == record.result.pneumonia_probability
    # Nothing of the shadow version in what the client is answered from.
    for key in (storage_key(first), result_key(first)):
        stored = json.loads(storage.get(key))
        assert "shadow" not in json.dumps(stored)
    assert jobs.store.get(first).result == record.result
    agreed = str(output.shadow.label == output.champion.label).lower()
    wait_for_metric(worker.metrics_text, "cxr_worker_shadow_champion_agreement_total", 1,
                    shadow_version="2", champion_version="1", agrees=agreed)
    assert metric_value(worker.metrics_text(), "cxr_worker_shadow_predictions_total",
                        version_label="shadow", outcome="stored") == 1

    # The shadow label is gone (the next champion publish drops it): shadow scoring fails, the
    # jobs do not.
    shadow_server.config_file.write_text(labelled_models_config(shadow_server, {"stable": 1}))
    wait_until(lambda: not label_answers(shadow_server.grpc_target, "shadow"), 60,
               "label shadow removed")
    second = jobs.submit(xray_jpeg(seed=6))
    record = jobs.wait_status(second, JobStatus.SUCCEEDED, log=worker.log_tail())
    assert record.result.model.version == 1 and record.failure is None
    wait_for_metric(worker.metrics_text, "cxr_worker_shadow_predictions_total", 1,
                    version_label="shadow", outcome="failed")
    assert not storage.exists(shadow_key(second))
    assert jobs.store.get(second).status == JobStatus.SUCCEEDED
    jobs.close()
