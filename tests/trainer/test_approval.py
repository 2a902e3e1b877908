"""A person approves (or rejects) a challenger before it serves; every decision is audited.

Real MLflow server (tests/support/mlflow.py); versions are tiny SavedModels registered like a
retraining registers its own, with the gate verdict a retraining would have tagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.cli.main import main
from services.trainer.registry.approval import (
    APPROVAL_STATE_TAG,
    APPROVED,
    REJECTED,
    ApprovalRefusedError,
    approve,
    reject,
)
from services.trainer.registry.promotion import (
    promote,
    publish_shadow_registered,
    registry_for,
    rollback,
    site_tag,
)
from services.trainer.registry.publish import CONFIG_KEY, parse_models_config
from services.trainer.registry.registry import CHALLENGER, RegistryError
from services.trainer.settings import get_settings
from shared.operating_point import site_operating_point_key
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.test_registry import log_and_register, served, settings_for
from tests.trainer.test_site_points_publish import point


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("saved-models")
    return {seed: make_tiny_serving_model(base, seed, seed=seed) for seed in (1, 2)}


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def audited_settings(mlflow_server, tmp_path):
    return settings_for(mlflow_server, tmp_path, audit_log=str(tmp_path / "audit.jsonl"))


def test_approve_publishes_the_challenger_and_records_who_and_why(audited_settings, saved_models,
                                                                   tmp_path):
    settings = audited_settings
    version = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    registry = registry_for(settings)
    assert registry.alias_version(CHALLENGER) == version and registry.champion() is None
    assert not (Path(settings.model_base_path) / "models.config").exists()

    summary = approve(settings, version, by="dr.house", reason="site figures reviewed")

    assert registry.champion() == version
    assert registry.alias_version(CHALLENGER) is None  # decided: no longer waiting
    assert served(settings) == ([version], version)
    assert (Path(settings.model_base_path) / settings.model_name / str(version)
            / "saved_model.pb").is_file()
    tags = registry.version(version).tags
    assert tags[APPROVAL_STATE_TAG] == APPROVED
    assert (tags["approved_by"], tags["approval_reason"]) == ("dr.house", "site figures reviewed")
    assert tags["approved_at"] == summary["approved_at"]
    assert tags["promoted_by"] == "dr.house"
    (line,) = audit_lines(Path(settings.audit_log))
    assert (line["action"], line["client"], line["status"]) == ("model_approve", "dr.house", 200)
    assert (line["model"], line["version"], line["previous_champion"]) == (
        settings.registered_model_name, version, None)
    assert line["reason"] == "site figures reviewed" and line["job_id"] is None


def test_approving_a_version_whose_gates_failed_is_refused_with_exit_status_2(
        audited_settings, saved_models, tmp_path, monkeypatch, capsys):
    settings = audited_settings
    first = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    approve(settings, first, by="dr.house", reason="first model")
    failed = log_and_register(settings, saved_models[2], tmp_path, gate_passed=False)
    config_before = (Path(settings.model_base_path) / "models.config").read_text()

    with pytest.raises(ApprovalRefusedError, match="gates did not pass"):
        approve(settings, failed, by="dr.house", reason="looks fine to me")
    for name, value in {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                        "REGISTERED_MODEL_NAME": settings.registered_model_name,
                        "MODEL_BASE_PATH": settings.model_base_path,
                        "AUDIT_LOG": settings.audit_log,
                        "PUBLISH_WAIT_FOR_LOAD_S": "0"}.items():
        monkeypatch.setenv(f"CXR_{name}", value)
    get_settings.cache_clear()
    try:
        status = main(["approve", "--version", str(failed), "--by", "dr.cuddy",
                       "--reason", "override"])
    finally:
        get_settings.cache_clear()

    assert status == 2
    err = capsys.readouterr().err
    assert f"version {failed} cannot be approved: its gates did not pass" in err
    registry = registry_for(settings)
    assert registry.champion() == first
    assert "approved_by" not in registry.version(failed).tags
    assert (Path(settings.model_base_path) / "models.config").read_text() == config_before
    assert not (Path(settings.model_base_path) / settings.model_name / str(failed)).exists()
    refused = [line for line in audit_lines(Path(settings.audit_log)) if line["status"] == 409]
    assert [(r["action"], r["client"], r["version"]) for r in refused] == [
        ("model_approve", "dr.house", failed), ("model_approve", "dr.cuddy", failed)]


def test_a_rejected_challenger_loses_its_alias_and_cannot_be_approved(audited_settings,
                                                                      saved_models, tmp_path):
    settings = audited_settings
    version = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)

    reject(settings, version, by="dr.foreman", reason="shadow agreement too low")

    registry = registry_for(settings)
    tags = registry.version(version).tags
    assert tags[APPROVAL_STATE_TAG] == REJECTED and tags["rejected_by"] == "dr.foreman"
    assert registry.alias_version(CHALLENGER) is None and registry.champion() is None
    with pytest.raises(ApprovalRefusedError, match="was rejected by dr.foreman"):
        approve(settings, version, by="dr.house", reason="changed my mind")
    assert registry.champion() is None
    actions = [(line["action"], line["status"]) for line in audit_lines(Path(settings.audit_log))]
    assert actions == [("model_reject", 200), ("model_approve", 409)]


def test_approval_needs_a_name_and_a_reason(audited_settings, saved_models, tmp_path):
    settings = audited_settings
    version = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    with pytest.raises(Exception, match="--reason must not be empty"):
        approve(settings, version, by="dr.house", reason="  ")
    assert registry_for(settings).champion() is None


def test_promotions_and_rollbacks_are_audited(audited_settings, saved_models, tmp_path):
    settings = audited_settings
    first = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    second = log_and_register(settings, saved_models[2], tmp_path, gate_passed=False)
    promote(settings, first, reason="", by="ops")
    promote(settings, second, reason="emergency fix", force=True, by="ops")
    rollback(settings, reason="worse in clinic", by="ops")

    lines = audit_lines(Path(settings.audit_log))
    assert [(x["action"], x["version"], x["previous_champion"]) for x in lines] == [
        ("model_promote", first, None), ("model_promote", second, first),
        ("model_rollback", first, second)]
    assert [x["forced"] for x in lines[:2]] == [False, True]
    assert lines[1]["reason"] == "emergency fix" and lines[2]["reason"] == "worse in clinic"
    assert all(x["client"] == "ops" and x["status"] == 200 for x in lines)


def labels_served(settings) -> dict[str, int]:
    config = parse_models_config((Path(settings.model_base_path) / CONFIG_KEY).read_text())
    return dict(config.model_config_list.config[0].version_labels)


def test_a_challenger_published_as_shadow_serves_beside_the_champion_until_approved(
        audited_settings, saved_models, tmp_path):
    settings = audited_settings
    first = log_and_register(settings, saved_models[1], tmp_path, gate_passed=True)
    with pytest.raises(RegistryError, match="no champion"):
        publish_shadow_registered(settings, first, by="ops")
    approve(settings, first, by="dr.house", reason="first model")
    second = log_and_register(settings, saved_models[2], tmp_path, gate_passed=True)
    registry_for(settings).tag_version(second, {
        site_tag("north"): point("north", 0.3).model_dump_json()})

    publish_shadow_registered(settings, second, by="ops")

    assert served(settings) == ([first, second], first)  # stable stays on the champion
    assert labels_served(settings) == {"stable": first, "shadow": second}
    assert (Path(settings.model_base_path) / site_operating_point_key(
        settings.model_name, second, "north")).is_file()
    assert registry_for(settings).champion() == first
    shadow_line = audit_lines(Path(settings.audit_log))[-1]
    assert (shadow_line["action"], shadow_line["version"], shadow_line["champion"]) == (
        "model_shadow", second, first)

    approve(settings, second, by="dr.house", reason="shadow agreement reviewed")
    assert served(settings) == ([first, second], second)
    assert labels_served(settings) == {"stable": second}  # the shadow label ends with approval
