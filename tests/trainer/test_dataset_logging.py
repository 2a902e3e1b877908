"""A retraining run's dataset version in MLflow, and the same file set rebuilt from that record."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from services.trainer.data.manifest import MANIFEST_ARTIFACT, rebuild_training_data
from services.trainer.registry.gates import GateSet
from services.trainer.registry.tracking import load_manifest
from services.trainer.retraining import _log_run
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.dataset_layouts import collect
from tests.trainer.test_registry import make_outcome, settings_for


def test_the_run_records_the_dataset_version_and_it_rebuilds_from_there(mlflow_server, tmp_path,
                                                                         world):
    base, storage, work = world
    data = collect(base, storage, work)
    settings = settings_for(mlflow_server, tmp_path)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    gate_set = GateSet(images=np.zeros((2, 8, 8, 1), np.uint8), is_pneumonia=np.array([0, 1]),
                       subtypes=[None, None], fingerprint="gate")
    saved_model = make_tiny_serving_model(tmp_path / "serving", 1, seed=1)

    logged = _log_run(make_outcome(tmp_path), saved_model, settings, gate_set, 8, data.manifest)

    client = MlflowClient()
    run = client.get_run(logged.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["dataset.fingerprint"] == data.manifest.fingerprint
    assert tags["dataset_fingerprint"] == data.manifest.fingerprint
    assert params["dataset.cutoff"] == tags["dataset_cutoff"] == "2026-11-01T12:00:00+00:00"
    assert params["dataset.images"] == "10"
    assert (params["dataset.source.base"], params["dataset.source.confirmed"]) == ("7", "3")
    assert (params["dataset.site.north"], params["dataset.site.south"]) == ("2", "1")
    assert params["dataset.class.viral"] == "3"
    assert params["dataset.excluded.after_cutoff"] == "1"
    assert MANIFEST_ARTIFACT in {a.path for a in client.list_artifacts(logged.run_id, "dataset")}
    # The baseline run carries the dataset version too.
    baseline = client.get_run(logged.baseline_run_id).data.params
    assert baseline["dataset.fingerprint"] == data.manifest.fingerprint

    manifest = load_manifest(f"runs:/{logged.run_id}")
    rebuilt = rebuild_training_data(manifest, base, storage, tmp_path / "rebuild")
    assert rebuilt.manifest.fingerprint == data.manifest.fingerprint
    assert [r.relative_path for r in rebuilt.records] == [r.relative_path for r in data.records]


def test_a_run_without_a_manifest_is_a_clear_error(mlflow_server, tmp_path):
    from services.trainer.data.dataset import DatasetError

    settings = settings_for(mlflow_server, tmp_path)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.mlflow_experiment)
    with mlflow.start_run() as run:
        pass
    with pytest.raises(DatasetError, match=f"run {run.info.run_id} has no dataset/manifest.json"):
        load_manifest(f"runs:/{run.info.run_id}")
