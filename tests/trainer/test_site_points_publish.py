"""Site operating points travel with their version: publish, promote, rollback, site-calibrate."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from services.trainer.registry.promotion import promote, registry_for, rollback, site_tag
from services.trainer.registry.publish import CONFIG_KEY, publish_version
from services.trainer.settings import get_settings
from shared.operating_point import Calibration, OperatingPoint, site_operating_point_key
from shared.storage import LocalStorage
from tests.support.procs import REPO_ROOT
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.test_registry import log_and_register, served, settings_for

MODEL = "cxr-pneumonia"


def point(site: str, threshold: float) -> OperatingPoint:
    return OperatingPoint(site=site, model_name=MODEL, calibration=Calibration(
        method="platt", slope=0.9, intercept=-0.4), threshold=threshold, target_sensitivity=0.95,
        model_threshold=0.5, fitted_at=datetime(2026, 1, 2, tzinfo=UTC), data_fingerprint="ab" * 32,
        n=100, n_pneumonia=50, n_normal=50)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("site-saved-models")
    return {seed: make_tiny_serving_model(base, seed, seed=seed) for seed in (1, 2)}


class RecordingStorage(LocalStorage):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.written: list[str] = []

    def put(self, key, data, content_type=None) -> None:
        super().put(key, data, content_type)
        self.written.append(key)


def read_point(base: Path, version: int, site: str) -> OperatingPoint:
    return OperatingPoint.from_json((base / site_operating_point_key(MODEL, version, site))
                                    .read_bytes())


def test_publish_writes_each_site_point_into_the_version_before_the_config(tmp_path,
                                                                            saved_models):
    storage = RecordingStorage(tmp_path / "serving")
    publish_version(saved_models[1], 7, storage=storage, model_name=MODEL,
                    site_points={"north": point("north", 0.3), "south": point("south", 0.6)})
    north, south = read_point(storage.root, 7, "north"), read_point(storage.root, 7, "south")
    assert (north.threshold, south.threshold) == (0.3, 0.6)
    assert north.model_version == south.model_version == 7  # the served number, not the export's
    assert storage.written.index(site_operating_point_key(MODEL, 7, "north")) < \
        storage.written.index(CONFIG_KEY)


def test_promotion_and_rollback_publish_the_versions_own_site_points(mlflow_server, tmp_path,
                                                                      saved_models):
    settings = settings_for(mlflow_server, tmp_path)
    v1 = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    v2 = log_and_register(settings, saved_models[2], tmp_path, gate_passed=True)
    registry = registry_for(settings)
    registry.tag_version(v1, {site_tag("north"): point("north", 0.25).model_dump_json()})
    registry.tag_version(v2, {site_tag("north"): point("north", 0.75).model_dump_json()})
    base = Path(settings.model_base_path)

    promote(settings, v1, reason="")
    promote(settings, v2, reason="")
    assert served(settings) == ([v1, v2], v2)
    assert read_point(base, v2, "north").threshold == 0.75

    # The serving folder is lost (a new bucket, a wiped volume): rolling back republishes v1 from
    # the registry, and its own site point with it.
    shutil.rmtree(base)
    rollback(settings, reason="site north reports misses", by="on-call")
    assert served(settings) == ([v1], v1)
    restored = read_point(base, v1, "north")
    assert (restored.threshold, restored.model_version) == (0.25, v1)


@pytest.mark.slow
def test_site_calibrate_records_logs_and_publishes_beside_the_served_version(
        mlflow_server, tmp_path, saved_models, monkeypatch):
    from services.trainer.cli.main import main

    settings = settings_for(mlflow_server, tmp_path)
    version = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    promote(settings, version, reason="")
    for name, value in {"CXR_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                        "CXR_REGISTERED_MODEL_NAME": settings.registered_model_name,
                        "CXR_MODEL_BASE_PATH": settings.model_base_path}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        code = main(["site-calibrate", "--site", "north", "--version", str(version),
                     "--data", str(REPO_ROOT / "data" / "sample"), "--out", str(tmp_path / "r")])
    finally:
        get_settings.cache_clear()
    assert code == 0
    tags = registry_for(settings).version(version).tags
    recorded = OperatingPoint.from_json(tags[site_tag("north")])
    assert (recorded.model_version, recorded.n) == (version, 40)
    published = read_point(Path(settings.model_base_path), version, "north")
    assert published.threshold == recorded.threshold
    assert published.fitted_at == recorded.fitted_at
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(tags["site.north.run_id"])
    assert run.data.tags["registry_version"] == str(version)
    assert client.get_experiment(run.info.experiment_id).name == "site-acceptance"
    assert "site_threshold.specificity" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "report.html", "operating_point.json", "figures"}
    html = (tmp_path / "r" / "report.html").read_text()
    assert "cross-fitted" in html and "data:image/png;base64," in html
