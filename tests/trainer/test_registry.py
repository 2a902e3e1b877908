"""MLflow logging, registration, aliases, promotion, rollback, bootstrap on a real MLflow server."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient
from PIL import Image

from services.trainer.modeling.recipe import TrainingOutcome
from services.trainer.registry.bootstrap import bootstrap
from services.trainer.registry.promotion import promote, publish_registered, registry_for, rollback
from services.trainer.registry.publish import CONFIG_KEY, parse_models_config
from services.trainer.registry.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistryError
from services.trainer.registry.tracking import log_training_run
from services.trainer.settings import TrainerSettings
from tests.support.tiny_model import make_tiny_serving_model

VALIDATION = {"n": 40, "auroc": 0.91, "auroc_ci": [0.85, 0.96], "sensitivity": 0.95,
              "specificity": 0.7, "confusion": {"tn": 14, "fp": 6, "fn": 1, "tp": 19},
              "subtype_auroc": None, "threshold": 0.42}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings_for(server, tmp_path: Path, **overrides) -> TrainerSettings:
    values = {"mlflow_tracking_uri": server.tracking_uri,
              "registered_model_name": unique("cxr-test"), "mlflow_experiment": unique("exp"),
              "model_base_path": str(tmp_path / "serving"),
              "bundled_models_dir": str(tmp_path / "bundled"),
              "publish_wait_for_load_s": 0, **overrides}
    return TrainerSettings(**values)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("saved-models")
    return {seed: make_tiny_serving_model(base, seed, seed=seed) for seed in (1, 2, 3)}


def make_outcome(tmp_path: Path) -> TrainingOutcome:
    figure = tmp_path / "roc.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(figure)
    return TrainingOutcome(
        models=[], threshold=0.42, temperature=1.3,
        params={"epochs": 3, "batch_size": 8, "data_fingerprint": "abc123", "data_images": 40,
                "train_images": [30]},
        history=[{"epoch": e, "loss": 1.0 / (e + 1), "val_auc": 0.6 + 0.1 * e} for e in range(3)],
        validation=VALIDATION, figures={"roc": figure},
        baseline={**VALIDATION, "auroc": 0.83})


def log_and_register(settings: TrainerSettings, saved_model: Path, tmp_path: Path,
                     gate_passed: bool | None = None) -> int:
    registry = registry_for(settings)
    logged = log_training_run(make_outcome(tmp_path), saved_model,
                              experiment=settings.mlflow_experiment, model_card="# card")
    version = registry.register(logged.model_uri, logged.run_id)
    if gate_passed is not None:
        registry.tag_version(version, {"gate.passed": str(gate_passed).lower(),
                                       "gate.reason": "test verdict"})
    return version


def served(settings: TrainerSettings) -> tuple[list[int], int]:
    config = parse_models_config((Path(settings.model_base_path) / CONFIG_KEY).read_text())
    model = config.model_config_list.config[0]
    return list(model.model_version_policy.specific.versions), model.version_labels["stable"]


def test_a_run_logs_params_history_metrics_baseline_card_and_model(mlflow_server, tmp_path,
                                                                   saved_models):
    settings = settings_for(mlflow_server, tmp_path)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    logged = log_training_run(make_outcome(tmp_path), saved_models[1],
                              experiment=settings.mlflow_experiment, model_card="# Model card")
    client = MlflowClient()
    run = client.get_run(logged.run_id)
    assert run.data.params["data_fingerprint"] == "abc123"
    assert run.data.params["epochs"] == "3"
    assert run.data.params["git_commit"] not in ("", None)
    assert run.data.metrics["val.auroc"] == pytest.approx(0.91)
    assert run.data.metrics["val.confusion.tp"] == 19
    assert run.data.metrics["val.auroc_ci.0"] == pytest.approx(0.85)
    assert "val.subtype_auroc" not in run.data.metrics  # undefined: not logged as a number
    history = client.get_metric_history(logged.run_id, "val_auc")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.6), (1, 0.7), (2, 0.8)]
    assert run.data.tags["threshold"] == "0.420000"
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert {"model_card.md", "figures"} <= artifacts
    baseline = client.get_run(logged.baseline_run_id)
    assert baseline.info.experiment_id == run.info.experiment_id
    assert baseline.data.tags["paired_run_id"] == logged.run_id
    assert baseline.data.metrics["val.auroc"] == pytest.approx(0.83)


def test_new_versions_become_challenger_and_carry_the_saved_model(mlflow_server, tmp_path,
                                                                  saved_models):
    settings = settings_for(mlflow_server, tmp_path)
    first = log_and_register(settings, saved_models[1], tmp_path)
    second = log_and_register(settings, saved_models[2], tmp_path)
    registry = ModelRegistry(settings.registered_model_name)
    assert (first, second) == (1, 2)
    assert registry.alias_version(CHALLENGER) == 2
    assert registry.champion() is None
    assert registry.version(2).tags["run_id"]
    folder = registry.download_saved_model(2, tmp_path / "download")
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    out = serve(image=tf.zeros((1, 224, 224, 1), tf.uint8))
    assert set(out) == {"pneumonia_probability", "class_probabilities", "threshold"}
    with pytest.raises(RegistryError, match="no version 9"):
        registry.version(9)


def test_promote_force_and_rollback_move_aliases_tags_and_serving(mlflow_server, tmp_path,
                                                                   saved_models):
    settings = settings_for(mlflow_server, tmp_path)
    v1 = log_and_register(settings, saved_models[1], tmp_path, gate_passed=False)
    v2 = log_and_register(settings, saved_models[2], tmp_path, gate_passed=True)
    registry = ModelRegistry(settings.registered_model_name)

    with pytest.raises(RegistryError, match="did not pass the promotion gate"):
        promote(settings, v1, reason="")
    with pytest.raises(RegistryError, match="needs a --reason"):
        promote(settings, v1, reason=" ", force=True)
    assert registry.champion() is None

    promote(settings, v1, reason="radiology asked for it", force=True, by="dr-ops")
    tags = registry.version(v1).tags
    assert (tags["promotion_forced"], tags["promoted_by"]) == ("true", "dr-ops")
    assert tags["promotion_reason"] == "radiology asked for it"
    assert registry.champion() == v1
    assert served(settings) == ([v1], v1)

    promote(settings, v2, reason="")
    assert registry.champion() == v2
    assert registry.version(v2).tags["previous_champion"] == str(v1)
    assert registry.champion_history() == [v1, v2]
    assert served(settings) == ([v1, v2], v2)  # the previous champion stays loaded

    rollback(settings, reason="false negatives reported", by="on-call")
    assert registry.champion() == v1
    rolled = registry.version(v2).tags
    assert (rolled["rolled_back_to"], rolled["rolled_back_by"]) == (str(v1), "on-call")
    assert registry.version(v1).tags["restored_from"] == str(v2)
    assert served(settings) == ([v1], v1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(settings, reason="again")


def cli_env(settings: TrainerSettings) -> dict[str, str]:
    return {"CXR_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "CXR_REGISTERED_MODEL_NAME": settings.registered_model_name,
            "CXR_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
            "CXR_MODEL_BASE_PATH": settings.model_base_path, "CXR_PUBLISH_WAIT_FOR_LOAD_S": "0"}


@pytest.mark.slow
def test_cli_refuses_an_ungated_promotion_and_publishes_the_champion(mlflow_server, tmp_path,
                                                                     saved_models, run_main):
    settings = settings_for(mlflow_server, tmp_path)
    env = cli_env(settings)
    version = log_and_register(settings, saved_models[3], tmp_path, gate_passed=False)
    code, err = run_main("promote", "--version", str(version), env=env)
    assert code == 2, err
    assert "did not pass the promotion gate" in err
    code, err = run_main("promote", "--version", str(version), "--force",
                         "--reason", "manual check passed", env=env)
    assert code == 0, err
    assert served(settings) == ([version], version)
    (Path(settings.model_base_path) / CONFIG_KEY).unlink()
    code, err = run_main("publish", env=env)
    assert code == 0, err
    assert served(settings) == ([version], version)


def test_bootstrap_registers_the_bundled_model_once(mlflow_server, tmp_path):
    settings = settings_for(mlflow_server, tmp_path)
    with pytest.raises(Exception, match="no bundled SavedModel"):
        bootstrap(settings)
    make_tiny_serving_model(Path(settings.bundled_models_dir), 5, model_name=settings.model_name)
    first = bootstrap(settings)
    assert first["action"] == "registered" and first["bundled_version"] == 5
    registry = ModelRegistry(settings.registered_model_name)
    assert registry.champion() == first["version"]
    assert registry.version(first["version"]).tags["gate.passed"] == "skipped"
    assert served(settings) == ([first["version"]], first["version"])
    again = bootstrap(settings)
    assert again == {"action": "republished", "version": first["version"],
                     "model_base_path": first["model_base_path"]}


@pytest.mark.slow
def test_registry_on_a_postgresql_backend(mlflow_server_postgres, tmp_path, saved_models):
    settings = settings_for(mlflow_server_postgres, tmp_path)
    v1 = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    v2 = log_and_register(settings, saved_models[2], tmp_path, gate_passed=True)
    promote(settings, v1, reason="")
    promote(settings, v2, reason="")
    registry = ModelRegistry(settings.registered_model_name)
    assert (registry.champion(), registry.alias_version(CHALLENGER)) == (v2, v2)
    rollback(settings, reason="check")
    assert registry.alias_version(CHAMPION) == v1
    assert mlflow_server_postgres.backend_uri.startswith("postgresql")


@pytest.mark.slow
def test_artifacts_on_s3_are_registered_and_published(mlflow_server_s3, s3_server, tmp_path,
                                                      saved_models):
    settings = settings_for(mlflow_server_s3, tmp_path)
    version = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    listed = s3_server.client().list_objects_v2(Bucket=mlflow_server_s3.bucket)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert any(k.endswith("/saved_model.pb") for k in keys), keys
    assert any(k.endswith("model_card.md") for k in keys)
    registry = registry_for(settings)
    registry.promote(version, reason="s3 check")
    publish_registered(registry, settings)
    assert (Path(settings.model_base_path) / settings.model_name / str(version)
            / "saved_model.pb").is_file()
