"""End to end retraining on the sample images through a real MLflow server (one short epoch)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from services.trainer.registry.approval import ApprovalRefusedError, approve
from services.trainer.registry.publish import CONFIG_KEY, parse_models_config
from services.trainer.registry.registry import CHALLENGER, ModelRegistry
from services.trainer.registry.tracking import load_manifest
from services.trainer.retraining import retrain
from services.trainer.settings import TrainerSettings
from shared.drift import DriftReference, reference_key
from shared.operating_point import OperatingPoint, site_operating_point_key
from shared.storage import LocalStorage
from tests.shared.xray_files import png_bytes
from tests.trainer.dataset_layouts import confirm, noise

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
SMOKE_TRAINING = {"epochs": 1, "batch_size": 4, "backbone": "custom", "width": 4,
                  "max_images": 24, "verbose": 0, "cache_dir": None}


def served(settings: TrainerSettings) -> tuple[list[int], int]:
    config = parse_models_config((Path(settings.model_base_path) / CONFIG_KEY).read_text())
    model = config.model_config_list.config[0]
    return list(model.model_version_policy.specific.versions), model.version_labels["stable"]


@pytest.mark.slow
def test_retrain_registers_a_challenger_that_serves_once_approved(mlflow_server, tmp_path):
    name = f"cxr-e2e-{uuid.uuid4().hex[:8]}"
    common = {"data_dir": str(SAMPLE), "mlflow_tracking_uri": mlflow_server.tracking_uri,
              "registered_model_name": name, "mlflow_experiment": name,
              "model_base_path": str(tmp_path / "serving"), "gate_fraction": 0.25,
              "train_image_cache_dir": None, "publish_wait_for_load_s": 0,
              # A tiny site acceptance set: a smoke test of the site gate and site points, not
              # a measurement (the sample images are also the training data here).
              "site_acceptance_sets": f"sample:{SAMPLE}",
              "storage_root": str(tmp_path / "jobs")}
    lenient_clinical = {"gate_min_sensitivity": 0, "gate_min_specificity": 0, "gate_min_auroc": 0,
                        "gate_max_auroc_drop": 1, "gate_max_sensitivity_drop": 1}
    lenient = TrainerSettings(**common, **lenient_clinical, site_min_sensitivity=0,
                              site_min_specificity=0)

    # Two films readers confirmed before the run: one new, one that is a film of the site's
    # acceptance set (the sample images), which must not train.
    storage = LocalStorage(tmp_path / "jobs")
    yesterday = datetime.now(UTC) - timedelta(days=1)
    confirm(storage, "sample", "job-new", "PNEUMONIA", yesterday, png_bytes(noise("new-film")))
    accepted = sorted((SAMPLE / "NORMAL").glob("*.jpeg"))[0]
    confirm(storage, "sample", "job-acc", "NORMAL", yesterday, accepted.read_bytes(), kind="jpg")

    first = retrain(lenient, train_overrides=SMOKE_TRAINING)

    # Every gate passed, but no person approved it yet: challenger, nothing published.
    assert (first["version"], first["promoted"], first["previous_champion"]) == (1, False, None)
    assert (first["approval_state"], first["published"]) == ("pending", None)
    registry = ModelRegistry(name)
    assert registry.champion() is None and registry.alias_version(CHALLENGER) == 1
    assert not (tmp_path / "serving").exists()
    tags = registry.version(1).tags
    assert tags["approval.state"] == "pending" and tags["baseline_run_id"] == first[
        "baseline_run_id"]

    approve(lenient, 1, by="dr.grey", reason="gate and site figures reviewed")

    assert registry.champion() == 1
    tags = registry.version(1).tags
    assert (tags["approval.state"], tags["approved_by"]) == ("approved", "dr.grey")
    assert tags["gate.passed"] == "true" and tags["gate.champion_version"] == "none"
    assert 0 < int(tags["gate.n"]) < 40
    assert served(lenient) == ([1], 1)
    card = registry.version(1).description
    assert card.startswith("# Model card") and "gate.passed: true" in card
    assert (tmp_path / "serving" / lenient.model_name / "1" / "saved_model.pb").is_file()
    # The site's operating point is recorded on the version and published with it.
    point = OperatingPoint.from_json(tags["site.sample.operating_point"])
    assert point.site == "sample" and point.n == 40
    published = OperatingPoint.from_json((tmp_path / "serving" / site_operating_point_key(
        lenient.model_name, 1, "sample")).read_bytes())
    assert published.model_version == 1 and published.threshold == point.threshold
    assert "gate.site.sample.specificity" in tags
    # The drift check's reference, computed on the gate films, is published with the version.
    reference = DriftReference.from_json((tmp_path / "serving" / reference_key(
        lenient.model_name, 1)).read_bytes())
    assert reference.films == int(tags["gate.n"])
    assert reference.source["data_fingerprint"] == tags["gate.set_fingerprint"]

    client = MlflowClient(mlflow_server.tracking_uri)
    run = client.get_run(first["run_id"])
    params = run.data.params
    assert params["epochs"] == "1" and params["max_images"] == "24"
    assert params["gate.set_fingerprint"] == tags["gate.set_fingerprint"]
    assert int(params["gate.images"]) == int(tags["gate.n"])
    # Training saw only images outside the gate set.
    assert int(params["data_images"]) + int(params["gate.images"]) <= 40
    assert "val.auroc" in run.data.metrics and "gate.auroc" in run.data.metrics
    assert client.get_metric_history(first["run_id"], "loss")
    baseline = client.get_run(first["baseline_run_id"])
    assert baseline.data.tags["paired_run_id"] == first["run_id"]
    assert {a.path for a in client.list_artifacts(first["run_id"])} >= {"model_card.md",
                                                                       "figures", "dataset"}
    # The dataset version: 40 base films, the new confirmed film, the acceptance film left out.
    assert params["dataset.fingerprint"] == first["dataset"]["fingerprint"]
    assert (params["dataset.source.base"], params["dataset.source.confirmed"]) == ("40", "1")
    assert params["dataset.excluded.acceptance_overlap"] == "1"
    assert run.data.tags["dataset_fingerprint"] == params["dataset.fingerprint"]
    assert load_manifest(f"runs:/{first['run_id']}").fingerprint == params["dataset.fingerprint"]

    site_run = client.get_run(tags["site.sample.run_id"])
    assert site_run.info.experiment_id == client.get_experiment_by_name(
        "site-acceptance").experiment_id
    assert (site_run.data.tags["site"], site_run.data.tags["registry_version"]) == ("sample", "1")

    # The clinical gate passes but one site refuses (its floors cannot be met, cross-fitted):
    # the new version stays challenger, nothing is republished.
    strict = TrainerSettings(**common, **lenient_clinical, site_min_sensitivity=1,
                             site_min_specificity=1)
    second = retrain(strict, train_overrides={**SMOKE_TRAINING, "seed": 1})
    assert (second["version"], second["promoted"], second["previous_champion"]) == (2, False, 1)
    assert second["published"] is None and "refused" in second["gate_reason"]
    assert second["approval_state"] == "gates_failed"
    refusals = second["gate_reason"].removeprefix("refused: ").split("; ")
    assert refusals and all(r.startswith("site sample:") for r in refusals)
    assert registry.champion() == 1 and registry.alias_version(CHALLENGER) == 2
    second_tags = registry.version(2).tags
    assert second_tags["gate.passed"] == "false"
    assert second_tags["gate.champion_version"] == "1"
    assert "gate.champion.auroc" in second_tags  # the champion was scored on the same images
    assert "gate.site.sample.champion.specificity" in second_tags
    assert not (tmp_path / "serving" / lenient.model_name / "2").exists()
    assert served(strict) == ([1], 1)
    # Nobody can approve it: its gates failed.
    with pytest.raises(ApprovalRefusedError, match="gates did not pass"):
        approve(strict, 2, by="dr.grey", reason="looks fine")
    assert registry.champion() == 1 and served(strict) == ([1], 1)

    # With automatic promotion on, a version that passed every gate serves at once (audited).
    audit = tmp_path / "audit.jsonl"
    auto = TrainerSettings(**common, **lenient_clinical, site_min_sensitivity=0,
                           site_min_specificity=0, site_max_sensitivity_drop=1,
                           site_max_specificity_drop=1, retrain_auto_promote=True,
                           audit_log=str(audit))
    third = retrain(auto, train_overrides={**SMOKE_TRAINING, "seed": 2})
    assert (third["version"], third["promoted"], third["approval_state"]) == (
        3, True, "auto_promoted")
    assert registry.champion() == 3 and served(auto) == ([1, 3], 3)
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    assert (line["action"], line["client"], line["version"], line["previous_champion"]) == (
        "model_promote", "retrain pipeline", 3, 1)
    assert line["automatic"] is True
