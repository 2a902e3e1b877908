"""A job erased (by the retention purge) while the worker predicts it leaves nothing behind."""

from __future__ import annotations

import pytest

from services.worker.job import WorkerDeps, process_job
from services.worker.settings import WorkerSettings
from shared.errors import JobNotFoundError
from shared.jobs.records import JobRecord
from shared.retention import erase_job
from tests.worker.jobs import xray_jpeg


def test_a_job_erased_mid_prediction_leaves_no_result_or_map(redis_url, tmp_path,
                                                             shared_model_server):
    settings = WorkerSettings(redis_url=redis_url, storage_root=str(tmp_path / "storage"),
                              model_server_grpc=shared_model_server.grpc_target,
                              serving_version_label="")
    deps = WorkerDeps.from_settings(settings)
    try:
        deps.storage.put("uploads/job-1", xray_jpeg())
        deps.jobs.create(JobRecord(job_id="job-1", client_id="alice", upload_key="uploads/job-1"))
        predict = deps.serving.predict_with_heatmap

        def erased_meanwhile(batch):
            erase_job(deps.storage, deps.jobs, "job-1")  # what the purge does, meanwhile
            return predict(batch)

        deps.serving.predict_with_heatmap = erased_meanwhile  # type: ignore[method-assign]
        with pytest.raises(JobNotFoundError):
            process_job("job-1", deps)
        assert deps.storage.list("") == []
        assert deps.jobs.get("job-1") is None
    finally:
        deps.close()
